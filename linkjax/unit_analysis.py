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

import csv
import itertools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from linkjax import quantify

DELTA_MODES = ("max_drop", "first_last")


# ---------------------------------------------------------------------------------- numerics


def label_changes(metrics: Any, min_area: float = 20.0) -> np.ndarray:
  """Per (sample, unit) metric changes along the sweep (`quantify.sweep_changes`).

  Args:
    metrics: [S, U, steps, L, 5] part metrics.
    min_area: labels with a smaller mean area (px) over the steps get zero change.
  Returns:
    [S, U, L, 5] float32, finite.
  """
  import jax.numpy as jnp  # noqa: PLC0415
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
  import jax.numpy as jnp  # noqa: PLC0415
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
  import threadpoolctl  # noqa: PLC0415  (a scikit-learn dependency)
  from sklearn.manifold import TSNE  # noqa: PLC0415
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
  from scipy.cluster import hierarchy  # noqa: PLC0415
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


# ---------------------------------------------------------------------------------- files


def write_csv(path: str | os.PathLike, header: Sequence[str],
              rows: Sequence[Sequence[Any]]) -> None:
  """Writes a CSV table (floats with 6 significant digits)."""
  def fmt(v):
    if isinstance(v, (float, np.floating)):
      return f"{float(v):.6g}"
    return v
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for row in rows:
      w.writerow([fmt(v) for v in row])


def label_names_of(sweep_dir: str | os.PathLike, n_labels: int) -> list[str]:
  """Part names (background excluded): from the sweep's run.json if recorded, else the paper's
  dog parts for 9 labels, else 'label1', ...."""
  run = pathlib.Path(sweep_dir) / "run.json"
  if run.exists():
    names = json.loads(run.read_text()).get("pipeline", {}).get("label_names") or []
    if len(names) == n_labels + 1:
      return list(names[1:])
  if n_labels == len(quantify.DOG_LABELS) - 1:
    return list(quantify.DOG_LABELS[1:])
  return [f"label{i + 1}" for i in range(n_labels)]


def _plt():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _save(fig, path) -> None:
  fig.savefig(path, dpi=120, bbox_inches="tight")
  _plt().close(fig)


# ---------------------------------------------------------------------------------- Fig. 5


def summarize_units(sweep: Mapping[str, np.ndarray], out_dir: str | os.PathLike, *,
                    label_names: Sequence[str], min_area: float = 20.0, n_clusters: int = 8,
                    seed: int = 0, perplexity: float = 30.0) -> dict[str, Any]:
  """Fig. 5 outputs: sparsity histograms per class, t-SNE, clustered heatmap, CSV tables.

  Writes sparsity_hist.png, tsne.png, clusters.png (dendrogram + clustered heatmap), units.csv
  (per unit: overall and per-class sparsity, strongest label, cluster, t-SNE position) and
  label_vectors.csv (per unit: median |change| of every label x metric).

  Args:
    sweep: arrays of `sweep.npz`.
    out_dir: output directory.
    label_names: the L part names.
    min_area: minimum mean label area (px).
    n_clusters: clusters cut from the tree.
    seed: t-SNE seed.
    perplexity: t-SNE perplexity (capped for few units).
  Returns:
    {'vectors': [U, L, 5], 'sparsity': ..., 'strongest': [U], 'tsne': [U, 2] or None,
     'clusters': ... or None}.
  """
  from scipy.cluster import hierarchy  # noqa: PLC0415
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  plt = _plt()
  units = np.asarray(sweep["units"])
  classes = [int(c) for c in sweep["classes"]]
  changes = label_changes(sweep["metrics"], min_area)
  vectors = unit_vectors(changes)
  n_l = vectors.shape[1]
  if len(label_names) != n_l:
    raise ValueError(f"{len(label_names)} label names for {n_l} labels")
  sp = sparsity(changes, sweep["class_idx"], classes)
  strongest = strongest_label(vectors)
  names = np.asarray(list(label_names) + ["none"])
  x = normalise_vectors(vectors)

  # Sparsity histograms: one panel per class plus all samples.
  cols = len(classes) + 1
  fig, axes = plt.subplots(1, cols, figsize=(3 * cols, 2.6), squeeze=False, sharey=True)
  bins = np.linspace(0, 1, 21)
  for i, title in enumerate([f"class {c}" for c in classes] + ["all samples"]):
    ax = axes[0, i]
    ax.hist(sp["overall"][i], bins=bins, color="C0")
    ax.axvline(float(np.median(sp["overall"][i])), color="k", ls="--", lw=1)
    ax.set_title(title)
    ax.set_xlabel("Hoyer sparsity (45 metrics)")
  axes[0, 0].set_ylabel("units")
  _save(fig, out / "sparsity_hist.png")

  emb = None
  if units.size >= 3:
    emb = tsne_embedding(x, seed=seed, perplexity=perplexity)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for j, name in enumerate(names):
      sel = strongest == (j if j < n_l else -1)
      if sel.any():
        ax.scatter(emb[sel, 0], emb[sel, 1], s=10, label=name,
                   color="lightgrey" if j == n_l else f"C{j % 10}")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title("t-SNE of units' label-change vectors")
    ax.set_xticks([])
    ax.set_yticks([])
    _save(fig, out / "tsne.png")

  clusters = None
  if units.size >= 2:
    clusters = cluster_units(x, min(n_clusters, units.size))
    fig, (ax_d, ax_h) = plt.subplots(2, 1, figsize=(9, 7), height_ratios=(1, 3))
    hierarchy.dendrogram(clusters["linkage"], ax=ax_d, no_labels=True, color_threshold=None)
    ax_d.set_yticks([])
    heat = x[clusters["order"]].T  # [L * 5, U]
    im = ax_h.imshow(heat, aspect="auto", cmap="viridis", interpolation="nearest")
    ax_h.set_yticks(range(heat.shape[0]))
    ax_h.set_yticklabels([f"{n}:{m[:3]}" for n in label_names for m in quantify.METRIC_NAMES],
                         fontsize=5)
    ax_h.set_xlabel("units (dendrogram order)")
    fig.colorbar(im, ax=ax_h, label="median |change| / metric RMS")
    _save(fig, out / "clusters.png")

  header = ["unit", "sparsity_all"] + [f"sparsity_class{c}" for c in classes] + [
      f"sparsity_{m}" for m in quantify.METRIC_NAMES] + ["strongest_label", "cluster", "tsne_x",
                                                         "tsne_y"]
  rows = []
  for i, u in enumerate(units):
    rows.append([int(u), sp["overall"][-1, i], *sp["overall"][:-1, i], *sp["per_metric"][-1, i],
                 names[strongest[i]] if strongest[i] >= 0 else "none",
                 int(clusters["labels"][i]) if clusters else "",
                 emb[i, 0] if emb is not None else "", emb[i, 1] if emb is not None else ""])
  write_csv(out / "units.csv", header, rows)
  write_csv(out / "label_vectors.csv",
            ["unit"] + [f"{n}_{m}" for n in label_names for m in quantify.METRIC_NAMES],
            [[int(u), *vectors[i].reshape(-1)] for i, u in enumerate(units)])
  return {"vectors": vectors, "sparsity": sp, "strongest": strongest, "tsne": emb,
          "clusters": clusters}


