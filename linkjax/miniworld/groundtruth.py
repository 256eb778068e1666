"""Ground truth of the miniworld: generated images next to the renders of the same (z, class).

The miniworld generator is trained by regression so that G(mapping(z, c)) reproduces
`render(theta_from_noise(normalize_2nd_moment(z), c))` (`train_generator.render_target`). At
psi = 1 (no truncation) the render is therefore the true counterpart of a generated image, and
its integer part mask is the true segmentation. This module measures against it:

  * `segmentation_iou`: per-label intersection-over-union of the few-shot segmenter's masks on
    generated images vs the renderer's masks (pooled over images: sum of intersections / sum of
    unions per label);
  * `metric_correlations`: how well part metrics measured the way the method measures them
    (`quantify.part_metrics` on the generated image and the segmenter's mask) track the same
    metrics on the render with its true mask (Pearson r per part and metric, over images where
    both masks hold the part);
  * `scatter_grid`: a figure of those pairs of measurements.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linkjax import bundle as bundle_lib
from linkjax import figures, jobs, preprocess, quantify
from linkjax import masks as masks_lib
from linkjax import miniworld as world
from linkjax.models import stylegan_ops as ops

# Metrics compared against the truth: the two the issue asks for plus the shape ones.
GT_METRICS = ("area", "luminance", "entropy", "eccentricity")


def heldout_latents(key: jax.Array, n: int, z_dim: int,
                    num_classes: int = world.NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
  """Class-balanced latents: class i % num_classes, z ~ N(0, I).

  Args:
    key: PRNG key (use a stream disjoint from training's).
    n: number of samples.
    z_dim: latent width.
    num_classes: classes cycled through.
  Returns:
    (z [n, z_dim] float32, class_idx [n] int32).
  """
  z = jax.random.normal(key, (n, z_dim), jnp.float32)
  return np.asarray(z), (np.arange(n) % num_classes).astype(np.int32)


def true_theta(z: Any, class_idx: Any) -> jax.Array:
  """The renderer parameters G(z, c) reproduces at psi 1: [B, z_dim], [B] -> [B, THETA_DIM]
  (the renderer sees the mapping network's `normalize_2nd_moment` of z)."""
  eps = ops.normalize_2nd_moment(jnp.asarray(z, jnp.float32))
  return world.theta_from_noise(eps, jnp.asarray(class_idx, jnp.int32))


def true_render(z: Any, class_idx: Any) -> tuple[jax.Array, jax.Array]:
  """The render the generator reproduces for (z, class): images [B, 64, 64, 3] in [0, 1], masks."""
  return world.render(true_theta(z, class_idx))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _generate(models: bundle_lib.ModelBundle, psi: float, with_truth: bool, params: Any,
              z: jax.Array, c: jax.Array) -> dict[str, jax.Array]:
  ws = models.mapping(params, z, c, psi=psi)
  img, feats = models.render(params, ws, features=True)
  u8 = preprocess.to_uint8(img)
  out = {"ws": ws, "images": u8}
  if models.segmenter is not None:
    out["masks"] = models.segment(params, feats)
  if models.classifier is not None:
    logits, _ = models.classify_uint8(params, u8)
    out["pred"] = jnp.argmax(logits, -1).astype(jnp.int32)
  if with_truth:
    out["true_images"], out["true_masks"] = true_render(z, c)
  return out


def generate_and_segment(models: bundle_lib.ModelBundle, params: Any, z: np.ndarray,
                         class_idx: np.ndarray, *, psi: float = 1.0, batch: int = 50,
                         with_truth: bool = True) -> dict[str, np.ndarray]:
  """Generates images for (z, class), segments and classifies them, and renders the truth.

  Args:
    models, params: a bundle with a generator (a segmenter adds 'masks', a classifier 'pred').
    z: [N, z_dim]; class_idx: [N] int.
    psi: truncation of the generated images (the truth is only exact at psi 1).
    batch: samples per compiled call (the last batch is padded; one compilation).
    with_truth: also render the true images and masks (built-in world only).
  Returns:
    dict of numpy arrays: 'ws' [N, num_ws, w_dim], 'images' [N, H, W, 3] uint8 (generated),
    'masks' [N, R, R] int32 (segmenter), 'true_images' [N, 64, 64, 3] float32 in [0, 1],
    'true_masks' [N, 64, 64] int32, 'pred' [N] int32 -- each only when available.
  """
  z = np.asarray(z, np.float32)
  return jobs.map_batches(functools.partial(_generate, models, float(psi), with_truth), params,
                          z, np.asarray(class_idx, np.int32), batch=min(batch, len(z)),
                          mesh=jobs.data_mesh(1))


def segmentation_iou(pred: np.ndarray, true: np.ndarray, n_labels: int) -> np.ndarray:
  """Per-label IoU pooled over images.

  Args:
    pred: [N, H, W] int predicted labels; true: [N, H', W'] true labels (resized to H with the
      nearest rule if the sizes differ).
    n_labels: number of labels.
  Returns:
    [n_labels] float64: sum_i |P_i & T_i| / sum_i |P_i | T_i| per label (NaN if a label is absent
    from both everywhere).
  """
  pred = np.asarray(pred)
  true = np.asarray(true)
  if true.shape[-1] != pred.shape[-1]:
    true = masks_lib.resize_masks(true, pred.shape[-1])
  out = np.full(n_labels, np.nan)
  for lab in range(n_labels):
    p, t = pred == lab, true == lab
    union = np.logical_or(p, t).sum()
    if union:
      out[lab] = np.logical_and(p, t).sum() / union
  return out


@functools.partial(jax.jit, static_argnames="n_labels")
def _part_metrics(images01: jax.Array, masks: jax.Array, *, n_labels: int) -> jax.Array:
  return quantify.part_metrics(images01.astype(jnp.float32), masks.astype(jnp.int32),
                               n_labels=n_labels)


def _metrics(images01: np.ndarray, masks: np.ndarray, n_labels: int, batch: int) -> np.ndarray:
  return jobs.map_batches(lambda _, im, m: _part_metrics(im, m, n_labels=n_labels), (),
                          images01, masks, batch=min(batch, len(images01)),
                          mesh=jobs.data_mesh(1))


def paired_part_metrics(data: dict[str, np.ndarray], n_labels: int,
                        batch: int = 50) -> tuple[np.ndarray, np.ndarray]:
  """Part metrics the method's way and the true way, for the same samples.

  Args:
    data: from `generate_and_segment` (with a segmenter and `with_truth`).
    n_labels: labels including background.
    batch: images per compiled call.
  Returns:
    (measured [N, L, 5] on (generated image resized to the mask size, segmenter mask),
     true [N, L, 5] on (render, true mask)); L = n_labels - 1, `quantify.METRIC_NAMES` order.
  """
  res = data["masks"].shape[-1]
  gen = data["images"]
  if gen.shape[1] != res:
    gen = np.asarray(preprocess.resize_uint8(jnp.asarray(gen), res))
  gen01 = gen.astype(np.float32) / np.float32(255.0)
  true_im, true_m = data["true_images"], data["true_masks"]
  if true_m.shape[-1] != res:
    true_m = masks_lib.resize_masks(true_m, res)
    true_im = np.asarray(jax.image.resize(jnp.asarray(true_im), (len(true_im), res, res, 3),
                                          "linear"))
  return (_metrics(gen01, data["masks"], n_labels, batch),
          _metrics(true_im, true_m, n_labels, batch))


def metric_correlations(measured: np.ndarray, true: np.ndarray,
                        min_area: float = 20.0) -> dict[str, np.ndarray]:
  """Pearson r between measured and true part metrics, per part and metric.

  A sample counts for a part when both masks hold at least `min_area` pixels of it (the
  analysis's own threshold), so NaN metrics of absent parts never enter.

  Args:
    measured, true: [N, L, 5] from `paired_part_metrics`.
    min_area: minimum area in both masks.
  Returns:
    {'r': [L, 5] float64 (NaN with fewer than 3 valid samples or a constant column),
     'n': [L] valid samples per part}.
  """
  valid = (measured[..., 0] >= min_area) & (true[..., 0] >= min_area)  # [N, L]
  n_l = measured.shape[1]
  r = np.full((n_l, measured.shape[2]), np.nan)
  for lab in range(n_l):
    sel = valid[:, lab]
    for j in range(measured.shape[2]):
      r[lab, j] = pearson(measured[sel, lab, j], true[sel, lab, j])
  return {"r": r, "n": valid.sum(axis=0)}


def pearson(a: Any, b: Any) -> float:
  """Pearson r of two [N] samples in float64; NaN with fewer than 3 or a constant side."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 3 or not (np.std(a) > 0 and np.std(b) > 0):
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def scatter_grid(path: str | pathlib.Path, measured: np.ndarray, true: np.ndarray,
                 part_names: tuple[str, ...], metrics: tuple[str, ...] = ("area", "luminance"),
                 min_area: float = 20.0) -> None:
  """Scatter plots (rows: metrics, columns: parts) of measured vs true part metrics, r in titles.

  Args:
    path: PNG to write.
    measured, true: [N, L, 5].
    part_names: the L part names.
    metrics: metric names (from `quantify.METRIC_NAMES`) to plot, one row each.
    min_area: parts smaller than this in either mask are left out.
  """
  corr = metric_correlations(measured, true, min_area)
  n_l = measured.shape[1]
  rows = len(metrics)
  fig, axes = figures.subplots(rows, n_l, figsize=(1.9 * n_l, 1.9 * rows + 0.3), squeeze=False)
  valid = (measured[..., 0] >= min_area) & (true[..., 0] >= min_area)
  for i, m in enumerate(metrics):
    j = quantify.METRIC_NAMES.index(m)
    for lab in range(n_l):
      ax = axes[i, lab]
      sel = valid[:, lab]
      x, y = true[sel, lab, j], measured[sel, lab, j]
      ax.scatter(x, y, s=4, alpha=0.6, color=f"C{i}")
      if sel.any():
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.6)
      r = corr["r"][lab, j]
      ax.set_title(f"{part_names[lab]} {m}\nr={'n/a' if math.isnan(r) else f'{r:.2f}'}"
                   f" (n={int(sel.sum())})", fontsize=7)
      ax.tick_params(labelsize=5)
      if lab == 0:
        ax.set_ylabel("segmenter on G(z)", fontsize=7)
      if i == rows - 1:
        ax.set_xlabel("true mask on render", fontsize=7)
  fig.tight_layout()
  figures.save(fig, path)
