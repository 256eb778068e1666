"""Motion fields between an original image I_o and a perturbed image I_p, without PUMP.

The reference (paper Sec. 3.2, Fig. 2B / 4C) matches I_o to I_p with PUMP, fits a global affine
by RANSAC, warps, matches again and draws the field of the local changes. Here every step is a
pure JAX function with static shapes, written for one pair and `vmap`ped over pairs:

1. Descriptors. Normalised 3x3 patches (of the luminance by default, or RGB) plus the colour,
   on an image pyramid (`pixel_descriptors`; patches are offset- and contrast-invariant and
   vanish on flat regions), and/or descriptor maps the caller gives (`feature_maps`: e.g. the
   generator's synthesis features of both images, or classifier feature maps), each resized
   to every pyramid level, centred and normalised per pixel. The matcher only sees arrays.
2. Dense flow (`_flow_pyramid`), coarse to fine. At each level: warp I_p's descriptors by the
   current flow; integer block matching in a (2r+1)^2 window (squared distances averaged over
   a box; large displacements); then Gauss-Newton (Lucas-Kanade) terms over the same box,
   whose 2x2 information matrix keeps the aperture problem (an edge constrains only its
   normal), minimised together with an edge-aware quadratic smoothness term by Jacobi
   iterations, which fills flat regions from their surroundings. Both directions are
   computed; forward-backward consistency times the local information ("texture") is the
   per-pixel confidence.
3. Global motion (`fit_affine`, in `linkjax.motion_affine`): RANSAC hypotheses from
   confidence-weighted minimal samples (determined by the key), scored by a truncated
   quadratic, then IRLS with Tukey weights, on the correspondences of a first, coarse pass
   (affine, as the reference's `estimateAffine2D`; or a similarity or a translation).
4. A second dense pass at full resolution starts from the global motion (the same as matching
   I_p warped onto I_o, without resampling I_p), the global fit is refined by IRLS on its
   correspondences, and what the global motion does not explain is the residual `flow` of the
   local changes. (The reference meant to draw that field; its code densified the unwarped
   correspondences, see REFERENCE_NOTES "Motion fields".) `warp_affine` aligns I_p to I_o.
5. `part_summary`: per-part displacement statistics given integer part masks of I_o.

Conventions: images [B, H, W, 3] float in [0, 1]; x = column, y = row, in pixels, with pixel
centres at integer indices. A flow [..., H, W, 2] holds (dx, dy) at every pixel of I_o. An
affine M [2, 3] maps I_o coordinates to I_p coordinates, (x_p, y_p) = M @ (x_o, y_o, 1). The
total flow is total(x) = M (x + flow(x), 1) - x, i.e. the residual `flow` lives in I_o's frame
before the affine is applied.

Use (generator images [B, 3, H, W] in ~[-1, 1] become x = clip(transpose(img, (0, 2, 3, 1)) *
0.5 + 0.5, 0, 1)):

  res = motion.estimate(x_o, x_p, key=jax.random.key(0))            # MotionConfig() defaults
  parts = motion.part_summary(res.flow, res.confidence, masks_o, n_labels)   # [B, L, 6]
  motion.plot_flow("flow.png", x_o[0], res.flow[0], res.confidence[0])

Validation against the miniworld's true motion and the speed against scikit-image's TV-L1:
`benchmarks/motion_validation.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linkjax import jobs
from linkjax import motion_affine as ma

# The global-motion API, re-exported: one import for callers.
AFFINE_PARAM_NAMES = ma.AFFINE_PARAM_NAMES
MODELS = ma.MODELS
fit_affine = ma.fit_affine
decompose_affine = ma.decompose_affine
apply_affine = ma.apply_affine
invert_affine = ma.invert_affine
SUMMARY_FIELDS = ("mean_dx", "mean_dy", "mean_norm", "max_norm", "area", "confidence")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MotionConfig:
  """Settings of `estimate` (static: hashable, one compilation per config).

  Attributes:
    levels: pyramid levels; level l has size (H / 2^l, W / 2^l) (H, W divisible by
      2^(levels-1)). Displacements up to about radius * (2^levels - 1) pixels are found.
    radius: search radius (pixels of the level) of the block matching at each level.
    window: half-width of the box over which matching costs and Gauss-Newton terms are
      summed.
    smooth_iters: Jacobi iterations of the smoothness energy per level.
    smoothness: weight of the smoothness term against the matching information.
    edge_sigma: colour difference (images in [0, 1]) at which smoothing across an edge falls
      to exp(-1/2).
    patch_radius: pixel descriptors are (2 * patch_radius + 1)^2 patches (0: colour only).
    patch_grey: patches of the luminance instead of RGB (3x fewer channels, faster).
    patch_eps: contrast (per-channel patch std, [0, 1] scale) under which a patch counts as
      flat (its descriptor shrinks to 0).
    pixel_weight: weight of the pixel patch descriptors; None means 1 without caller
      descriptors and 0 with them.
    colour_weight: weight of the raw RGB value appended to the pixel descriptors.
    model: global motion fitted before the residual pass: 'affine' (as the reference),
      'similarity' (zoom, rotation, shift: a part that stretches cannot pass for a global
      anisotropic scale or shear), 'translation' or 'none'.
    affine_level: pyramid level at which the first pass stops and whose grid of
      correspondences feeds the fit (1: H/2 x W/2).
    hypotheses: RANSAC hypotheses.
    inlier_px: inlier threshold of RANSAC's score, in image pixels.
    irls_iters: IRLS iterations after RANSAC.
    tukey_px: Tukey biweight cut-off of the IRLS, in image pixels.
    fb_sigma: forward-backward disagreement (pixels) at which consistency is exp(-1/2).
    refine_iters: Gauss-Newton (Lucas-Kanade) + smoothing rounds per level after the search.
    fine_radius: search radius at full resolution, where the upsampled flow is already
      within a pixel or two.
  """
  levels: int = 4
  radius: int = 2
  window: int = 2
  smooth_iters: int = 12
  smoothness: float = 0.05
  edge_sigma: float = 0.1
  patch_radius: int = 1
  patch_eps: float = 0.02
  patch_grey: bool = True
  pixel_weight: float | None = None
  colour_weight: float = 1.0
  model: str = "affine"
  affine_level: int = 2
  hypotheses: int = 64
  inlier_px: float = 1.0
  irls_iters: int = 8
  tukey_px: float = 2.0
  fb_sigma: float = 1.0
  refine_iters: int = 1
  fine_radius: int = 1

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
    if min(self.levels, self.radius, self.fine_radius, self.refine_iters) < 1:
      raise ValueError("levels, radius, fine_radius and refine_iters must be >= 1")
    if self.window < 0 or self.patch_radius < 0:
      raise ValueError("window and patch_radius must be >= 0")
    if not 0 <= self.affine_level < self.levels:
      raise ValueError(f"affine_level must be in [0, levels), got {self.affine_level}")


class MotionResult(NamedTuple):
  """What `estimate` returns (a pytree; every field batched over pairs).

  Attributes:
    affine: [B, 2, 3] global transform, I_o coordinates -> I_p coordinates.
    affine_params: [B, 6] its decomposition, `AFFINE_PARAM_NAMES` (see `decompose_affine`).
    inliers: [B] confidence-weighted fraction of first-pass correspondences within
      `inlier_px` of the affine.
    flow: [B, H, W, 2] residual local motion (dx, dy) after the affine, in I_o's frame.
    total_flow: [B, H, W, 2] where each pixel of I_o lands in I_p, minus its position.
    confidence: [B, H, W] in [0, 1]: forward-backward consistency times local information.
    aligned: [B, H, W, 3] I_p warped into I_o's frame by the affine.
  """
  affine: jax.Array
  affine_params: jax.Array
  inliers: jax.Array
  flow: jax.Array
  total_flow: jax.Array
  confidence: jax.Array
  aligned: jax.Array


# --- sampling and warping ---------------------------------------------------------------------

def _bilinear(img: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """img [h, w, C] sampled at (x, y) [...] -> [..., C]; outside the image the edge repeats."""
  h, w, c = img.shape
  x = jnp.clip(x, 0.0, w - 1.0)
  y = jnp.clip(y, 0.0, h - 1.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  flat = img.reshape(h * w, c)
  g = lambda yy, xx: jnp.take(flat, yy * w + xx, axis=0)
  top = g(y0, x0) * (1.0 - fx) + g(y0, x1) * fx
  bot = g(y1, x0) * (1.0 - fx) + g(y1, x1) * fx
  return top * (1.0 - fy) + bot * fy


def _grid(h: int, w: int) -> tuple[jax.Array, jax.Array]:
  """Pixel-centre coordinates (x [h, w], y [h, w])."""
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                      indexing="ij")
  return x, y


def _warp_by_flow(img: jax.Array, flow: jax.Array) -> jax.Array:
  """out(x) = img(x + flow(x)); img [h, w, C], flow [h, w, 2]."""
  x, y = _grid(*flow.shape[:2])
  return _bilinear(img, x + flow[..., 0], y + flow[..., 1])


def _warp_map(img: jax.Array, m: jax.Array) -> jax.Array:
  """out(x) = img(M x) for one image [h, w, C]."""
  x, y = _grid(*img.shape[:2])
  xp, yp = apply_affine(m, x, y)
  return _bilinear(img, xp, yp)


def warp_affine(images: jax.Array, affine: jax.Array) -> jax.Array:
  """Bilinear warp out(x) = images(M x), edges repeated outside.

  Args:
    images: [B, H, W, C].
    affine: [B, 2, 3] (I_o -> I_p: warping I_p by it aligns I_p to I_o).
  Returns:
    [B, H, W, C].
  """
  return jax.vmap(_warp_map)(images, affine)


def affine_flow(affine: jax.Array, height: int, width: int) -> jax.Array:
  """The displacement field of an affine: M (x, y, 1) - (x, y).

  Args:
    affine: [B, 2, 3].
    height, width: field size.
  Returns:
    [B, height, width, 2].
  """
  x, y = _grid(height, width)
  xp, yp = jax.vmap(lambda m: apply_affine(m, x, y))(affine)
  return jnp.stack([xp - x, yp - y], axis=-1)


# --- descriptors ------------------------------------------------------------------------------

def _down2(x: jax.Array) -> jax.Array:
  h, w, c = x.shape
  return x.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def _shifts(x: jax.Array, r: int) -> jax.Array:
  """[h, w, C] -> [h, w, (2r+1)^2, C] neighbours (dy major), edges repeated."""
  h, w, _ = x.shape
  p = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
  return jnp.stack([p[dy:dy + h, dx:dx + w] for dy in range(2 * r + 1)
                    for dx in range(2 * r + 1)], axis=2)


def _patch_descriptor(img: jax.Array, r: int, eps: float, colour_weight: float,
                      grey: bool = False) -> jax.Array:
  """[h, w, 3] -> [h, w, c (2r+1)^2 + 3]: centred, normalised patch (c = 3, or 1 on the
  luminance if grey) and the weighted colour."""
  src = img @ jnp.asarray([0.299, 0.587, 0.114], jnp.float32)[:, None] if grey else img
  h, w, c = src.shape
  p = _shifts(src, r)
  p = p - p.mean(axis=2, keepdims=True)
  n = p.shape[2] * c
  p = p.reshape(h, w, n)
  p = p * jax.lax.rsqrt(jnp.sum(p * p, -1, keepdims=True) + jnp.float32(n * eps * eps))
  return jnp.concatenate([p, colour_weight * img], axis=-1)


def pixel_descriptors(images: jax.Array, config: MotionConfig) -> jax.Array:
  """The pixel descriptors the matcher uses at full resolution (for inspection and tests).

  Args:
    images: [B, H, W, 3] in [0, 1].
    config: `patch_radius`, `patch_eps`, `colour_weight`.
  Returns:
    [B, H, W, 3 (2 patch_radius + 1)^2 + 3].
  """
  return jax.vmap(lambda im: _patch_descriptor(im, config.patch_radius, config.patch_eps,
                                               config.colour_weight, config.patch_grey))(images)


def feature_maps(features: Mapping[str, jax.Array], layers: Sequence[str],
                 margins: Sequence[int] = ()) -> tuple[jax.Array, ...]:
  """NCHW feature maps (e.g. `ModelBundle.render(..., features=True)[1]`) as descriptor maps.

  Args:
    features: {layer: [B, C, h, w]}.
    layers: the layers to use.
    margins: pixels to cut from each side of each map (StyleGAN3/-XL maps extend past the
      image: `segmenter.stylegan_margins(generator_config, layers)`); () cuts nothing.
  Returns:
    tuple of [B, h_i, w_i, C_i] float32 maps, each covering exactly the image.
  """
  margins = tuple(margins) or (0,) * len(layers)
  out = []
  for name, m in zip(layers, margins, strict=True):
    f = features[name]
    if m:
      f = f[:, :, m:-m, m:-m]
    out.append(jnp.transpose(f, (0, 2, 3, 1)).astype(jnp.float32))
  return tuple(out)


def _centre_pair(fo: jax.Array, fp: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Removes the pair's mean feature and rescales to unit mean norm (one scale for both)."""
  mu = 0.5 * (fo.mean(axis=(0, 1)) + fp.mean(axis=(0, 1)))
  fo, fp = fo - mu, fp - mu
  scale = 0.5 * (jnp.linalg.norm(fo, axis=-1).mean() + jnp.linalg.norm(fp, axis=-1).mean())
  return fo / (scale + 1e-6), fp / (scale + 1e-6)


