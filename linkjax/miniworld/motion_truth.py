"""True motion between two renders of the miniworld, for validating `linkjax.motion`.

Every part of an animal is a primitive (ellipse or capsule) in the animal's frame, so a pixel
of part l in render(theta_o) has canonical coordinates in its primitive, and the same
canonical point of the same primitive in theta_p's geometry is where it moved to:

  * ellipse (body, head, ear, snout, nose, eye): normalised coordinates (u / a, v / b) in the
    ellipse's own axes;
  * capsule (4 legs, 2 tail segments, tongue): the position along the segment as a fraction of
    its length (beyond the ends: pixels, scaled with the radius) and the signed distance across
    it, scaled with the radius.

The body is the exception: its stripes, spots and shading are painted in the animal's frame
(not stretched with body_len / body_h), so its texture moves with the pose while its outline
stretches; there the truth is defined only where the two maps agree within `BODY_TOLERANCE`.
The background does not move. A pixel's truth is valid where the point lands inside the image
on the same part of render(theta_p) (so occluded and uncovered pixels are left out).

`primitive_masks` rebuilds the renderer's integer mask from these primitives; the tests check it
equals `render(theta, antialias=False)`'s mask pixel for pixel, which pins the geometry here to
the renderer's. Coordinates follow `linkjax.motion`: pixel centres at integer indices, x =
column, y = row (the renderer's own frame is offset by half a pixel).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from linkjax import miniworld as rw
from linkjax import motion_affine as ma
from linkjax import motion_flow
from linkjax.miniworld.render import (  # the renderer's own geometry
  _sd_capsule,
  _sd_ellipse,
)

BODY_TOLERANCE = 0.5  # pixels: where texture and outline motion of the body may differ
_DEG = math.pi / 180.0


def _primitives(p: dict[str, jax.Array]) -> dict[str, list[tuple]]:
  """Each part's primitives in the animal frame, mirroring `render._render_one`.

  ('e', cx, cy, a, b, angle) ellipses and ('c', x0, y0, x1, y1, r) capsules; legs in the order
  far hind, far front, near hind, near front.
  """
  bl, bh = p["body_len"], p["body_h"]
  prims: dict[str, list[tuple]] = {}
  reach = 0.75 * bh + p["leg_len"]
  splay = p["leg_splay"] * _DEG
  legs = []
  for off in (2.2, 0.0):  # far, near
    for sign in (-1.0, 1.0):  # hind, front
      x0 = sign * p["leg_spread"] * bl + off
      y0 = 0.2 * bh
      lean = sign * splay
      legs.append(("c", x0, y0, x0 + reach * jnp.sin(lean), y0 + reach * jnp.cos(lean),
                   p["leg_w"]))
  prims["leg"] = legs
  ta = p["tail_angle"] * _DEG
  tx0, ty0 = -0.85 * bl, -0.3 * bh
  half = 0.5 * p["tail_len"] + 0.5 * bh
  tx1, ty1 = tx0 - half * jnp.cos(ta), ty0 - half * jnp.sin(ta)
  ta2 = ta + p["tail_curl"] * _DEG
  tx2 = tx1 - 0.5 * p["tail_len"] * jnp.cos(ta2)
  ty2 = ty1 - 0.5 * p["tail_len"] * jnp.sin(ta2)
  prims["tail"] = [("c", tx0, ty0, tx1, ty1, p["tail_w"]),
                   ("c", tx1, ty1, tx2, ty2, 0.8 * p["tail_w"])]
  zero = jnp.zeros_like(bl)
  prims["body"] = [("e", zero, zero, bl, bh, zero)]
  hr = p["head_r"]
  hry = hr * p["head_aspect"]
  hx = 0.78 * bl + 0.25 * hr
  hy = -0.45 * bh - p["head_lift"] * hr
  prims["head"] = [("e", hx, hy, hr, hry, zero)]
  ea = p["ear_angle"] * _DEG
  ex0, ey0 = hx - 0.35 * hr, hy - 0.7 * hry
  edx, edy = -jnp.sin(ea), -jnp.cos(ea)
  prims["ear"] = [("e", ex0 + 0.5 * p["ear_len"] * edx, ey0 + 0.5 * p["ear_len"] * edy,
                   0.5 * p["ear_len"] + 0.5, p["ear_w"], jnp.arctan2(edy, edx))]
  sl, sh = p["snout_len"], p["snout_h"]
  sx = hx + 0.8 * hr + 0.5 * sl
  sy = hy + p["snout_drop"] * hr + 0.25 * hry
  prims["snout"] = [("e", sx, sy, sl, sh, zero)]
  prims["nose"] = [("e", sx + sl - 0.3 * p["nose_r"], sy - 0.45 * sh, p["nose_r"],
                    0.8 * p["nose_r"], zero)]
  prims["eye"] = [("e", hx + 0.3 * hr, hy - 0.3 * hry, p["eye_r"], p["eye_r"], zero)]
  tx, ty = sx + 0.1 * sl, sy + 0.75 * sh
  prims["tongue"] = [("c", tx, ty, tx + 0.15 * p["tongue_len"], ty + p["tongue_len"],
                      p["tongue_w"])]
  return prims


def _sd(prim: tuple, x: jax.Array, y: jax.Array) -> jax.Array:
  if prim[0] == "e":
    _, cx, cy, a, b, ang = prim
    return _sd_ellipse(x, y, cx, cy, a, b, angle=ang)
  _, x0, y0, x1, y1, r = prim
  return _sd_capsule(x, y, x0, y0, x1, y1, r)


def _to_canonical(prim: tuple, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ellipse: normalised axes coordinates; capsule: (pixels along from the start, across / r)."""
  if prim[0] == "e":
    _, cx, cy, a, b, ang = prim
    c, s = jnp.cos(ang), jnp.sin(ang)
    u, v = x - cx, y - cy
    return (c * u + s * v) / a, (-s * u + c * v) / b
  _, x0, y0, x1, y1, r = prim
  length = jnp.hypot(x1 - x0, y1 - y0)
  ex, ey = (x1 - x0) / length, (y1 - y0) / length
  return (x - x0) * ex + (y - y0) * ey, (-(x - x0) * ey + (y - y0) * ex) / r


