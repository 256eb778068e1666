"""Robust global motion for `linkjax.motion`: RANSAC + IRLS fits of an affine, a similarity or a
translation to weighted correspondences, and the affine's decomposition.

Coordinates as in `linkjax.motion`: (x, y) = (column, row) in pixels; an affine M [2, 3] maps
a point to M @ (x, y, 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MODELS = ("affine", "similarity", "translation", "none")
AFFINE_PARAM_NAMES = ("scale_x", "scale_y", "rotation_deg", "shear", "tx", "ty")


def apply_affine(m: jax.Array, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """M (x, y, 1) for an affine m [2, 3] and coordinates x, y [...]."""
  return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def invert_affine(m: jax.Array) -> jax.Array:
  """Inverse of an affine [2, 3]."""
  a_inv = jnp.linalg.inv(m[:, :2])
  return jnp.concatenate([a_inv, -(a_inv @ m[:, 2:])], axis=1)


def _wls(src: jax.Array, dst: jax.Array, wt: jax.Array, model: str) -> jax.Array:
  """Weighted least-squares affine (or translation) [2, 3] of src [N, 2] -> dst [N, 2]."""
  if model == "translation":
    t = jnp.sum(wt[:, None] * (dst - src), 0) / (jnp.sum(wt) + 1e-12)
    return jnp.concatenate([jnp.eye(2, dtype=jnp.float32), t[:, None]], axis=1)
  if model == "similarity":  # x' = a x - b y + tx, y' = b x + a y + ty
    one, zero = jnp.ones_like(src[:, 0]), jnp.zeros_like(src[:, 0])
    rows = jnp.concatenate([jnp.stack([src[:, 0], -src[:, 1], one, zero], -1),
                            jnp.stack([src[:, 1], src[:, 0], zero, one], -1)], 0)  # [2N, 4]
    rhs = jnp.concatenate([dst[:, 0], dst[:, 1]])
    ww = jnp.concatenate([wt, wt])
    ata = (rows * ww[:, None]).T @ rows
    lam = 1e-6 * (jnp.trace(ata) + 1e-6)
    prior = jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)
    a, b, tx, ty = jnp.linalg.solve(ata + lam * jnp.eye(4, dtype=jnp.float32),
                                    (rows * ww[:, None]).T @ rhs + lam * prior)
    return jnp.stack([jnp.stack([a, -b, tx]), jnp.stack([b, a, ty])])
  x = jnp.concatenate([src, jnp.ones_like(src[:, :1])], axis=1)  # [N, 3]
  xtx = (x * wt[:, None]).T @ x
  xty = (x * wt[:, None]).T @ dst
  # A tiny ridge towards the identity keeps degenerate (collinear) samples finite.
  lam = 1e-6 * (jnp.trace(xtx) + 1e-6)
  prior = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], jnp.float32)
  sol = jnp.linalg.solve(xtx + lam * jnp.eye(3, dtype=jnp.float32), xty + lam * prior)
  return sol.T


@functools.partial(jax.jit, static_argnames=("model", "hypotheses", "irls_iters"))
def fit_affine(src: jax.Array, dst: jax.Array, weights: jax.Array, key: jax.Array, *,
               model: str = "affine", hypotheses: int = 64, inlier_px: float = 1.0,
               irls_iters: int = 8, tukey_px: float = 2.0) -> tuple[jax.Array, jax.Array]:
  """Robust global fit of correspondences for one pair (vmap for batches).

  RANSAC: `hypotheses` minimal samples (3 points; 2 for a similarity, 1 for a translation) drawn with probability
  proportional to `weights` (determined by `key`), plus the identity and the all-points
  weighted fit; each scored by sum w max(0, 1 - (r / inlier_px)^2). The best is refined by
  `irls_iters` IRLS steps with Tukey biweights of cut-off `tukey_px`.

  Args:
    src, dst: [N, 2] corresponding (x, y) points.
    weights: [N] >= 0 confidences.
    key: PRNG key.
    model: 'affine', 'similarity', 'translation' or 'none' (returns the identity).
    hypotheses, inlier_px, irls_iters, tukey_px: see above.
  Returns:
    affine [2, 3] (src -> dst), inlier fraction [] (weighted, within inlier_px).
  """
  src, dst = src.astype(jnp.float32), dst.astype(jnp.float32)
  weights = jnp.maximum(weights.astype(jnp.float32), 0.0)
  ident = jnp.concatenate([jnp.eye(2, dtype=jnp.float32), jnp.zeros((2, 1), jnp.float32)], 1)
  resid = lambda m: jnp.linalg.norm(jnp.stack(apply_affine(m, src[:, 0], src[:, 1]), -1) - dst, axis=-1)
  frac = lambda m: (jnp.sum(jnp.where(resid(m) < inlier_px, weights, 0.0))
                    / (jnp.sum(weights) + 1e-12))
  if model == "none":
    return ident, frac(ident)
  k = {"translation": 1, "similarity": 2}.get(model, 3)
  idx = jax.random.categorical(key, jnp.log(weights + 1e-12), shape=(hypotheses, k))
  one = lambda i: _wls(src[i], dst[i], jnp.ones((k,), jnp.float32), model)
  cands = jnp.concatenate([jax.vmap(one)(idx), ident[None],
                           _wls(src, dst, weights, model)[None]], axis=0)
  score = jax.vmap(lambda m: jnp.sum(weights * jnp.maximum(0.0, 1.0 - (resid(m) / inlier_px)
                                                           ** 2)))(cands)
  score = jnp.where(jnp.all(jnp.isfinite(cands), axis=(1, 2)), score, -jnp.inf)
  m = irls(src, dst, weights, cands[jnp.argmax(score)], model, irls_iters, tukey_px)
  return m, frac(m)


def irls(src: jax.Array, dst: jax.Array, weights: jax.Array, m0: jax.Array, model: str,
          iters: int, tukey_px: float) -> jax.Array:
  """Tukey-weighted IRLS from m0 [2, 3]; keeps the last finite fit with any inliers."""
  def step(_, m):
    u = jnp.linalg.norm(jnp.stack(apply_affine(m, src[:, 0], src[:, 1]), -1) - dst, axis=-1) / tukey_px
    wt = weights * jnp.where(u < 1.0, (1.0 - u * u) ** 2, 0.0)
    new = _wls(src, dst, wt, model)
    return jnp.where((jnp.sum(wt) > 1e-6) & jnp.all(jnp.isfinite(new)), new, m)

  return jax.lax.fori_loop(0, iters, step, m0)


def decompose_affine(affine: jax.Array) -> jax.Array:
  """M = [A | t] with A = R(rotation) @ diag(scale_x, scale_y) @ [[1, shear], [0, 1]].

  Args:
    affine: [..., 2, 3].
  Returns:
    [..., 6]: `AFFINE_PARAM_NAMES` = scale_x, scale_y, rotation_deg (positive turns +x towards
    +y, i.e. clockwise on screen with y down), shear, tx, ty.
  """
  a, b, c, d = affine[..., 0, 0], affine[..., 0, 1], affine[..., 1, 0], affine[..., 1, 1]
  sx = jnp.sqrt(a * a + c * c)
  rot = jnp.arctan2(c, a)
  sy = (a * d - b * c) / sx
  shear = (a * b + c * d) / (sx * sx)
  return jnp.stack([sx, sy, jnp.degrees(rot), shear, affine[..., 0, 2], affine[..., 1, 2]], -1)