def _unit(f: jax.Array) -> jax.Array:
  """Per-pixel normalisation; features much weaker than average (norm << 1) shrink towards 0."""
  return f * jax.lax.rsqrt(jnp.sum(f * f, -1, keepdims=True) + jnp.float32(0.01))


def _level_descriptors(img: jax.Array, maps: Sequence[jax.Array], size: tuple[int, int],
                       cfg: MotionConfig, pixel_weight: float) -> jax.Array:
  """Descriptors of one image at one pyramid level: [h, w, C_total]."""
  parts = []
  if pixel_weight > 0:
    parts.append(pixel_weight * _patch_descriptor(img, cfg.patch_radius, cfg.patch_eps,
                                                  cfg.colour_weight, cfg.patch_grey))
  for f in maps:
    f = jax.image.resize(f, size + f.shape[-1:], "linear", antialias=True)
    parts.append(_unit(f) / math.sqrt(len(maps)))
  return jnp.concatenate(parts, axis=-1)


# --- dense flow -------------------------------------------------------------------------------

def _box_mean(x: jax.Array, k: int) -> jax.Array:
  """Mean over (2k+1)^2 boxes (in-image pixels only) of x [h, w, ...]."""
  if k == 0:
    return x
  win = (2 * k + 1, 2 * k + 1) + (1,) * (x.ndim - 2)
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, (1,) * x.ndim, "SAME")
  n = jax.lax.reduce_window(jnp.ones(x.shape[:2], x.dtype), 0.0, jax.lax.add, win[:2], (1, 1),
                            "SAME")
  return s / n.reshape(n.shape + (1,) * (x.ndim - 2))


