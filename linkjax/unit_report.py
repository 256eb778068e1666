"""Figures, tables and drivers of unit sweeps (paper Figs. 4-6) from a sweep directory.

`run_units` (Figs. 4/5: label sparsity, t-SNE, clustering, strips) and `run_relevance` (Fig. 6:
class relevance) are the drivers that `experiments.unit_summary`, `experiments.class_relevance`
and the demo call; the numbers come from `linkjax.unit_analysis`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.cluster import hierarchy

from linkjax import figures, files, quantify
from linkjax import sweep as sweep_lib
from linkjax.unit_analysis import (class_relevance, cluster_units, delta_p, label_changes,
                                   min_area_for, normalise_vectors, part_names, sparsity,
                                   strongest_label, tsne_embedding, unit_vectors)


def _save(fig, path) -> None:
  figures.save(fig, path, dpi=120, bbox_inches="tight")


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
    {'vectors': [U, L, M], 'sparsity': ..., 'strongest': [U], 'tsne': [U, 2] or None,
     'clusters': ... or None}.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
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
  fig, axes = figures.subplots(1, cols, figsize=(3 * cols, 2.6), squeeze=False, sharey=True)
  bins = np.linspace(0, 1, 21)
  for i, title in enumerate([f"class {c}" for c in classes] + ["all samples"]):
    ax = axes[0, i]
    ax.hist(sp["overall"][i], bins=bins, color="C0")
    ax.axvline(float(np.median(sp["overall"][i])), color="k", ls="--", lw=1)
    ax.set_title(title)
    ax.set_xlabel(f"Hoyer sparsity ({n_l * len(quantify.METRICS)} metrics)")
  axes[0, 0].set_ylabel("units")
  _save(fig, out / "sparsity_hist.png")

  emb = None
  if units.size >= 3:
    emb = tsne_embedding(x, seed=seed, perplexity=perplexity)
    fig, ax = figures.subplots(figsize=(5.5, 4.5))
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
    fig, (ax_d, ax_h) = figures.subplots(2, 1, figsize=(9, 7), height_ratios=(1, 3))
    hierarchy.dendrogram(clusters["linkage"], ax=ax_d, no_labels=True, color_threshold=None)
    ax_d.set_yticks([])
    heat = x[clusters["order"]].T  # [L * M, U]
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
  files.write_csv(out / "units.csv", header, rows)
  files.write_csv(out / "label_vectors.csv",
                  ["unit"] + [f"{n}_{m}" for n in label_names for m in quantify.METRIC_NAMES],
                  [[int(u), *vectors[i].reshape(-1)] for i, u in enumerate(units)])
  return {"vectors": vectors, "sparsity": sp, "strongest": strongest, "tsne": emb,
          "clusters": clusters}


def plot_strips(sweep_dir: str | os.PathLike, sweep: Mapping[str, np.ndarray],
                out_dir: str | os.PathLike, *, label_names: Sequence[str],
                min_area: float = 20.0) -> list[pathlib.Path]:
  """Fig. 4-style figures for every unit with saved strips (`sweep.save_strips`).

  Each figure: the strip (rows: samples, columns: sweep values) and the unit's median |change|
  of the area, luminance and entropy of every label.

  Returns:
    the written PNG paths (strip_unit_UUUU.png).
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  units = list(np.asarray(sweep["units"]).tolist())
  vectors = unit_vectors(label_changes(sweep["metrics"], min_area))
  written = []
  for path in sorted((pathlib.Path(sweep_dir) / "strips").glob("unit_*.npz")):
    strip = files.read_npz(path)
    images, values = strip["images"], strip["values"]
    u = int(path.stem.split("_")[1])
    rows, steps = images.shape[:2]
    fig = figures.figure(figsize=(1.3 * steps + 4, 1.3 * rows + 0.6))
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
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  units = np.asarray(sweep["units"])
  classes = [int(c) for c in sweep["classes"]]
  dp = delta_p(sweep, mode)
  rel = class_relevance(dp, sweep["class_idx"], classes, threshold)
  mean, relevant = rel["mean"], rel["relevant"]
  n_c = len(classes)

  fig, axes = figures.subplots(1, n_c, figsize=(3 * n_c, 2.6), squeeze=False, sharey=True)
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
  fig, axes = figures.subplots(1, 3, figsize=(14, 4), width_ratios=(1, 1.2, 2))
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

  fig, ax = figures.subplots(figsize=(4.5, 3.8))
  im = ax.imshow(rel["corr"], cmap="RdBu_r", vmin=-1, vmax=1)
  ax.set_xticks(range(n_c))
  ax.set_xticklabels(classes)
  ax.set_yticks(range(n_c))
  ax.set_yticklabels(classes)
  ax.set_title("correlation of per-unit Δp")
  fig.colorbar(im, ax=ax)
  _save(fig, out / "correlation.png")

  files.write_csv(out / "delta_p.csv", ["unit"] + [f"class{c}" for c in classes],
            [[int(u), *mean[:, i]] for i, u in enumerate(units)])
  files.write_csv(out / "relevant_units.csv", ["class", "n_relevant", "units"],
            [[c, int(rel["counts"][i]), " ".join(str(int(u)) for u in units[relevant[i]])]
             for i, c in enumerate(classes)])
  files.write_csv(out / "shared_units.csv", ["class"] + [str(c) for c in classes],
            [[c, *rel["shared"][i]] for i, c in enumerate(classes)])
  files.write_csv(out / "correlation.csv", ["class"] + [str(c) for c in classes],
            [[c, *rel["corr"][i]] for i, c in enumerate(classes)])
  files.write_csv(out / "intersections.csv", ["classes", "n_units"],
            [[" ".join(map(str, combo)), n] for combo, n in rel["intersections"]])
  return {**rel, "dp": dp}


