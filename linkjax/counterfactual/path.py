"""Analysis of a counterfactual path: decision boundary, frames, image distances, part metrics."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from linkjax import bundle as bundle_lib
from linkjax import jobs, motion, quantify


def decision_boundary(pred: np.ndarray, start_class: int | None = None) -> int:
  """Index of the first point whose predicted class differs from the start class, or -1.

  Args:
    pred: [T] int predicted classes along a path.
    start_class: the class the path starts from (default pred[0]; `analyse_pair` passes the
      class of the original image f(r), since the search's first iterate r - shift0 may already
      differ).
  Returns:
    The boundary index b (pred[b] != start, pred[:b] == start); the two frames around the
    boundary are b - 1 and b (b = 0: the point before is the original image).
  """
  pred = np.asarray(pred)
  start = pred[0] if start_class is None else start_class
  changed = np.nonzero(pred != start)[0]
  return int(changed[0]) if changed.size else -1


def frame_indices(num_points: int, boundary: int, n_frames: int) -> np.ndarray:
  """Evenly spaced path indices that include the first, the last and the two around the boundary.

  Args:
    num_points: T, path length.
    boundary: index from `decision_boundary` (-1: none).
    n_frames: desired number of frames (>= 2; fewer if the path is shorter).
  Returns:
    [N] sorted unique int indices in [0, T).
  """
  must = {0, num_points - 1}
  if boundary > 0:
    must |= {boundary - 1, boundary}
  n_free = max(n_frames - len(must), 0)
  even = np.round(np.linspace(0, num_points - 1, n_free + 2)).astype(int)[1:-1] if n_free else []
  idx = set(must) | set(int(i) for i in even)
  # Fill up to n_frames when rounding produced duplicates.
  for i in np.round(np.linspace(0, num_points - 1, num_points)).astype(int):
    if len(idx) >= min(n_frames, num_points):
      break
    idx.add(int(i))
  return np.array(sorted(idx), dtype=np.int64)


def image_distances(images: np.ndarray, ref: np.ndarray,
                    lpips_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
                    ) -> dict[str, np.ndarray]:
  """Pixel MSE and (optionally) perceptual distance of each image to a reference image.

  Images are clipped to [-1, 1] first (the range the uint8 image shown and classified can
  express).

  Args:
    images: [T, 3, H, W] float in ~[-1, 1] (NCHW, generator output).
    ref: [3, H, W] the original image.
    lpips_fn: `lpips(a, b) -> [B]` on NCHW [-1, 1] images, or None.
  Returns:
    {'mse': [T] mean squared error on the [0, 1] pixel scale, 'lpips': [T] (with lpips_fn)}.
  """
  images = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  ref = np.clip(np.asarray(ref, np.float32), -1.0, 1.0)
  out = {"mse": (((images - ref[None]) * 0.5) ** 2).mean(axis=(1, 2, 3))}
  if lpips_fn is not None:
    refs = np.broadcast_to(ref[None], images.shape)
    out["lpips"] = np.asarray(lpips_fn(jnp.asarray(images), jnp.asarray(refs)),
                              np.float32).reshape(-1)
  return out


def relative_part_metrics(metrics: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """Part metrics relative to the original image: area as a ratio, the others as differences.

  Args:
    metrics: [T, n_parts, M] along the path (`quantify.METRIC_NAMES` order).
    ref: [n_parts, M] the same on the original image.
  Returns:
    [T, n_parts, M]; area / area_ref (NaN where the part is absent in the original), the
    others minus ref.
  """
  metrics = np.asarray(metrics, np.float64)
  ref = np.asarray(ref, np.float64)
  out = metrics - ref[None]
  a = quantify.AREA
  with np.errstate(divide="ignore", invalid="ignore"):
    out[..., a] = np.where(ref[None, :, a] > 0, metrics[..., a] / ref[None, :, a], np.nan)
  return out


class PairAnalysis(NamedTuple):
  """Analysis of one pair's path (T analysed points, sorted by step)."""
  steps: np.ndarray          # [T] int, step index along the path (0 = r - shift0)
  pred: np.ndarray           # [T] int
  probs: np.ndarray          # [T, K]
  boundary: int              # index into steps of the first class change from the original
                             # image's class (-1: none); exact between analysed points
  frames: np.ndarray         # [N] indices into steps
  frame_images: np.ndarray   # [N, H, W, 3] uint8
  ref_image: np.ndarray      # [H, W, 3] uint8, image of f(r) (the original, no shift)
  ref_pred: int
  distances: dict[str, np.ndarray]   # 'mse', optional 'lpips': [T], to the original image
  part_metrics: np.ndarray | None    # [T, L, M] relative to the original (relative_part_metrics)


