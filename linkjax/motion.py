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
  motion_figures.plot_flow("flow.png", x_o[0], res.flow[0], res.confidence[0])

Validation against the miniworld's true motion and the speed against scikit-image's TV-L1:
`benchmarks/motion_validation.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linkjax import jobs
from linkjax import motion_affine as ma
from linkjax import motion_flow as mf

# The global-motion API, re-exported: one import for callers.
AFFINE_PARAM_NAMES = ma.AFFINE_PARAM_NAMES
MODELS = ma.MODELS
fit_affine = ma.fit_affine
decompose_affine = ma.decompose_affine
apply_affine = ma.apply_affine
invert_affine = ma.invert_affine
# The warps and descriptors, re-exported.
warp_affine = mf.warp_affine
affine_flow = mf.affine_flow
pixel_descriptors = mf.pixel_descriptors
feature_maps = mf.feature_maps
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


# --- the pipeline -----------------------------------------------------------------------------

def _estimate_one(img_o, img_p, maps_o, maps_p, key, cfg: MotionConfig, pixel_weight: float):
  h, w = img_o.shape[:2]
  pyramids = mf.pyramids(img_o, img_p, maps_o, maps_p, cfg, pixel_weight)
  zero = jnp.zeros((h, w, 2), jnp.float32)
  eye = jnp.concatenate([jnp.eye(2, dtype=jnp.float32), jnp.zeros((2, 1), jnp.float32)], 1)
  x, y = mf.grid(h, w)
  m, inl = eye, jnp.float32(1.0)
  if cfg.model != "none":
    lev = cfg.affine_level
    fwd, bwd, info = mf.dense(pyramids, zero, zero, cfg, lev)
    conf = mf.consistency(fwd, bwd, cfg.fb_sigma / 2 ** lev) * mf.texture(info, cfg.window)
    hl, wl = fwd.shape[:2]
    gx, gy = mf.grid(hl, wl)
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
  total, bwd, info = mf.dense(pyramids, init_f, init_b, cfg, 0)
  conf = mf.consistency(total, bwd, cfg.fb_sigma) * mf.texture(info, cfg.window)
  pts = jnp.stack([x, y], -1)
  if cfg.model != "none":
    # The first fit saw a coarse level; the full-resolution correspondences pin the global
    # motion down further (IRLS from the first fit).
    m = ma.irls(pts.reshape(-1, 2), (pts + total).reshape(-1, 2), conf.reshape(-1), m, cfg.model,
              cfg.irls_iters, cfg.tukey_px)
  inv = invert_affine(m)
  resid = jnp.stack(apply_affine(inv, x + total[..., 0], y + total[..., 1]), -1) - pts
  return MotionResult(m, decompose_affine(m), inl, resid, total, conf, mf.warp_map(img_p, m))


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
  pixel_weight = _check_inputs(images_o.shape, images_p.shape, maps_o, maps_p, config)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images_o.shape[0]))
  return _estimate_keyed(images_o, images_p, maps_o, maps_p, keys, config, pixel_weight)


def _check_inputs(shape_o: tuple[int, ...], shape_p: tuple[int, ...], maps_o: Sequence[Any],
                  maps_p: Sequence[Any], config: MotionConfig) -> float:
  """Checks the pairs and descriptor maps against `config`; returns the pixel weight used."""
  if len(maps_o) != len(maps_p):
    raise ValueError(f"{len(maps_o)} descriptor maps for I_o but {len(maps_p)} for I_p")
  for a, b in zip(maps_o, maps_p):
    if a.shape != b.shape:
      raise ValueError(f"descriptor maps differ in shape: {a.shape} vs {b.shape}")
  if tuple(shape_o) != tuple(shape_p) or len(shape_o) != 4 or shape_o[-1] != 3:
    raise ValueError(f"image shapes differ or are not [B, H, W, 3]: {tuple(shape_o)} vs "
                     f"{tuple(shape_p)}")
  h, w = shape_o[1:3]
  if h % 2 ** (config.levels - 1) or w % 2 ** (config.levels - 1):
    raise ValueError(f"H, W = {h}, {w} must be divisible by 2^(levels-1) = "
                     f"{2 ** (config.levels - 1)}")
  pixel_weight = config.pixel_weight
  if pixel_weight is None:
    pixel_weight = 0.0 if maps_o else 1.0
  if pixel_weight <= 0 and not maps_o:
    raise ValueError("pixel_weight 0 and no descriptor maps: nothing to match")
  return float(pixel_weight)


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


@functools.partial(jax.jit, static_argnames=("config", "pixel_weight"))
def _estimate_u8(_, images_o: jax.Array, images_p: jax.Array, key_data: jax.Array, *,
                 config: MotionConfig, pixel_weight: float) -> MotionResult:
  to01 = lambda u8: u8.astype(jnp.float32) / jnp.float32(255.0)
  keys = jax.vmap(jax.random.wrap_key_data)(key_data)
  return _estimate_keyed(to01(images_o), to01(images_p), (), (), keys, config, pixel_weight)


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
  pixel_weight = _check_inputs(images_o.shape, images_p.shape, (), (), config)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(images_o)))
  out = jobs.map_batches(functools.partial(_estimate_u8, config=config, pixel_weight=pixel_weight),
                         (), images_o, images_p, np.asarray(jax.random.key_data(keys)),
                         batch=batch, mesh=mesh)
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
