"""Dense matching for `linkjax.motion`: sampling and warping, patch descriptors on a pyramid,
block matching + Lucas-Kanade with edge-aware smoothing, forward-backward confidence.

Pure functions of one image pair (`linkjax.motion.estimate` vmaps them over pairs); `cfg` is a
`linkjax.motion.MotionConfig`. Conventions as in `linkjax.motion`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from linkjax import motion_affine as ma
from linkjax import quantify

if TYPE_CHECKING:  # annotations only: motion imports this module
  from linkjax.motion import MotionConfig


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


def grid(h: int, w: int) -> tuple[jax.Array, jax.Array]:
  """Pixel-centre coordinates (x [h, w], y [h, w])."""
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                      indexing="ij")
  return x, y


def _warp_by_flow(img: jax.Array, flow: jax.Array) -> jax.Array:
  """out(x) = img(x + flow(x)); img [h, w, C], flow [h, w, 2]."""
  x, y = grid(*flow.shape[:2])
  return _bilinear(img, x + flow[..., 0], y + flow[..., 1])


def warp_map(img: jax.Array, m: jax.Array) -> jax.Array:
  """out(x) = img(M x) for one image [h, w, C]."""
  x, y = grid(*img.shape[:2])
  xp, yp = ma.apply_affine(m, x, y)
  return _bilinear(img, xp, yp)


def warp_affine(images: jax.Array, affine: jax.Array) -> jax.Array:
  """Bilinear warp out(x) = images(M x), edges repeated outside.

  Args:
    images: [B, H, W, C].
    affine: [B, 2, 3] (I_o -> I_p: warping I_p by it aligns I_p to I_o).
  Returns:
    [B, H, W, C].
  """
  return jax.vmap(warp_map)(images, affine)


def affine_flow(affine: jax.Array, height: int, width: int) -> jax.Array:
  """The displacement field of an affine: M (x, y, 1) - (x, y).

  Args:
    affine: [B, 2, 3].
    height, width: field size.
  Returns:
    [B, height, width, 2].
  """
  x, y = grid(height, width)
  xp, yp = jax.vmap(lambda m: ma.apply_affine(m, x, y))(affine)
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
  src = img @ jnp.asarray(quantify.LUMA, jnp.float32)[:, None] if grey else img
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


def consistency(fwd: jax.Array, bwd: jax.Array, sigma: float) -> jax.Array:
  """exp(-|f(x) + b(x + f(x))|^2 / 2 sigma^2): [h, w]."""
  back = _warp_by_flow(bwd, fwd)
  return jnp.exp(-jnp.sum((fwd + back) ** 2, -1) / (2.0 * sigma * sigma))


def texture(info: jax.Array, k: int) -> jax.Array:
  """Local information in [0, 1): trace of the box-averaged tensor over (itself + its mean)."""
  tr = _box_mean(info[..., 0, 0] + info[..., 1, 1], k)
  return tr / (tr + tr.mean() + 1e-9)


def pyramids(img_o, img_p, maps_o, maps_p, cfg: MotionConfig, pixel_weight: float):
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


def dense(levels, init_fwd: jax.Array, init_bwd: jax.Array, cfg: MotionConfig, stop: int):
  """Forward (o -> p) and backward flows at level `stop` and the forward information."""
  do, dp, pyr_o, pyr_p = levels
  both = lambda a, b: jax.tree.map(lambda u, v: jnp.stack([u, v]), a, b)
  flows, infos = jax.vmap(lambda a, b, g, i: _flow_pyramid(a, b, g, i, cfg, stop))(
      both(do, dp), both(dp, do), both(pyr_o, pyr_p), jnp.stack([init_fwd, init_bwd]))
  return flows[0], flows[1], infos[0]