# ---------------------------------------------------------------------------------- drivers


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnitsConfig:
  """Settings of the Figs. 4/5 summary (flags of experiments/unit_summary.py).

  Attributes:
    min_area: labels with a smaller mean area (px) over the steps count as unchanged; None: the
      reference's 20 px at 128 x 128 scaled to the sweep's mask resolution.
    n_clusters: clusters cut from the Ward tree.
    seed: t-SNE random_state.
    perplexity: t-SNE perplexity (capped at (U - 1) / 3).
  """
  min_area: float | None = None
  n_clusters: int = 8
  seed: int = 0
  perplexity: float = 30.0


def run_units(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike,
              config: UnitsConfig = UnitsConfig()) -> dict[str, Any]:
  """Figs. 4/5 from a sweep directory: `summarize_units` and `plot_strips`; returns a summary.

  Returns:
    {'median_sparsity_all', 'median_sparsity_per_class', 'strongest_label_counts', 'strips'
     (figure file names), 'min_area', 'label_names'}.
  """
  arrays = sweep_lib.load(sweep_dir)
  names = part_names(arrays)
  area = min_area_for(int(arrays.get("mask_resolution", 0)), config.min_area)
  res = summarize_units(arrays, out_dir, label_names=names, min_area=area,
                        n_clusters=config.n_clusters, seed=config.seed,
                        perplexity=config.perplexity)
  strips = plot_strips(sweep_dir, arrays, out_dir, label_names=names, min_area=area)
  sp = res["sparsity"]["overall"]
  strongest = res["strongest"]
  counts = {n: int(np.sum(strongest == i)) for i, n in enumerate(names)}
  counts["none"] = int(np.sum(strongest < 0))
  return {"median_sparsity_all": float(np.median(sp[-1])),
          "median_sparsity_per_class": [float(np.median(x)) for x in sp[:-1]],
          "strongest_label_counts": counts, "strips": [p.name for p in strips],
          "min_area": area, "label_names": names}


def run_relevance(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  threshold: float = 0.15, mode: str = "max_drop") -> dict[str, Any]:
  """Fig. 6 from a sweep directory (`relevance_report`); returns a JSON-able summary."""
  arrays = sweep_lib.load(sweep_dir)
  rel = relevance_report(arrays, out_dir, threshold=threshold, mode=mode)
  return {"threshold": threshold, "mode": mode,
          "relevant_per_class": {str(int(c)): int(n)
                                 for c, n in zip(arrays["classes"], rel["counts"])},
          "relevant_any_class": int(np.any(rel["relevant"], axis=0).sum()),
          "n_units": int(len(arrays["units"])), "shared": rel["shared"].tolist(),
          "intersections": [[list(k), n] for k, n in rel["intersections"][:10]]}