def _cost_volume(do: jax.Array, dpw: jax.Array, r: int) -> jax.Array:
  """Squared distances [h, w, (2r+1)^2] (dy major) of do to dpw shifted by [-r, r]^2."""
  h, w, c = do.shape
  n = 2 * r + 1
  pad = jnp.pad(dpw, ((r, r), (r, r), (0, 0)), mode="edge")
  offsets = jnp.stack(jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij"), -1)

  def one(o):  # lax.map: one compiled body for all offsets (unrolled slices compile slowly)
    return jnp.sum((do - jax.lax.dynamic_slice(pad, (o[0], o[1], 0), (h, w, c))) ** 2, -1)

  return jnp.moveaxis(jax.lax.map(one, offsets.reshape(-1, 2)), 0, -1)


def _search(do: jax.Array, dpw: jax.Array, r: int, k: int) -> jax.Array:
  """Integer block matching of do against the already warped dpw: offsets [h, w, 2] in [-r, r].

  Squared distances are averaged over (2k+1)^2 boxes; a small pull towards zero offset makes
  flat (ambiguous) costs keep the current flow.
  """
  n = 2 * r + 1
  cost = _box_mean(_cost_volume(do, dpw, r), k)
  oy, ox = jnp.meshgrid(jnp.arange(-r, r + 1), jnp.arange(-r, r + 1), indexing="ij")
  cost = cost + 1e-3 * (ox * ox + oy * oy).reshape(-1).astype(jnp.float32)
  best = jnp.argmin(cost, axis=-1)
  return jnp.stack([best % n - r, best // n - r], axis=-1).astype(jnp.float32)


def _gradient(d: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Central differences (one-sided at the edges) of d [h, w, C] along x and y."""
  px = jnp.pad(d, ((0, 0), (1, 1), (0, 0)), mode="edge")
  py = jnp.pad(d, ((1, 1), (0, 0), (0, 0)), mode="edge")
  return 0.5 * (px[:, 2:] - px[:, :-2]), 0.5 * (py[2:] - py[:-2])


def _lk_terms(do: jax.Array, dpw: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Gauss-Newton terms of sum_box |dpw(x + u) - do(x)|^2 around u = 0.

  Uses the mean of both images' gradients (second-order efficient); the pixel's information
  counts less where the match is bad (occlusion, change in appearance).

  Returns:
    info [h, w, 2, 2] (box-summed J^T J, PSD) and grad [h, w, 2] (box-summed J^T e), so that
    the local Gauss-Newton step is u = -info^-1 grad.
  """
  gx_p, gy_p = _gradient(dpw)
  gx_o, gy_o = _gradient(do)
  gx, gy = 0.5 * (gx_p + gx_o), 0.5 * (gy_p + gy_o)
  e = dpw - do
  terms = jnp.stack([jnp.sum(gx * gx, -1), jnp.sum(gx * gy, -1), jnp.sum(gy * gy, -1),
                     jnp.sum(gx * e, -1), jnp.sum(gy * e, -1), jnp.sum(e * e, -1)], -1)
  t = _box_mean(terms, k)
  bad = 1.0 + t[..., 5] / (t[..., 5].mean() + 1e-6)
  info = jnp.stack([jnp.stack([t[..., 0], t[..., 1]], -1),
                    jnp.stack([t[..., 1], t[..., 2]], -1)], -2) / bad[..., None, None]
  return info, t[..., 3:5] / bad[..., None]


def _edge_weights(guide: jax.Array, sigma: float) -> tuple[jax.Array, jax.Array]:
  """Weights between horizontal [h, w-1] and vertical [h-1, w] neighbours of a guide image."""
  wx = jnp.exp(-jnp.sum((guide[:, 1:] - guide[:, :-1]) ** 2, -1) / (2.0 * sigma * sigma))
  wy = jnp.exp(-jnp.sum((guide[1:] - guide[:-1]) ** 2, -1) / (2.0 * sigma * sigma))
  return wx, wy


def _smooth(prior: jax.Array, info: jax.Array, data: jax.Array, guide: jax.Array,
            cfg: MotionConfig) -> jax.Array:
  """Minimises sum f^T info f - 2 f^T data + a sum w_xy |f_x - f_y|^2 (+ a tiny prior pull).

  With data = info f0 - grad this is the linearised matching energy around f0 plus an
  edge-aware smoothness term; Jacobi iterations from `prior` solve each pixel's 2x2 system
  given its neighbours.
  """
  wx, wy = _edge_weights(guide, cfg.edge_sigma)
  wx, wy = wx[..., None], wy[..., None]
  zc = lambda a: jnp.zeros_like(a[:, :1])
  zr = lambda a: jnp.zeros_like(a[:1])
  a = jnp.float32(cfg.smoothness)
  eps = jnp.float32(1e-4)
  wsum = (jnp.concatenate([wx, zc(wx)], 1) + jnp.concatenate([zc(wx), wx], 1)
          + jnp.concatenate([wy, zr(wy)], 0) + jnp.concatenate([zr(wy), wy], 0))[..., 0]
  eye = jnp.eye(2, dtype=jnp.float32)
  mat = info + (a * wsum + eps)[..., None, None] * eye
  det = mat[..., 0, 0] * mat[..., 1, 1] - mat[..., 0, 1] * mat[..., 1, 0]
  inv = jnp.stack([jnp.stack([mat[..., 1, 1], -mat[..., 0, 1]], -1),
                   jnp.stack([-mat[..., 1, 0], mat[..., 0, 0]], -1)], -2) / det[..., None, None]
  data = data + eps * prior

  def step(_, f):
    nb = (jnp.concatenate([wx * f[:, 1:], zc(f)], 1) + jnp.concatenate([zc(f), wx * f[:, :-1]], 1)
          + jnp.concatenate([wy * f[1:], zr(f)], 0) + jnp.concatenate([zr(f), wy * f[:-1]], 0))
    return jnp.einsum("hwij,hwj->hwi", inv, data + a * nb)

  return jax.lax.fori_loop(0, cfg.smooth_iters, step, prior)


def _upsample_flow(f: jax.Array, size: tuple[int, int]) -> jax.Array:
  return 2.0 * jax.image.resize(f, size + (2,), "linear")


def _flow_pyramid(desc_o: Sequence[jax.Array], desc_p: Sequence[jax.Array],
                  guide: Sequence[jax.Array], init: jax.Array, cfg: MotionConfig, stop: int
                  ) -> tuple[jax.Array, jax.Array]:
  """Coarse-to-fine flow o -> p from level len-1 down to level `stop`.

  Args:
    desc_o, desc_p: per-level descriptors [h_l, w_l, C], finest first.
    guide: per-level images of o [h_l, w_l, 3] (edges of the smoothness).
    init: [h_0, w_0, 2] initial flow at full resolution (e.g. a global affine's field).
    cfg: settings.
    stop: finest level computed.
  Returns:
    flow [h_stop, w_stop, 2] in pixels of that level, info [h_stop, w_stop, 2, 2].
  """
  top = len(desc_o) - 1
  f = init
  for _ in range(top):
    f = _down2(f) * 0.5  # exact for affine fields (pixel centres average to the centre)
  info = None
  for lev in range(top, stop - 1, -1):
    size = desc_o[lev].shape[:2]
    if lev != top:
      f = _upsample_flow(f, size)
    # The finest level only corrects the upsampled flow: a smaller window (most of the time).
    r = cfg.fine_radius if lev == 0 and lev != top else cfg.radius
    f = f + _search(desc_o[lev], _warp_by_flow(desc_p[lev], f), r, cfg.window)
    for _ in range(cfg.refine_iters):
      info, grad = _lk_terms(desc_o[lev], _warp_by_flow(desc_p[lev], f), cfg.window)
      f = _smooth(f, info, jnp.einsum("hwij,hwj->hwi", info, f) - grad, guide[lev], cfg)
  return f, info


def _consistency(fwd: jax.Array, bwd: jax.Array, sigma: float) -> jax.Array:
  """exp(-|f(x) + b(x + f(x))|^2 / 2 sigma^2): [h, w]."""
  back = _warp_by_flow(bwd, fwd)
  return jnp.exp(-jnp.sum((fwd + back) ** 2, -1) / (2.0 * sigma * sigma))


def _texture(info: jax.Array, k: int) -> jax.Array:
  """Local information in [0, 1): trace of the box-averaged tensor over (itself + its mean)."""
  tr = _box_mean(info[..., 0, 0] + info[..., 1, 1], k)
  return tr / (tr + tr.mean() + 1e-9)


def _pyramids(img_o, img_p, maps_o, maps_p, cfg: MotionConfig, pixel_weight: float):
  """Per-level descriptors of both images and the image pyramids (guides), finest first."""
  h, w = img_o.shape[:2]
  sizes = [(h >> lev, w >> lev) for lev in range(cfg.levels)]
  pyr_o, pyr_p = [img_o], [img_p]
  for _ in range(cfg.levels - 1):
    pyr_o.append(_down2(pyr_o[-1]))
    pyr_p.append(_down2(pyr_p[-1]))
  pairs = [_centre_pair(a, b) for a, b in zip(maps_o, maps_p)]
  desc = lambda pyr, maps: [_level_descriptors(pyr[lv], maps, sizes[lv], cfg, pixel_weight)
                            for lv in range(cfg.levels)]
  return (desc(pyr_o, [a for a, _ in pairs]), desc(pyr_p, [b for _, b in pairs]), pyr_o, pyr_p)


def _dense(pyramids, init_fwd: jax.Array, init_bwd: jax.Array, cfg: MotionConfig, stop: int):
  """Forward (o -> p) and backward flows at level `stop` and the forward information."""
  do, dp, pyr_o, pyr_p = pyramids
  both = lambda a, b: jax.tree.map(lambda u, v: jnp.stack([u, v]), a, b)
  flows, infos = jax.vmap(lambda a, b, g, i: _flow_pyramid(a, b, g, i, cfg, stop))(
      both(do, dp), both(dp, do), both(pyr_o, pyr_p), jnp.stack([init_fwd, init_bwd]))
  return flows[0], flows[1], infos[0]


# --- the pipeline -----------------------------------------------------------------------------

def _estimate_one(img_o, img_p, maps_o, maps_p, key, cfg: MotionConfig, pixel_weight: float):
  h, w = img_o.shape[:2]
  pyramids = _pyramids(img_o, img_p, maps_o, maps_p, cfg, pixel_weight)
  zero = jnp.zeros((h, w, 2), jnp.float32)
  eye = jnp.concatenate([jnp.eye(2, dtype=jnp.float32), jnp.zeros((2, 1), jnp.float32)], 1)
  x, y = _grid(h, w)
  m, inl = eye, jnp.float32(1.0)
  if cfg.model != "none":
    lev = cfg.affine_level
    fwd, bwd, info = _dense(pyramids, zero, zero, cfg, lev)
    conf = _consistency(fwd, bwd, cfg.fb_sigma / 2 ** lev) * _texture(info, cfg.window)
    hl, wl = fwd.shape[:2]
    gx, gy = _grid(hl, wl)
    sx, sy = w / wl, h / hl
    src = jnp.stack([(gx + 0.5) * sx - 0.5, (gy + 0.5) * sy - 0.5], -1).reshape(-1, 2)
    dst = src + (fwd * jnp.array([sx, sy], jnp.float32)).reshape(-1, 2)
    m, inl = fit_affine(src, dst, conf.reshape(-1), key, model=cfg.model,
                        hypotheses=cfg.hypotheses, inlier_px=cfg.inlier_px,
                        irls_iters=cfg.irls_iters, tukey_px=cfg.tukey_px)
  # Second pass from the global motion (not on a resampled I_p: no extra interpolation blur).
  inv = invert_affine(m)
  init_f = jnp.stack(apply_affine(m, x, y), -1) - jnp.stack([x, y], -1)
  init_b = jnp.stack(apply_affine(inv, x, y), -1) - jnp.stack([x, y], -1)
  total, bwd, info = _dense(pyramids, init_f, init_b, cfg, 0)
  conf = _consistency(total, bwd, cfg.fb_sigma) * _texture(info, cfg.window)
  pts = jnp.stack([x, y], -1)
  if cfg.model != "none":
    # The first fit saw a coarse level; the full-resolution correspondences pin the global
    # motion down further (IRLS from the first fit).
    m = ma.irls(pts.reshape(-1, 2), (pts + total).reshape(-1, 2), conf.reshape(-1), m, cfg.model,
              cfg.irls_iters, cfg.tukey_px)
  inv = invert_affine(m)
  resid = jnp.stack(apply_affine(inv, x + total[..., 0], y + total[..., 1]), -1) - pts
  return MotionResult(m, decompose_affine(m), inl, resid, total, conf, _warp_map(img_p, m))


@functools.partial(jax.jit, static_argnames="config")
def estimate(images_o: jax.Array, images_p: jax.Array,
             descriptors_o: Sequence[jax.Array] | None = None,
             descriptors_p: Sequence[jax.Array] | None = None, *, key: jax.Array,
             config: MotionConfig = MotionConfig()) -> MotionResult:
  """Global affine and dense residual motion from I_o to I_p, batched over pairs.

  Args:
    images_o, images_p: [B, H, W, 3] float in [0, 1]; H, W divisible by 2^(levels-1).
    descriptors_o, descriptors_p: optional matching tuples of descriptor maps [B, h_i, w_i, C_i]
      covering the whole image (any resolution, e.g. `feature_maps` of the generator's
      synthesis features); None matches on pixel descriptors only.
    key: PRNG key (RANSAC sampling; pair i uses fold_in(key, i)).
    config: `MotionConfig`.
  Returns:
    `MotionResult` (affine [B, 2, 3], affine_params [B, 6], inliers [B], flow and total_flow
    [B, H, W, 2], confidence [B, H, W], aligned [B, H, W, 3]).
  """
  maps_o = tuple(descriptors_o or ())
  maps_p = tuple(descriptors_p or ())
  if len(maps_o) != len(maps_p):
    raise ValueError(f"{len(maps_o)} descriptor maps for I_o but {len(maps_p)} for I_p")
  for a, b in zip(maps_o, maps_p):
    if a.shape != b.shape:
      raise ValueError(f"descriptor maps differ in shape: {a.shape} vs {b.shape}")
  b, h, w, _ = images_o.shape
  if images_p.shape != images_o.shape:
    raise ValueError(f"image shapes differ: {images_o.shape} vs {images_p.shape}")
  if h % 2 ** (config.levels - 1) or w % 2 ** (config.levels - 1):
    raise ValueError(f"H, W = {h}, {w} must be divisible by 2^(levels-1) = "
                     f"{2 ** (config.levels - 1)}")
  pixel_weight = config.pixel_weight
  if pixel_weight is None:
    pixel_weight = 0.0 if maps_o else 1.0
  if pixel_weight <= 0 and not maps_o:
    raise ValueError("pixel_weight 0 and no descriptor maps: nothing to match")
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
  return _estimate_keyed(images_o, images_p, maps_o, maps_p, keys, config, float(pixel_weight))


def _estimate_keyed(images_o, images_p, maps_o, maps_p, keys, config: MotionConfig,
                    pixel_weight: float) -> MotionResult:
  """`estimate` with one key per pair (keys [B])."""
  return jax.vmap(lambda io, ip, mo, mp, k: _estimate_one(io, ip, mo, mp, k, config,
                                                          pixel_weight))(
      images_o.astype(jnp.float32), images_p.astype(jnp.float32), maps_o, maps_p, keys)


# --- many pairs of uint8 images ---------------------------------------------------------------

def config_for_size(size: int, config: MotionConfig = MotionConfig(), min_level: int = 8,
                    min_affine_level: int = 16) -> MotionConfig:
  """`config` with its pyramid shortened so that it fits square images of side `size`.

  Keeps every level whose side divides exactly and is at least `min_level` pixels (the
  coarsest search at 64 x 64 runs on 8 x 8); the global fit reads a level of at least
  `min_affine_level` pixels (16 x 16 at 64 x 64: on coarser grids a moving part smears into
  its surroundings and passes for a global zoom).

  Args:
    size: image side (pixels).
    config: the settings to adapt.
    min_level: smallest side of the coarsest level.
    min_affine_level: smallest side of the level the global fit reads.
  Returns:
    a `MotionConfig` (equal to `config` where it already fits).
  """
  levels = 1
  while (levels < config.levels and size % 2 ** levels == 0
         and size >> levels >= min_level):
    levels += 1
  affine_level = min(config.affine_level, levels - 1)
  while affine_level > 0 and size >> affine_level < min_affine_level:
    affine_level -= 1
  return dataclasses.replace(config, levels=levels, affine_level=affine_level)


@functools.partial(jax.jit, static_argnames="config")
def _estimate_u8(_, images_o: jax.Array, images_p: jax.Array, key_data: jax.Array, *,
                 config: MotionConfig) -> MotionResult:
  to01 = lambda u8: u8.astype(jnp.float32) / jnp.float32(255.0)
  keys = jax.vmap(jax.random.wrap_key_data)(key_data)
  return _estimate_keyed(to01(images_o), to01(images_p), (), (), keys, config, 1.0)


def estimate_many(images_o: Any, images_p: Any, *, key: jax.Array,
                  config: MotionConfig = MotionConfig(), batch: int = 8,
                  mesh: jax.sharding.Mesh | None = None) -> MotionResult:
  """`estimate` (pixel descriptors) on any number of uint8 pairs, in fixed-size batches.

  One compilation per (config, batch, image size) serves every call, however many pairs it
  brings (the sweep's strips, the counterfactual's boundaries and the demo's check share it).
  Pair i uses fold_in(key, i), as in `estimate` on all pairs at once, so the results do not
  depend on `batch`.

  Args:
    images_o, images_p: [N, H, W, 3] uint8 (numpy or jax).
    key: PRNG key.
    config: `MotionConfig` (see `config_for_size` for small images).
    batch: pairs per compiled call (padded; rounded up to a multiple of the mesh size).
    mesh: 1-D 'data' mesh (default: all local devices).
  Returns:
    `MotionResult` of numpy arrays with N rows.
  """
  images_o, images_p = np.asarray(images_o), np.asarray(images_p)
  if images_o.dtype != np.uint8 or images_p.dtype != np.uint8:
    raise ValueError(f"expected uint8 images, got {images_o.dtype} and {images_p.dtype}")
  if images_o.shape != images_p.shape or images_o.ndim != 4:
    raise ValueError(f"image shapes differ or are not [N, H, W, 3]: {images_o.shape} vs "
                     f"{images_p.shape}")
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(images_o)))
  out = jobs.map_batches(functools.partial(_estimate_u8, config=config), (), images_o,
                         images_p, np.asarray(jax.random.key_data(keys)), batch=batch, mesh=mesh)
  return MotionResult(*out)  # map_batches' tree.map keeps the fields; the type made explicit


# --- summaries --------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("n_labels",))
def part_summary(flow: jax.Array, confidence: jax.Array, masks: jax.Array, n_labels: int,
                 min_confidence: float = 0.25) -> jax.Array:
  """Per-part displacement statistics.

  Args:
    flow: [B, H, W, 2] (a residual `flow` or a `total_flow`).
    confidence: [B, H, W] in [0, 1] (weights; all ones for plain averages).
    masks: [B, H, W] int part labels of I_o in [0, n_labels) (same size as the flow; resize
      masks with the nearest rule first).
    n_labels: number of labels (background included).
    min_confidence: pixels below it are left out of `max_norm`.
  Returns:
    [B, n_labels, 6] float32, `SUMMARY_FIELDS`: confidence-weighted mean_dx, mean_dy and
    mean_norm (mean of |flow|), max_norm (max |flow| over the part's pixels with confidence >=
    min_confidence, 0 if none), area (pixels), confidence (mean over the part). Means are NaN
    for absent parts or parts without any confidence.
  """
  onehot = jax.nn.one_hot(masks, n_labels, dtype=jnp.float32)  # [B, H, W, L]
  norm = jnp.linalg.norm(flow, axis=-1)
  wt = onehot * confidence[..., None]
  wsum = wt.sum(axis=(1, 2))  # [B, L]
  safe = jnp.where(wsum > 1e-9, wsum, jnp.nan)
  mean = jnp.einsum("bhwl,bhwc->blc", wt, flow) / safe[..., None]
  mnorm = jnp.einsum("bhwl,bhw->bl", wt, norm) / safe
  keep = onehot * (confidence >= min_confidence).astype(jnp.float32)[..., None]
  mx = jnp.max(keep * norm[..., None], axis=(1, 2))
  area = onehot.sum(axis=(1, 2))
  conf = wsum / jnp.where(area > 0, area, jnp.nan)
  return jnp.concatenate([mean, mnorm[..., None], mx[..., None], area[..., None],
                          conf[..., None]], axis=-1)


def plot_flow(path_or_ax: Any, image: Any, flow: Any, confidence: Any = None, **kwargs: Any):
  """Arrows of a flow over an image; see `linkjax.motion_figures.plot_flow`."""
  from linkjax import motion_figures  # matplotlib only when drawing
  return motion_figures.plot_flow(path_or_ax, image, flow, confidence, **kwargs)