def plot_strips(sweep_dir: str | os.PathLike, sweep: Mapping[str, np.ndarray],
                out_dir: str | os.PathLike, *, label_names: Sequence[str],
                min_area: float = 20.0) -> list[pathlib.Path]:
  """Fig. 4-style figures for every unit with saved strips (`run_sweep(save_strips_for=...)`).

  Each figure: the strip (rows: samples, columns: sweep values) and the unit's median |change|
  of the area, luminance and entropy of every label.

  Returns:
    the written PNG paths (strip_unit_UUUU.png).
  """
  plt = _plt()
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  units = list(np.asarray(sweep["units"]).tolist())
  vectors = unit_vectors(label_changes(sweep["metrics"], min_area))
  written = []
  for path in sorted((pathlib.Path(sweep_dir) / "strips").glob("unit_*.npz")):
    with np.load(path) as f:
      images, values = f["images"], f["values"]
    u = int(path.stem.split("_")[1])
    rows, steps = images.shape[:2]
    fig = plt.figure(figsize=(1.3 * steps + 4, 1.3 * rows + 0.6))
    grid = fig.add_gridspec(rows, steps + 3)
    for i in range(rows):
      for k in range(steps):
        ax = fig.add_subplot(grid[i, k])
        ax.imshow(images[i, k])
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
          ax.set_title(f"{values[k]:.3g}", fontsize=8)
    if u in units:
      ax = fig.add_subplot(grid[:, steps:])
      v = vectors[units.index(u)]
      pos = np.arange(len(label_names))
      for j, m in enumerate(("area", "luminance", "entropy")):
        mi = quantify.METRIC_NAMES.index(m)
        scale = np.abs(vectors[..., mi]).max()
        ax.barh(pos + 0.27 * (j - 1), v[:, mi] / (scale if scale > 0 else 1.0), height=0.27,
                label=m)
      ax.set_yticks(pos)
      ax.set_yticklabels(label_names, fontsize=7)
      ax.invert_yaxis()
      ax.set_xlabel("median |change| (/ max over units)", fontsize=7)
      ax.legend(fontsize=6)
    fig.suptitle(f"unit {u}")
    dest = out / f"strip_unit_{u:04d}.png"
    _save(fig, dest)
    written.append(dest)
  return written


# ---------------------------------------------------------------------------------- Fig. 6


