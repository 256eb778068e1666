"""Summaries and figures of unit sweeps (paper Figs. 4-6): label changes, sparsity, t-SNE,
clustering, and class relevance.

Inputs are the arrays of `linkjax.sweep` (`sweep.npz`). Definitions:

* Label-change vectors. Per (sample, unit) `quantify.sweep_changes` gives the change of each part
  metric from the first to the last step ([L, 5]: area relative to the first step, the others as
  differences, labels below 20 px on average zeroed). A unit's vector is the median over samples of
  the absolute change (the size of its effect on each label regardless of its direction in each
  sample, the statistic `quantify.label_sparsity` uses), [L, 5].
* Sparsity. Hoyer sparsity of that median (`quantify.label_sparsity`), per class (samples of the
  class only) and over all samples; 'overall' over the 45-vector, 'per_metric' over the 9 labels.
* t-SNE and clustering run on the vectors with each metric divided by its root-mean-square over
  all units and labels, so that relative area, 0-1 luminance, entropy bits, eccentricity and
  degrees weigh alike. A unit's strongest label is the argmax over labels of the sum of its five
  normalised metric changes ('none' for a unit that changes nothing).
* Class relevance (Fig. 6). For sample s of class c and unit u, with p the classifier's
  probability of class c:
    'max_drop' (default): dp[s, u] = p(unperturbed image of s) - min_k p(image at step k), the
      largest drop of the original class's probability that setting u anywhere in its range
      causes, relative to the image generated from the sample's own r (same link, same path);
    'first_last': dp[s, u] = p(step 0) - p(last step), the signed change across the sweep
      (minimum to maximum value), analogous to the label changes.
  A unit's relevance to class c is the mean of dp over the samples of class c; a unit is
  class-relevant when that mean exceeds the threshold (0.15 in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import threadpoolctl  # a scikit-learn dependency
from scipy.cluster import hierarchy
from sklearn.manifold import TSNE

from linkjax import quantify

DELTA_MODES = ("max_drop", "first_last")
# The reference's analysis zeroes labels whose mean area over the steps is below 20 px at 128 x 128.
REFERENCE_MIN_AREA = 20.0
REFERENCE_RESOLUTION = 128


def min_area_for(mask_resolution: int, min_area: float | None = None) -> float:
  """The minimum part area (px): `min_area` if given, else the reference's 20 px at 128 x 128
  scaled to `mask_resolution` (0: unknown, the reference's 20 px)."""
  if min_area is not None:
    return float(min_area)
  if not mask_resolution:
    return REFERENCE_MIN_AREA
  return REFERENCE_MIN_AREA * (mask_resolution / REFERENCE_RESOLUTION) ** 2


def part_names(sweep: Mapping[str, np.ndarray]) -> list[str]:
  """The L part names of a sweep (background excluded): as stored with it, else the reference's
  dog parts for 9 labels, else 'label1', ...."""
  n_labels = int(np.asarray(sweep["metrics"]).shape[-2])
  names = [str(n) for n in np.asarray(sweep.get("label_names", []))]
  if len(names) == n_labels + 1:
    return names[1:]
  if n_labels == len(quantify.DOG_LABELS) - 1:
    return list(quantify.DOG_LABELS[1:])
  return [f"label{i + 1}" for i in range(n_labels)]


# ---------------------------------------------------------------------------------- numerics


def label_changes(metrics: Any, min_area: float = 20.0) -> np.ndarray:
  """Per (sample, unit) metric changes along the sweep (`quantify.sweep_changes`).

  Args:
    metrics: [S, U, steps, L, 5] part metrics.
    min_area: labels with a smaller mean area (px) over the steps get zero change.
  Returns:
    [S, U, L, 5] float32, finite.
  """
  return np.asarray(quantify.sweep_changes(jnp.asarray(np.asarray(metrics, np.float32)),
                                           min_area=min_area))


def unit_vectors(changes: Any) -> np.ndarray:
  """Median over samples of |change|: [S, U, L, 5] -> [U, L, 5] float32."""
  return np.median(np.abs(np.asarray(changes, np.float32)), axis=0).astype(np.float32)


def sparsity(changes: Any, class_idx: Any, classes: Sequence[int]) -> dict[str, np.ndarray]:
  """Hoyer label sparsity of each unit, per class and over all samples.

  Args:
    changes: [S, U, L, 5] from `label_changes`.
    class_idx: [S] class of each sample; classes: [C] classes to report.
  Returns:
    {'overall': [C + 1, U], 'per_metric': [C + 1, U, 5]}; row C is over all samples.
  """
  changes = np.asarray(changes, np.float32)
  class_idx = np.asarray(class_idx)
  overall, per_metric = [], []
  for sel in [class_idx == c for c in classes] + [np.ones_like(class_idx, bool)]:
    # [U, S_c, L, 5]: label_sparsity takes the median over axis -3 (samples).
    sp = quantify.label_sparsity(jnp.asarray(np.swapaxes(changes[sel], 0, 1)))
    overall.append(np.asarray(sp["overall"]))
    per_metric.append(np.asarray(sp["per_metric"]))
  return {"overall": np.stack(overall), "per_metric": np.stack(per_metric)}


def normalise_vectors(vectors: Any) -> np.ndarray:
  """Each metric divided by its RMS over units and labels: [U, L, 5] -> [U, L * 5] float64."""
  v = np.asarray(vectors, np.float64)
  rms = np.sqrt(np.mean(v * v, axis=(0, 1)))
  v = v / np.where(rms > 0, rms, 1.0)
  return v.reshape(v.shape[0], -1)


def strongest_label(vectors: Any) -> np.ndarray:
  """Index of each unit's strongest label (see module docstring); -1 if it changes nothing.

  Args:
    vectors: [U, L, 5] median |changes|.
  Returns:
    [U] int64 in [-1, L).
  """
  v = np.asarray(vectors, np.float64)
  strength = normalise_vectors(v).reshape(v.shape).sum(axis=-1)  # [U, L]
  return np.where(strength.max(axis=1) > 0, strength.argmax(axis=1), -1)


def tsne_embedding(x: Any, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
  """2-D t-SNE (scikit-learn, PCA init) of [U, D] -> [U, 2]; perplexity capped at (U - 1) / 3.

  Runs with one OpenMP/BLAS thread: next to a running JAX process scikit-learn's spinning OpenMP
  workers oversubscribe the cores (50x slower on a busy 2-core machine); for a few thousand units
  single-threaded Barnes-Hut takes seconds.
  """
  x = np.asarray(x, np.float64)
  if x.shape[0] < 3:
    raise ValueError(f"t-SNE needs at least 3 units, got {x.shape[0]}")
  perp = float(min(perplexity, max((x.shape[0] - 1) / 3.0, 1.0)))
  with threadpoolctl.threadpool_limits(limits=1):
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def cluster_units(x: Any, n_clusters: int) -> dict[str, np.ndarray]:
  """Ward hierarchical clustering (scipy) of unit vectors.

  Args:
    x: [U, D] normalised vectors (U >= 2).
    n_clusters: clusters cut from the tree.
  Returns:
    {'linkage': [U - 1, 4], 'labels': [U] cluster ids 1..n_clusters, 'order': [U] leaf order}.
  """
  x = np.asarray(x, np.float64)
  z = hierarchy.linkage(x, method="ward")
  return {"linkage": z, "labels": hierarchy.fcluster(z, t=n_clusters, criterion="maxclust"),
          "order": hierarchy.leaves_list(z)}


def original_class_probs(sweep: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Probability of each sample's own class: ([S, U, steps] along the sweep, [S] unperturbed)."""
  classes = list(np.asarray(sweep["classes"]).tolist())
  col = np.asarray([classes.index(int(c)) for c in sweep["class_idx"]])
  p = np.take_along_axis(np.asarray(sweep["probs"]), col[:, None, None, None], axis=-1)[..., 0]
  return p, np.asarray(sweep["base_probs"])[np.arange(col.size), col]


def delta_p(sweep: Mapping[str, np.ndarray], mode: str = "max_drop") -> np.ndarray:
  """Change of the original class's probability per (sample, unit); see module docstring.

  Args:
    sweep: arrays of `sweep.npz` ('probs', 'base_probs', 'class_idx', 'classes').
    mode: 'max_drop' or 'first_last'.
  Returns:
    [S, U] float32.
  """
  p, base = original_class_probs(sweep)
  if mode == "max_drop":
    return (base[:, None] - p.min(axis=-1)).astype(np.float32)
  if mode == "first_last":
    return (p[..., 0] - p[..., -1]).astype(np.float32)
  raise ValueError(f"mode must be one of {DELTA_MODES}, got {mode!r}")


def class_relevance(dp: Any, class_idx: Any, classes: Sequence[int],
                    threshold: float = 0.15) -> dict[str, Any]:
  """Class-relevant units and how classes share them.

  Args:
    dp: [S, U] from `delta_p`.
    class_idx: [S] class of each sample; classes: [C].
    threshold: a unit is relevant to class c when mean dp over c's samples > threshold.
  Returns:
    {'mean': [C, U] mean dp per class, 'relevant': [C, U] bool, 'counts': [C],
     'shared': [C, C] units relevant to both classes (diagonal: counts),
     'corr': [C, C] Pearson correlation of the per-unit mean dp between classes (NaN for a
     constant row), 'intersections': [(tuple of classes, n_units)] of units relevant to exactly
     that set of classes, largest first}.
  """
  dp = np.asarray(dp, np.float64)
  class_idx = np.asarray(class_idx)
  mean = np.stack([dp[class_idx == c].mean(axis=0) for c in classes])
  relevant = mean > threshold
  shared = relevant.astype(np.int64) @ relevant.T.astype(np.int64)
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = np.corrcoef(mean) if len(classes) > 1 else np.ones((1, 1))
  combos: dict[tuple[int, ...], int] = {}
  for u in range(relevant.shape[1]):
    key = tuple(int(c) for c, r in zip(classes, relevant[:, u]) if r)
    if key:
      combos[key] = combos.get(key, 0) + 1
  inter = sorted(combos.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))
  return {"mean": mean.astype(np.float32), "relevant": relevant, "counts": relevant.sum(axis=1),
          "shared": shared, "corr": np.atleast_2d(corr), "intersections": inter}