def analyse_pair(models: bundle_lib.ModelBundle, params: Any, r: np.ndarray, r_path: np.ndarray,
                 *, n_frames: int = 8, max_points: int = 200, batch: int = 16,
                 lpips_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                 mesh: jax.sharding.Mesh | None = None) -> PairAnalysis:
  """Renders a pair's path, finds the decision boundary and computes trajectory metrics.

  The path is analysed at up to `max_points` evenly spaced steps; the decision boundary found
  there is then refined by rendering every step between the two points around it, so the
  boundary step is exact (up to a class change that reverses between two analysed points).
  With a segmenter in the bundle the part metrics of every analysed image are computed too.

  Args:
    models, params: a bundle with generator, classifier and link (and optionally a segmenter).
    r: [R] original representation (reference image = f(r)).
    r_path: [S + 1, R] r' at steps 0..S (from `trajectory`, every=1).
    n_frames: frames to render (always including first, last and the two around the boundary).
    max_points: analysed points before boundary refinement.
    batch: renders per call.
    lpips_fn: optional perceptual distance lpips(a, b) on NCHW [-1, 1] images.
    mesh: 1-D 'data' mesh for the renders (default: one device, the batches are small).
  Returns:
    A `PairAnalysis`.
  """
  mesh = mesh if mesh is not None else jobs.data_mesh(1)
  num = r_path.shape[0]
  cache: dict[int, dict[str, np.ndarray]] = {}
  # Point -1 is the original image f(r) (r >= 0, so f(relu(r)) = f(r)); others are path steps.
  points = lambda s: np.asarray(r, np.float32) if s < 0 else r_path[s]  # noqa: E731

  def render(step_list):
    todo = [s for s in step_list if s not in cache]
    if not todo:
      return
    rp = np.stack([points(s) for s in todo])
    out = jobs.map_batches(lambda p, x: bundle_lib.analyse_r(models, p, x), params, rp,
                           batch=batch, mesh=mesh)
    for i, s in enumerate(todo):
      cache[s] = {k: v[i] for k, v in out.items()}

  every = max(1, -(-num // max_points))
  coarse = sorted(set(range(0, num, every)) | {num - 1})
  render([-1] + coarse)
  ref = cache.pop(-1)
  ref_pred = int(np.argmax(ref["logits"]))
  preds = [int(np.argmax(cache[s]["logits"])) for s in coarse]
  b = decision_boundary(np.asarray(preds), ref_pred)
  if b > 0 and coarse[b] - coarse[b - 1] > 1:
    render(list(range(coarse[b - 1] + 1, coarse[b])))
  steps = np.array(sorted(cache), dtype=np.int64)
  logits = np.stack([cache[s]["logits"] for s in steps])
  pred = logits.argmax(-1)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  boundary = decision_boundary(pred, ref_pred)
  frames = frame_indices(len(steps), boundary, n_frames)
  images = np.stack([cache[s]["images"] for s in steps])
  distances = image_distances(images, ref["images"], lpips_fn)
  metrics = None
  if models.segmenter is not None:
    imgs = np.stack([ref["mask_images"]] + [cache[s]["mask_images"] for s in steps])
    masks = np.stack([ref["masks"]] + [cache[s]["masks"] for s in steps])
    m = jobs.map_batches(lambda _, im, ma: _metrics_u8(im, ma, n_labels=models.n_labels), (),
                         imgs, masks, batch=batch, mesh=mesh)
    metrics = relative_part_metrics(m[1:], m[0])
  return PairAnalysis(steps=steps, pred=pred, probs=probs, boundary=boundary, frames=frames,
                      frame_images=np.stack([cache[int(steps[i])]["uint8"] for i in frames]),
                      ref_image=np.asarray(ref["uint8"]), ref_pred=ref_pred,
                      distances=distances, part_metrics=metrics)


@functools.partial(jax.jit, static_argnames="n_labels")
def _metrics_u8(images_uint8: jax.Array, masks: jax.Array, *, n_labels: int) -> jax.Array:
  return quantify.part_metrics(images_uint8.astype(jnp.float32) / jnp.float32(255.0), masks,
                               n_labels=n_labels)


def boundary_motion(analyses: Sequence[PairAnalysis], *, key: jax.Array,
                    config: motion.MotionConfig | None = None, batch: int = 8
                    ) -> list[dict[str, np.ndarray] | None]:
  """Motion fields around each path's decision boundary.

  Two pairs per path with a boundary b: the frame just before it (step b - 1; the original
  image f(r) when b = 0) to the first flipped frame (b), and the original image to the first
  flipped frame. All paths go through `motion.estimate_many` at once.

  Args:
    analyses: `analyse_pair` results.
    key: PRNG key of the affine fits.
    config: motion settings; None: `motion.config_for_size` of the defaults.
    batch: pairs per compiled call.
  Returns:
    per path, None without a boundary, else {'before', 'after', 'original' [H, W, 3] uint8,
    'flow', 'total_flow' [2, H, W, 2], 'confidence' [2, H, W], 'affine_params' [2, 6]} (first
    index: 0 = before -> after, 1 = original -> after).
  """
  imgs = []
  for a in analyses:
    if a.boundary < 0:
      continue
    frames = [int(i) for i in a.frames]
    after = a.frame_images[frames.index(a.boundary)]
    before = a.ref_image if a.boundary == 0 else a.frame_images[frames.index(a.boundary - 1)]
    imgs.append((before, after, a.ref_image))
  out: list[dict[str, np.ndarray] | None] = [None] * len(analyses)
  if not imgs:
    return out
  before, after, ref = (np.stack(x) for x in zip(*imgs))
  config = config or motion.config_for_size(after.shape[1])
  res = motion.estimate_many(np.concatenate([before, ref]), np.concatenate([after, after]),
                             key=key, config=config, batch=batch)
  n = len(imgs)
  two = lambda x, j: np.stack([x[j], x[n + j]])  # noqa: E731
  j = 0
  for i, a in enumerate(analyses):
    if a.boundary < 0:
      continue
    out[i] = {"before": before[j], "after": after[j], "original": ref[j],
              "flow": two(res.flow, j), "total_flow": two(res.total_flow, j),
              "confidence": two(res.confidence, j), "affine_params": two(res.affine_params, j)}
    j += 1
  return out