def relevance_report(sweep: Mapping[str, np.ndarray], out_dir: str | os.PathLike, *,
                     threshold: float = 0.15, mode: str = "max_drop") -> dict[str, Any]:
  """Fig. 6 outputs: Δp distributions, class-relevant units, sharing, correlation; PNG + CSV.

  Writes delta_p_hist.png (per class, distribution over units of the mean dp), relevant.png
  (relevant units per class, shared-units matrix, upset-like bar plot of exact class sets),
  correlation.png, and delta_p.csv (unit x class mean dp), relevant_units.csv, shared_units.csv,
  intersections.csv, correlation.csv.

  Args:
    sweep: arrays of `sweep.npz`.
    out_dir: output directory.
    threshold: relevance threshold on the mean dp.
    mode: dp definition ('max_drop' or 'first_last', see module docstring).
  Returns:
    `class_relevance`'s dict plus 'dp' [S, U].
  """
  plt = _plt()
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  units = np.asarray(sweep["units"])
  classes = [int(c) for c in sweep["classes"]]
  dp = delta_p(sweep, mode)
  rel = class_relevance(dp, sweep["class_idx"], classes, threshold)
  mean, relevant = rel["mean"], rel["relevant"]
  n_c = len(classes)

  fig, axes = plt.subplots(1, n_c, figsize=(3 * n_c, 2.6), squeeze=False, sharey=True)
  lo, hi = min(float(mean.min()), -threshold), max(float(mean.max()), 1.5 * threshold)
  bins = np.linspace(lo, hi, 31)
  for i, c in enumerate(classes):
    ax = axes[0, i]
    ax.hist(mean[i], bins=bins, color="C1")
    ax.axvline(threshold, color="k", ls="--", lw=1)
    ax.set_title(f"class {c}: {int(rel['counts'][i])} relevant")
    ax.set_xlabel("mean Δp over samples")
  axes[0, 0].set_ylabel("units")
  _save(fig, out / "delta_p_hist.png")

  inter = rel["intersections"][:20]
  fig, axes = plt.subplots(1, 3, figsize=(14, 4), width_ratios=(1, 1.2, 2))
  axes[0].bar(range(n_c), rel["counts"], color="C2")
  axes[0].set_xticks(range(n_c))
  axes[0].set_xticklabels(classes)
  axes[0].set_title(f"class-relevant units (mean Δp > {threshold:g})")
  im = axes[1].imshow(rel["shared"], cmap="Blues")
  for i, j in itertools.product(range(n_c), range(n_c)):
    axes[1].text(j, i, str(rel["shared"][i, j]), ha="center", va="center", fontsize=7)
  axes[1].set_xticks(range(n_c))
  axes[1].set_xticklabels(classes)
  axes[1].set_yticks(range(n_c))
  axes[1].set_yticklabels(classes)
  axes[1].set_title("units relevant to both classes")
  fig.colorbar(im, ax=axes[1])
  ax = axes[2]
  if inter:
    ax.bar(range(len(inter)), [n for _, n in inter], color="C0")
    for x, (combo, _) in enumerate(inter):  # upset-style membership dots under the bars
      for yi, c in enumerate(classes):
        ax.plot(x, -(yi + 1) * 0.08 * max(n for _, n in inter), "o",
                color="k" if c in combo else "lightgrey", ms=4)
    ax.set_yticks([-(yi + 1) * 0.08 * max(n for _, n in inter) for yi in range(n_c)] +
                  list(ax.get_yticks()[ax.get_yticks() >= 0]))
    ax.set_yticklabels([f"class {c}" for c in classes] +
                       [f"{t:g}" for t in ax.get_yticks()[n_c:]], fontsize=7)
  ax.set_xticks([])
  ax.set_title("units relevant to exactly these classes")
  _save(fig, out / "relevant.png")

  fig, ax = plt.subplots(figsize=(4.5, 3.8))
  im = ax.imshow(rel["corr"], cmap="RdBu_r", vmin=-1, vmax=1)
  ax.set_xticks(range(n_c))
  ax.set_xticklabels(classes)
  ax.set_yticks(range(n_c))
  ax.set_yticklabels(classes)
  ax.set_title("correlation of per-unit Δp")
  fig.colorbar(im, ax=ax)
  _save(fig, out / "correlation.png")

  write_csv(out / "delta_p.csv", ["unit"] + [f"class{c}" for c in classes],
            [[int(u), *mean[:, i]] for i, u in enumerate(units)])
  write_csv(out / "relevant_units.csv", ["class", "n_relevant", "units"],
            [[c, int(rel["counts"][i]), " ".join(str(int(u)) for u in units[relevant[i]])]
             for i, c in enumerate(classes)])
  write_csv(out / "shared_units.csv", ["class"] + [str(c) for c in classes],
            [[c, *rel["shared"][i]] for i, c in enumerate(classes)])
  write_csv(out / "correlation.csv", ["class"] + [str(c) for c in classes],
            [[c, *rel["corr"][i]] for i, c in enumerate(classes)])
  write_csv(out / "intersections.csv", ["classes", "n_units"],
            [[" ".join(map(str, combo)), n] for combo, n in rel["intersections"]])
  return {**rel, "dp": dp}
