"""A procedural world of 64x64 "animals" in 5 breeds, built from the paper's 9 dog parts.

Every image is a deterministic function of a latent vector theta [THETA_DIM] with entries in
(-1, 1). Entry i is mapped linearly onto a physical range `PARAMS[i] = (name, lo, hi)` (pixels,
degrees, HSV colour components, mixing weights...). `sample_theta` draws theta from a
class-conditional distribution: theta = tanh(m_c + s * eps), eps ~ N(0, 1), where m_c holds each
breed's typical value and s the within-breed spread; spreads are wide enough that the breeds
overlap in every single parameter, and only their joint appearance tells them apart.

Rendering is pure JAX: each part is a signed distance field (ellipses and capsules) in the
animal's own frame; parts are painted back to front in `PAINT_ORDER`. The integer mask is the
label of the last part whose signed distance is negative at the pixel centre, so it is exact for
the painter's order; the image uses the same test with a one-pixel anti-aliased edge
(alpha = clip(0.5 - d, 0, 1)), so mask and image agree everywhere except on part boundaries;
`render(theta, antialias=False)` paints hard edges, where they agree on every pixel.
All parts have flat colours except the body (stripes or spots in the secondary colour, plus
vertical shading) and the background (a colour times a linear gradient). The world is kept
free of fine detail the 64x64 generator would have to reproduce exactly: patterns are coarse
(periods of 10-21 pixels), the eye and nose are 4-6 pixels across, legs, tails and tongues at
least 2 pixels wide, and the background has no texture.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from linkjax import quantify

SIZE = 64
PART_NAMES = quantify.DOG_LABELS
# Painted back to front: the mask of a pixel is the last part in this order that covers it.
PAINT_ORDER = ("leg", "tail", "body", "head", "ear", "snout", "nose", "eye", "tongue")
CLASS_NAMES = ("bramble terrier", "dune lurcher", "dotted bruiser", "slate mastiff",
               "ember foxhound")
NUM_CLASSES = len(CLASS_NAMES)

# (name, lo, hi): theta entry t in (-1, 1) means lo + (t + 1) / 2 * (hi - lo).
# Lengths in pixels, angles in degrees, colours as HSV in [0, 1] (hue may wrap).
PARAMS = (
    ("pose_x", 26.0, 31.0),        # body centre, x (image columns)
    ("pose_y", 29.0, 35.0),        # body centre, y (image rows, down)
    ("pose_angle", -12.0, 12.0),   # whole-animal tilt, degrees (positive: nose up)
    ("body_len", 8.0, 15.0),       # body semi-axis along the spine
    ("body_h", 4.0, 8.5),          # body semi-axis across
    ("leg_len", 4.0, 12.0),        # how far the legs reach below the body's lower edge
    ("leg_w", 1.4, 2.8),           # leg radius
    ("leg_spread", 0.45, 0.8),     # leg positions as a fraction of body_len from the centre
    ("leg_splay", -10.0, 10.0),    # front legs lean forward, hind legs back, degrees
    ("tail_len", 4.0, 13.0),
    ("tail_w", 1.4, 3.0),          # tail radius
    ("tail_angle", -30.0, 60.0),   # 0: straight back, positive: raised
    ("tail_curl", -30.0, 30.0),    # bend of the tail's second half, degrees
    ("head_r", 4.5, 8.0),          # head semi-axis, x
    ("head_aspect", 0.8, 1.2),     # head semi-axis y / x
    ("head_lift", 0.0, 1.0),       # how high the head sits above the shoulder (head radii)
    ("ear_len", 2.5, 8.0),
    ("ear_w", 1.8, 3.6),           # ear semi-axis across
    ("ear_angle", -25.0, 140.0),   # 0: upright, 90: pointing back, >90: hanging
    ("snout_len", 2.0, 6.0),       # snout semi-axis along
    ("snout_h", 2.0, 3.6),         # snout semi-axis across
    ("snout_drop", -0.3, 0.5),     # vertical offset of the snout, head radii (down)
    ("nose_r", 2.0, 3.0),
    ("eye_r", 2.0, 3.0),
    ("tongue_len", 2.0, 4.5),
    ("tongue_w", 1.4, 2.2),        # tongue radius
    ("body_hue", -0.05, 0.65),
    ("body_sat", 0.05, 0.9),
    ("body_val", 0.25, 0.95),
    ("sec_hue", -0.05, 0.65),      # secondary colour: pattern, and legs/ears/tail by mixing
    ("sec_sat", 0.05, 0.9),
    ("sec_val", 0.05, 0.95),
    ("leg_mix", 0.0, 1.0),         # 0: body colour, 1: secondary colour
    ("tail_mix", 0.0, 1.0),
    ("ear_mix", 0.0, 1.0),
    ("head_mix", 0.0, 1.0),
    ("snout_light", 0.0, 0.9),     # snout = head colour mixed towards cream by this much
    ("nose_val", 0.02, 0.35),
    ("eye_hue", 0.05, 0.6),
    ("eye_val", 0.1, 0.55),
    ("tongue_hue", -0.07, 0.02),
    ("tongue_val", 0.6, 0.95),
    ("pattern_amp", 0.0, 1.0),     # how strongly stripes/spots show the secondary colour
    ("pattern_freq", 0.3, 0.65),   # radians per pixel
    ("pattern_spots", 0.0, 1.0),   # 0: stripes, 1: spots
    ("pattern_phase", 0.0, 2 * math.pi),
    ("pattern_angle", -30.0, 30.0),
    ("shade_amp", 0.0, 0.4),       # body darker towards the belly by up to this fraction
    ("bg_hue", 0.0, 1.0),
    ("bg_sat", 0.05, 0.45),
    ("bg_val", 0.5, 0.95),
    ("bg_grad_amp", 0.0, 0.25),
    ("bg_grad_angle", 0.0, 2 * math.pi),
)
PARAM_NAMES = tuple(p[0] for p in PARAMS)
THETA_DIM = len(PARAMS)
_IDX = {name: i for i, name in enumerate(PARAM_NAMES)}
_LO = np.array([p[1] for p in PARAMS], np.float32)
_HI = np.array([p[2] for p in PARAMS], np.float32)

# Each breed's typical physical values; parameters not listed sit mid-range. The within-breed
# spread (`_SPREAD`, in tanh-logit units) is wide, so every single parameter overlaps across
# breeds.
_CLASS_MEANS = (
    # bramble terrier: small, short-legged, striped brown, raised tail, upright ears.
    dict(body_len=10.0, body_h=5.5, leg_len=5.5, tail_len=9.0, tail_angle=50.0, ear_len=6.0,
         ear_angle=-5.0, head_r=5.5, snout_len=3.5, body_hue=0.06, body_sat=0.6, body_val=0.5,
         sec_hue=0.05, sec_sat=0.7, sec_val=0.25, pattern_amp=0.75, pattern_spots=0.15,
         leg_mix=0.6, ear_mix=0.6, head_mix=0.2, snout_light=0.2, tongue_len=2.5),
    # dune lurcher: long, lean, long-legged, plain sandy, long snout, ears folded back, tail down.
    dict(body_len=13.5, body_h=4.6, leg_len=10.5, leg_w=1.6, tail_len=11.0, tail_w=1.6,
         tail_angle=-20.0, head_r=5.0, head_aspect=0.85, snout_len=5.3, snout_h=2.0,
         ear_len=4.5, ear_angle=95.0, body_hue=0.11, body_sat=0.35, body_val=0.8,
         sec_hue=0.08, sec_sat=0.45, sec_val=0.6, pattern_amp=0.1, leg_mix=0.3, ear_mix=0.5,
         snout_light=0.3, tongue_len=3.0),
    # dotted bruiser: stocky, white with big dark spots, dark legs and tail, big round head, short
    # snout, floppy ears.
    dict(body_len=11.0, body_h=7.5, leg_len=5.5, leg_w=2.4, tail_len=5.5, tail_w=2.0,
         head_r=7.0, head_aspect=1.05, snout_len=2.8, snout_h=2.8, ear_angle=125.0,
         ear_len=5.5, ear_w=3.0, body_hue=0.1, body_sat=0.12, body_val=0.88, sec_hue=0.05,
         sec_sat=0.3, sec_val=0.15, pattern_amp=0.9, pattern_spots=0.85, pattern_freq=0.33,
         leg_mix=0.8, tail_mix=0.8, ear_mix=0.85, head_mix=0.15, snout_light=0.5, tongue_len=3.5),
    # slate mastiff: big, grey-blue, large head and hanging ears, big tongue, strong shading.
    dict(body_len=13.0, body_h=7.5, leg_len=7.5, leg_w=2.5, tail_len=7.0, tail_angle=5.0,
         head_r=7.2, head_aspect=1.1, head_lift=0.3, ear_len=6.5, ear_w=3.0, ear_angle=115.0,
         snout_len=4.0, snout_h=3.0, snout_drop=0.3, tongue_len=3.5, tongue_w=1.8,
         body_hue=0.58, body_sat=0.2, body_val=0.5, sec_hue=0.6, sec_sat=0.2, sec_val=0.3,
         pattern_amp=0.25, pattern_spots=0.5, shade_amp=0.33, leg_mix=0.4, ear_mix=0.7,
         head_mix=0.3, snout_light=0.15),
    # ember foxhound: orange, bushy raised tail, tall pointed ears, cream snout.
    dict(body_len=11.5, body_h=5.8, leg_len=8.0, tail_len=11.5, tail_w=2.6, tail_angle=25.0,
         tail_curl=20.0, head_r=5.8, ear_len=7.0, ear_w=2.6, ear_angle=10.0, snout_len=4.2,
         snout_light=0.75, body_hue=0.05, body_sat=0.85, body_val=0.85, sec_hue=0.02,
         sec_sat=0.6, sec_val=0.35, pattern_amp=0.35, pattern_spots=0.3, leg_mix=0.8,
         tail_mix=0.3, ear_mix=0.7, head_mix=0.05),
)
# Within-class spread (tanh-logit units) of parameters that carry breed identity, and of the
# nuisance parameters (pose, pattern phase, background), which are near-uniform for all breeds.
_CLASS_SPREAD = 0.5
_NUISANCE_SPREAD = 1.0
_NUISANCE = ("pose_x", "pose_y", "pose_angle", "leg_spread", "leg_splay", "pattern_phase",
             "pattern_angle", "bg_hue", "bg_sat", "bg_val", "bg_grad_amp", "bg_grad_angle",
             "eye_hue", "eye_val", "nose_val", "nose_r", "eye_r", "tongue_hue", "tongue_val")
# Hue ranges are wide (grey-blue to red), so a breed's hue needs a tighter logit spread to stay
# within its family of colours.
_SPREAD_OVERRIDES = {"body_hue": 0.12, "sec_hue": 0.12}


def _class_tables() -> tuple[np.ndarray, np.ndarray]:
  """Per-class logit means [C, THETA_DIM] and spreads [THETA_DIM]."""
  means = np.zeros((NUM_CLASSES, THETA_DIM), np.float32)
  for c, table in enumerate(_CLASS_MEANS):
    for name, value in table.items():
      i = _IDX[name]
      unit = 2.0 * (value - _LO[i]) / (_HI[i] - _LO[i]) - 1.0
      means[c, i] = np.arctanh(np.clip(unit, -0.95, 0.95))
  spread = np.full((THETA_DIM,), _CLASS_SPREAD, np.float32)
  for name in _NUISANCE:
    spread[_IDX[name]] = _NUISANCE_SPREAD
  for name, value in _SPREAD_OVERRIDES.items():
    spread[_IDX[name]] = value
  return means, spread


_CLASS_LOGIT_MEANS, _SPREADS = _class_tables()


def theta_from_noise(eps: jax.Array, class_idx: jax.Array) -> jax.Array:
  """Maps standard-normal noise to the class-conditional theta (a deterministic bijection).

  Args:
    eps: [B, THETA_DIM] float32 noise.
    class_idx: [B] int32 breed indices in [0, NUM_CLASSES).
  Returns:
    theta: [B, THETA_DIM] float32 in (-1, 1).
  """
  means = jnp.asarray(_CLASS_LOGIT_MEANS)[class_idx]
  return jnp.tanh(means + jnp.asarray(_SPREADS) * eps.astype(jnp.float32))


def sample_theta(key: jax.Array, class_idx: jax.Array) -> jax.Array:
  """Draws theta from the class-conditional distribution.

  Args:
    key: PRNG key.
    class_idx: [B] int32 breed indices.
  Returns:
    theta: [B, THETA_DIM] float32 in (-1, 1).
  """
  class_idx = jnp.asarray(class_idx, jnp.int32)
  eps = jax.random.normal(key, (class_idx.shape[0], THETA_DIM), jnp.float32)
  return theta_from_noise(eps, class_idx)


def physical(theta: jax.Array) -> dict[str, jax.Array]:
  """Maps theta [..., THETA_DIM] in [-1, 1] to named physical values (each [...])."""
  t = jnp.clip(theta.astype(jnp.float32), -1.0, 1.0)
  v = jnp.asarray(_LO) + (t + 1.0) * 0.5 * jnp.asarray(_HI - _LO)
  return {name: v[..., i] for i, name in enumerate(PARAM_NAMES)}


def _hsv(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
  """HSV (hue wraps) -> RGB [..., 3]; smooth-free but exact, like colorsys.hsv_to_rgb."""
  h = jnp.mod(h, 1.0)
  k = jnp.mod(jnp.array([5.0, 3.0, 1.0], jnp.float32) + h[..., None] * 6.0, 6.0)
  f = jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return v[..., None] * (1.0 - s[..., None] * f)


def _mix(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  return a + (b - a) * t


def part_colours(theta: jax.Array) -> jax.Array:
  """The flat RGB colour of every part (body: before pattern and shading).

  Args:
    theta: [..., THETA_DIM].
  Returns:
    [..., 9, 3] float32 in [0, 1], parts in label order (leg, body, ..., head); legs are the
    near legs (far legs are drawn 20 % darker).
  """
  p = physical(theta)
  body = _hsv(p["body_hue"], p["body_sat"], p["body_val"])
  sec = _hsv(p["sec_hue"], p["sec_sat"], p["sec_val"])
  head = _mix(body, sec, p["head_mix"][..., None])
  cream = jnp.array([0.95, 0.9, 0.8], jnp.float32)
  cols = {
      "leg": _mix(body, sec, p["leg_mix"][..., None]),
      "body": body,
      "tail": _mix(body, sec, p["tail_mix"][..., None]),
      "tongue": _hsv(p["tongue_hue"], jnp.full_like(p["tongue_val"], 0.55), p["tongue_val"]),
      "eye": _hsv(p["eye_hue"], jnp.full_like(p["eye_val"], 0.6), p["eye_val"]),
      "nose": _hsv(jnp.full_like(p["nose_val"], 0.03), jnp.full_like(p["nose_val"], 0.4),
                   p["nose_val"]),
      "snout": _mix(head, cream, p["snout_light"][..., None]),
      "ear": _mix(body, sec, p["ear_mix"][..., None]),
      "head": head,
  }
  return jnp.stack([cols[n] for n in PART_NAMES[1:]], axis=-2)


def _sd_ellipse(x, y, cx, cy, a, b, angle=None):
  """Approximate signed distance (pixels) to an ellipse; exact on the boundary's sign.

  f / |grad f| with f = (u/a)^2 + (v/b)^2 - 1: a first-order distance, accurate within a pixel
  of the edge, which is all the anti-aliasing uses. The sign is exact.
  """
  u, v = x - cx, y - cy
  if angle is not None:
    c, s = jnp.cos(angle), jnp.sin(angle)
    u, v = c * u + s * v, -s * u + c * v
  f = (u / a) ** 2 + (v / b) ** 2 - 1.0
  g = 2.0 * jnp.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
  return f / jnp.maximum(g, 1e-6)


def _sd_capsule(x, y, x0, y0, x1, y1, r):
  """Exact signed distance to the segment (x0, y0)-(x1, y1) thickened by radius r."""
  dx, dy = x1 - x0, y1 - y0
  t = jnp.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
  return jnp.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2) - r


def _coverage(sd: jax.Array, antialias: bool) -> jax.Array:
  """Fraction of a pixel covered by a shape with signed distance sd at its centre."""
  if antialias:
    return jnp.clip(0.5 - sd, 0.0, 1.0)
  return (sd < 0.0).astype(jnp.float32)


def _render_one(theta: jax.Array, antialias: bool = True) -> tuple[jax.Array, jax.Array]:
  """Renders one animal. theta: [THETA_DIM] -> (image [64, 64, 3], mask [64, 64] int32)."""
  p = physical(theta)
  cols = part_colours(theta)  # [9, 3]
  col = {name: cols[i] for i, name in enumerate(PART_NAMES[1:])}
  deg = jnp.float32(math.pi / 180.0)

  # Pixel centres, then into the animal frame: origin at the body centre, x towards the head,
  # y down; the whole animal is tilted by pose_angle (positive lifts the nose).
  yy, xx = jnp.meshgrid(jnp.arange(SIZE, dtype=jnp.float32) + 0.5,
                        jnp.arange(SIZE, dtype=jnp.float32) + 0.5, indexing="ij")
  ang = p["pose_angle"] * deg
  c, s = jnp.cos(ang), jnp.sin(ang)
  gx, gy = xx - p["pose_x"], yy - p["pose_y"]
  x = c * gx - s * gy
  y = s * gx + c * gy

  # Background: base colour times a linear gradient.
  bg = _hsv(p["bg_hue"], p["bg_sat"], p["bg_val"])
  ga = p["bg_grad_angle"]
  ramp = ((xx - 32.0) * jnp.cos(ga) + (yy - 32.0) * jnp.sin(ga)) / 32.0
  img = bg[None, None, :] * (1.0 + p["bg_grad_amp"] * ramp)[..., None]
  img = jnp.clip(img, 0.0, 1.0)
  mask = jnp.zeros((SIZE, SIZE), jnp.int32)

  def paint(img, mask, sd, colour, label):
    alpha = _coverage(sd, antialias)[..., None]
    colour = jnp.broadcast_to(colour, img.shape)
    img = img + alpha * (colour - img)
    mask = jnp.where(sd < 0.0, jnp.int32(PART_NAMES.index(label)), mask)
    return img, mask

  bl, bh = p["body_len"], p["body_h"]
  # Legs: hind and front pairs; the far leg of each pair is offset and 20 % darker. All four
  # are painted as one part (union of capsules) so that anti-aliasing never lets the
  # background show through between two legs; the colour switches from far to near across the
  # near legs' own anti-aliased edge.
  reach = 0.75 * bh + p["leg_len"]
  splay = p["leg_splay"] * deg
  sd_leg = {}
  for side, off in (("far", 2.2), ("near", 0.0)):
    sd = jnp.inf
    for sign in (-1.0, 1.0):  # hind, front
      x0 = sign * p["leg_spread"] * bl + off
      y0 = 0.2 * bh
      lean = sign * splay
      x1 = x0 + reach * jnp.sin(lean)
      y1 = y0 + reach * jnp.cos(lean)
      sd = jnp.minimum(sd, _sd_capsule(x, y, x0, y0, x1, y1, p["leg_w"]))
    sd_leg[side] = sd
  near = _coverage(sd_leg["near"], antialias)[..., None]
  leg_rgb = col["leg"] * (0.8 + 0.2 * near)
  img, mask = paint(img, mask, jnp.minimum(sd_leg["far"], sd_leg["near"]), leg_rgb, "leg")

  # Tail: two capsules from the rump, the second bent by tail_curl.
  ta = p["tail_angle"] * deg
  tx0, ty0 = -0.85 * bl, -0.3 * bh
  half = 0.5 * p["tail_len"] + 0.5 * bh  # the first part hides behind the body
  tx1, ty1 = tx0 - half * jnp.cos(ta), ty0 - half * jnp.sin(ta)
  ta2 = ta + p["tail_curl"] * deg
  tx2, ty2 = tx1 - 0.5 * p["tail_len"] * jnp.cos(ta2), ty1 - 0.5 * p["tail_len"] * jnp.sin(ta2)
  sd = jnp.minimum(_sd_capsule(x, y, tx0, ty0, tx1, ty1, p["tail_w"]),
                   _sd_capsule(x, y, tx1, ty1, tx2, ty2, 0.8 * p["tail_w"]))
  img, mask = paint(img, mask, sd, col["tail"], "tail")

  # Body: stripes or spots in the secondary colour, darker towards the belly.
  pa = p["pattern_angle"] * deg
  fr = p["pattern_freq"]
  pu = jnp.cos(pa) * x + jnp.sin(pa) * y
  pv = -jnp.sin(pa) * x + jnp.cos(pa) * y
  stripes = jnp.clip(2.0 * jnp.sin(fr * pu + p["pattern_phase"]), 0.0, 1.0)
  spots = jnp.clip(3.0 * (jnp.sin(fr * pu + p["pattern_phase"]) * jnp.sin(fr * pv) - 0.35),
                   0.0, 1.0)
  pattern = p["pattern_amp"] * _mix(stripes, spots, p["pattern_spots"])
  sec = _hsv(p["sec_hue"], p["sec_sat"], p["sec_val"])
  body_rgb = _mix(col["body"][None, None, :], sec[None, None, :], pattern[..., None])
  shading = 1.0 - p["shade_amp"] * jnp.clip((y / bh + 1.0) * 0.5, 0.0, 1.0)
  body_rgb = body_rgb * shading[..., None]
  sd = _sd_ellipse(x, y, 0.0, 0.0, bl, bh)
  img, mask = paint(img, mask, sd, body_rgb, "body")

  # Head above the shoulder; snout in front; ear on top at the back; eye; nose; tongue.
  hr = p["head_r"]
  hry = hr * p["head_aspect"]
  hx = 0.78 * bl + 0.25 * hr
  hy = -0.45 * bh - p["head_lift"] * hr
  img, mask = paint(img, mask, _sd_ellipse(x, y, hx, hy, hr, hry), col["head"], "head")

  ea = p["ear_angle"] * deg
  ex0, ey0 = hx - 0.35 * hr, hy - 0.7 * hry
  edx, edy = -jnp.sin(ea), -jnp.cos(ea)
  ecx, ecy = ex0 + 0.5 * p["ear_len"] * edx, ey0 + 0.5 * p["ear_len"] * edy
  sd = _sd_ellipse(x, y, ecx, ecy, 0.5 * p["ear_len"] + 0.5, p["ear_w"],
                   angle=jnp.arctan2(edy, edx))
  img, mask = paint(img, mask, sd, col["ear"], "ear")

  sl, sh = p["snout_len"], p["snout_h"]
  sx = hx + 0.8 * hr + 0.5 * sl
  sy = hy + p["snout_drop"] * hr + 0.25 * hry
  img, mask = paint(img, mask, _sd_ellipse(x, y, sx, sy, sl, sh), col["snout"], "snout")

  nx, ny = sx + sl - 0.3 * p["nose_r"], sy - 0.45 * sh
  img, mask = paint(img, mask, _sd_ellipse(x, y, nx, ny, p["nose_r"], 0.8 * p["nose_r"]),
                    col["nose"], "nose")

  ex, ey = hx + 0.3 * hr, hy - 0.3 * hry
  img, mask = paint(img, mask, _sd_ellipse(x, y, ex, ey, p["eye_r"], p["eye_r"]),
                    col["eye"], "eye")

  tx, ty = sx + 0.1 * sl, sy + 0.75 * sh
  sd = _sd_capsule(x, y, tx, ty, tx + 0.15 * p["tongue_len"], ty + p["tongue_len"],
                   p["tongue_w"])
  img, mask = paint(img, mask, sd, col["tongue"], "tongue")
  return jnp.clip(img, 0.0, 1.0), mask


@functools.partial(jax.jit, static_argnames=("antialias",))
def render(theta: jax.Array, antialias: bool = True) -> tuple[jax.Array, jax.Array]:
  """Renders a batch of animals.

  Args:
    theta: [B, THETA_DIM] float32, entries in [-1, 1] (clipped).
    antialias: blend part edges over one pixel (default); False paints hard edges, so that
      every pixel shows exactly the colour of its mask label (the body's up to its texture).
  Returns:
    images: [B, 64, 64, 3] float32 in [0, 1].
    masks: [B, 64, 64] int32 part labels (0 background, 1..9 in PART_NAMES order).
  """
  theta = jnp.asarray(theta, jnp.float32)
  # Chunks of 256 keep the per-pixel intermediates of a large batch in cache-sized pieces.
  return jax.lax.map(functools.partial(_render_one, antialias=antialias), theta, batch_size=256)


render_one = jax.jit(_render_one, static_argnames=("antialias",))
render_one.__doc__ = """Renders one animal: theta [THETA_DIM] -> (image [64, 64, 3], mask [64, 64])."""