def _from_canonical(prim: tuple, prim_o: tuple, cu: jax.Array, cv: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """Inverse of `_to_canonical` in `prim`'s geometry. A capsule keeps the fraction along the
  segment; beyond an end the overshoot (a round cap) scales with the radius, like `across`."""
  if prim[0] == "e":
    _, cx, cy, a, b, ang = prim
    c, s = jnp.cos(ang), jnp.sin(ang)
    u, v = a * cu, b * cv
    return cx + c * u - s * v, cy + s * u + c * v
  _, x0, y0, x1, y1, r = prim
  _, ox0, oy0, ox1, oy1, orad = prim_o
  olen = jnp.hypot(ox1 - ox0, oy1 - oy0)
  length = jnp.hypot(x1 - x0, y1 - y0)
  ex, ey = (x1 - x0) / length, (y1 - y0) / length
  k = r / orad
  along = jnp.where(cu < 0, cu * k, jnp.where(cu > olen, length + (cu - olen) * k,
                                               cu / olen * length))
  across = cv * r
  return x0 + along * ex - across * ey, y0 + along * ey + across * ex


def _pose(p: dict[str, jax.Array]):
  ang = p["pose_angle"] * _DEG
  c, s = jnp.cos(ang), jnp.sin(ang)
  to_animal = lambda px, py: (c * (px - p["pose_x"]) - s * (py - p["pose_y"]),
                              s * (px - p["pose_x"]) + c * (py - p["pose_y"]))
  to_image = lambda x, y: (c * x + s * y + p["pose_x"], -s * x + c * y + p["pose_y"])
  return to_animal, to_image


def _one(theta_o: jax.Array, theta_p: jax.Array, mask_o: jax.Array, mask_p: jax.Array,
         affine: jax.Array) -> tuple[jax.Array, jax.Array]:
  """True flow [64, 64, 2] and validity [64, 64] of one pair (see `true_flow`)."""
  po, pp = rw.physical(theta_o), rw.physical(theta_p)
  prim_o, prim_p = _primitives(po), _primitives(pp)
  to_animal_o, _ = _pose(po)
  _, to_image_p = _pose(pp)
  iy, ix = jnp.meshgrid(jnp.arange(rw.SIZE, dtype=jnp.float32),
                        jnp.arange(rw.SIZE, dtype=jnp.float32), indexing="ij")
  x, y = to_animal_o(ix + 0.5, iy + 0.5)
  # Background: static (in the renderer's frame).
  nx, ny = ix + 0.5, iy + 0.5
  valid_extra = jnp.ones_like(ix, dtype=bool)
  for name in rw.PART_NAMES[1:]:
    label = rw.PART_NAMES.index(name)
    prims_o, prims_p = prim_o[name], prim_p[name]
    sds = jnp.stack([_sd(q, x, y) for q in prims_o])  # [k, H, W]
    if name == "leg":  # the near legs are painted over the far ones
      near = jnp.min(sds[2:], axis=0) < 0
      pick = jnp.where(near, 2 + jnp.argmin(sds[2:], axis=0), jnp.argmin(sds[:2], axis=0))
    else:
      pick = jnp.argmin(sds, axis=0)
    mx, my = jnp.zeros_like(x), jnp.zeros_like(y)
    for k, (qo, qp) in enumerate(zip(prims_o, prims_p)):
      cu, cv = _to_canonical(qo, x, y)
      ax, ay = _from_canonical(qp, qo, cu, cv)
      mx, my = jnp.where(pick == k, ax, mx), jnp.where(pick == k, ay, my)
    if name == "body":  # texture frame vs outline: valid only where they agree
      tx, ty = to_image_p(x, y)
      ox, oy = to_image_p(mx, my)
      valid_extra = jnp.where(mask_o == label,
                              jnp.hypot(tx - ox, ty - oy) <= BODY_TOLERANCE, valid_extra)
    px, py = to_image_p(mx, my)
    on = mask_o == label
    nx, ny = jnp.where(on, px, nx), jnp.where(on, py, ny)
  # Render frame -> pixel indices, then the image warp.
  nx, ny = nx - 0.5, ny - 0.5
  wx = affine[0, 0] * nx + affine[0, 1] * ny + affine[0, 2]
  wy = affine[1, 0] * nx + affine[1, 1] * ny + affine[1, 2]
  inside = (wx > -0.5) & (wx < rw.SIZE - 0.5) & (wy > -0.5) & (wy < rw.SIZE - 0.5)
  rx = jnp.clip(jnp.round(wx), 0, rw.SIZE - 1).astype(jnp.int32)
  ry = jnp.clip(jnp.round(wy), 0, rw.SIZE - 1).astype(jnp.int32)
  same = mask_p[ry, rx] == mask_o
  return jnp.stack([wx - ix, wy - iy], -1), inside & same & valid_extra


@jax.jit
def true_flow(theta_o: jax.Array, theta_p: jax.Array, masks_o: jax.Array, masks_p: jax.Array,
              affine: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Where every pixel of render(theta_o) goes in I_p = warp(render(theta_p), affine).

  Args:
    theta_o, theta_p: [B, THETA_DIM].
    masks_o: [B, 64, 64] render(theta_o)'s masks.
    masks_p: [B, 64, 64] I_p's masks (render(theta_p)'s, warped by `warp_render` if an affine
      is given).
    affine: optional [B, 2, 3] image warp applied to render(theta_p) (pixel-index
      coordinates, render -> I_p); None is the identity.
  Returns:
    flow [B, 64, 64, 2] (dx, dy) in pixels and valid [B, 64, 64] bool (the pixel lands inside
    the image on the same part; body pixels only where texture and outline agree).
  """
  if affine is None:
    eye = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32)
    affine = jnp.broadcast_to(eye, (theta_o.shape[0], 2, 3))
  return jax.vmap(_one)(theta_o, theta_p, masks_o, masks_p, affine)


def primitive_masks(theta: jax.Array) -> jax.Array:
  """Integer part masks [B, 64, 64] painted from `_primitives` in the renderer's order."""
  def one(th):
    p = rw.physical(th)
    prims = _primitives(p)
    to_animal, _ = _pose(p)
    iy, ix = jnp.meshgrid(jnp.arange(rw.SIZE, dtype=jnp.float32) + 0.5,
                          jnp.arange(rw.SIZE, dtype=jnp.float32) + 0.5, indexing="ij")
    x, y = to_animal(ix, iy)
    mask = jnp.zeros((rw.SIZE, rw.SIZE), jnp.int32)
    for name in rw.PAINT_ORDER:
      sd = jnp.min(jnp.stack([_sd(q, x, y) for q in prims[name]]), axis=0)
      mask = jnp.where(sd < 0, jnp.int32(rw.PART_NAMES.index(name)), mask)
    return mask
  return jax.vmap(one)(theta)


def warp_render(images: jax.Array, masks: jax.Array, affine: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """Renders moved by an image affine: out(A x + t) = in(x) (bilinear images, nearest masks).

  Args:
    images: [B, 64, 64, 3]; masks: [B, 64, 64] int.
    affine: [B, 2, 3] in pixel-index coordinates (source -> output).
  Returns:
    (images [B, 64, 64, 3], masks [B, 64, 64]); outside the source the edge repeats (images)
    or is background (masks).
  """
  def one(img, m, a):
    inv = ma.invert_affine(a)
    sx, sy = ma.apply_affine(inv, *motion_flow.grid(rw.SIZE, rw.SIZE))
    rx, ry = jnp.round(sx).astype(jnp.int32), jnp.round(sy).astype(jnp.int32)
    inside = (rx >= 0) & (rx < rw.SIZE) & (ry >= 0) & (ry < rw.SIZE)
    mm = jnp.where(inside, m[jnp.clip(ry, 0, rw.SIZE - 1), jnp.clip(rx, 0, rw.SIZE - 1)], 0)
    return motion_flow.warp_map(img, inv), mm
  return jax.vmap(one)(images, masks, affine)
