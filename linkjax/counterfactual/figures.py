"""Figures and tables of counterfactual paths (paper Fig. 7)."""

from __future__ import annotations

import pathlib

import numpy as np

from linkjax import figures, files, motion, motion_figures, quantify
from linkjax.counterfactual.path import PairAnalysis


def _class_colour(c: int, orig: int, target: int) -> str:
  return {orig: "tab:blue", target: "tab:orange"}.get(int(c), "tab:grey")


def plot_frames(path: pathlib.Path, a: PairAnalysis, orig: int, target: int) -> None:
  """Original image plus the path frames; inset = target probability, frame colour = predicted class."""
  n = len(a.frames) + 1
  fig, axes = figures.subplots(1, n, figsize=(1.8 * n, 2.2))
  items = [(a.ref_image, a.ref_pred, None, "original f(r)")]
  for j, i in enumerate(a.frames):
    tag = "boundary" if i == a.boundary else ("before" if i == a.boundary - 1 else "")
    if a.boundary == 0 and i == 0:
      tag = "boundary (original = before)"
    items.append((a.frame_images[j], int(a.pred[i]), float(a.probs[i, target]),
                  f"step {int(a.steps[i])}" + (f"\n{tag}" if tag else "")))
  for ax, (img, pred, p_t, title) in zip(np.atleast_1d(axes), items):
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
      side.set_edgecolor(_class_colour(pred, orig, target))
      side.set_linewidth(4)
    if p_t is not None:
      ax.text(0.03, 0.03, f"p={p_t:.2f}", transform=ax.transAxes, fontsize=8, color="white",
              bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))
    ax.set_title(title, fontsize=8)
  fig.suptitle(f"{orig} -> {target} (frame colour: blue = {orig}, orange = {target}, grey = other)",
               fontsize=9)
  fig.tight_layout()
  figures.save(fig, path)


def plot_probability(path: pathlib.Path, a: PairAnalysis, orig: int, target: int) -> None:
  """Probabilities of the original and target class along the path, boundary marked."""
  fig, ax = figures.subplots(figsize=(5, 3))
  ax.plot(a.steps, a.probs[:, target], color="tab:orange", label=f"p(target={target})")
  ax.plot(a.steps, a.probs[:, orig], color="tab:blue", label=f"p(orig={orig})")
  if a.boundary > 0:
    ax.axvline(a.steps[a.boundary], color="k", ls="--", lw=1, label="decision boundary")
  ax.set_xlabel("step")
  ax.set_ylabel("probability")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  fig.tight_layout()
  figures.save(fig, path)


def plot_metrics(path: pathlib.Path, a: PairAnalysis, label_names: tuple[str, ...] = ()) -> None:
  """Image distances and (if available) part metrics along the path, boundary marked."""
  panels = [(k, v) for k, v in a.distances.items()]
  if a.part_metrics is not None:
    panels += [(m, a.part_metrics[:, :, j]) for j, m in enumerate(quantify.METRIC_NAMES)]
  fig, axes = figures.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
  for ax, (name, v) in zip(axes[0], panels):
    if v.ndim == 1:
      ax.plot(a.steps, v, color="k")
      ax.set_title(f"{name} to original", fontsize=9)
    else:
      for l in range(v.shape[1]):
        lab = label_names[l + 1] if len(label_names) == v.shape[1] + 1 else f"part {l + 1}"
        ax.plot(a.steps, v[:, l], lw=1, label=lab)
      ax.set_title(f"{name} ({'ratio' if name == 'area' else 'difference'} to original)", fontsize=9)
    if a.boundary > 0:
      ax.axvline(a.steps[a.boundary], color="k", ls="--", lw=1)
    ax.set_xlabel("step")
  if a.part_metrics is not None:
    axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  figures.save(fig, path)


def plot_grad_cam(path: pathlib.Path, views: np.ndarray, cams: np.ndarray, titles: list[str]) -> None:
  """Grad-CAM panels: each classifier view with its class activation map overlaid."""
  n = len(titles)
  fig, axes = figures.subplots(1, n, figsize=(2.4 * n, 2.6))
  for ax, v, c, t in zip(np.atleast_1d(axes), views, cams, titles):
    ax.imshow(v)
    ax.imshow(c, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(t, fontsize=8)
    ax.axis("off")
  fig.tight_layout()
  figures.save(fig, path)


def write_pair_csv(path: pathlib.Path, a: PairAnalysis, orig: int, target: int,
                   label_names: tuple[str, ...] = ()) -> None:
  """One row per analysed step: prediction, probabilities, distances, relative part metrics."""
  header = ["step", "pred", "prob_orig", "prob_target", "is_boundary"] + list(a.distances)
  if a.part_metrics is not None:
    n_parts = a.part_metrics.shape[1]
    names = (list(label_names[1:]) if len(label_names) == n_parts + 1
             else [f"part{l + 1}" for l in range(n_parts)])
    header += [f"{p}_{m}" for p in names for m in quantify.METRIC_NAMES]
  rows = []
  for t, s in enumerate(a.steps):
    row = [int(s), int(a.pred[t]), float(a.probs[t, orig]), float(a.probs[t, target]),
           int(t == a.boundary)] + [float(v[t]) for v in a.distances.values()]
    if a.part_metrics is not None:
      row += [float(x) for x in a.part_metrics[t].reshape(-1)]
    rows.append(row)
  files.write_csv(path, header, rows)


def read_pair_csv(path: pathlib.Path, part_names: tuple[str, ...]) -> tuple[np.ndarray, int]:
  """A `write_pair_csv` table -> (relative part metrics [T, L, M], boundary row or -1).

  Columns are found by name (`{part}_{metric}` for the L `part_names`, background excluded, and
  `is_boundary`); a missing column is a ValueError naming it.
  """
  text = pathlib.Path(path).read_text().splitlines()
  if not text:
    raise ValueError(f"{path}: empty pair table")
  header = text[0].split(",")
  want = [f"{p}_{m}" for p in part_names for m in quantify.METRIC_NAMES] + ["is_boundary"]
  missing = [c for c in want if c not in header]
  if missing:
    raise ValueError(f"{path}: no column(s) {missing[:3]}{'...' if len(missing) > 3 else ''}")
  rows = [r.split(",") for r in text[1:] if r]
  if any(len(r) != len(header) for r in rows):
    raise ValueError(f"{path}: rows of a different length than the header")
  cols = [header.index(c) for c in want[:-1]]
  vals = np.array([[float(r[c]) if r[c] != "" else np.nan for c in cols] for r in rows],
                  np.float64).reshape(len(rows), len(part_names), len(quantify.METRIC_NAMES))
  b_col = header.index("is_boundary")
  flags = [int(r[b_col]) for r in rows]
  return vals, (flags.index(1) if 1 in flags else -1)


def plot_boundary_flow(path: pathlib.Path, a: PairAnalysis, m: dict[str, np.ndarray],
                       orig: int, target: int) -> None:
  """The frames around the decision boundary and the motion between them
  (`path.boundary_motion`): before, first flipped frame, local flow before -> flipped (on the
  frame before), local flow original -> flipped (on the original); titles give the global affine."""
  b = a.boundary
  size = m["after"].shape[0]
  step = max(2, size // 16)
  fig, axes = figures.subplots(1, 4, figsize=(8.4, 2.5))
  names = motion.AFFINE_PARAM_NAMES
  for ax, img, title in ((axes[0], m["before"], "original f(r)" if b == 0 else
                          f"step {int(a.steps[b - 1])}: before"),
                         (axes[1], m["after"], f"step {int(a.steps[b])}: first flipped")):
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
  for j, (ax, img, what) in enumerate(((axes[2], m["before"], "before -> flipped"),
                                       (axes[3], m["original"], "original -> flipped"))):
    p = dict(zip(names, m["affine_params"][j].tolist()))
    motion_figures.plot_flow(ax, img, m["flow"][j], m["confidence"][j], step=step, margin=step,
                             min_percentile=0.0, min_norm=0.1)
    ax.set_title(f"{what}\ns {0.5 * (p['scale_x'] + p['scale_y']):.2f} rot "
                 f"{p['rotation_deg']:.1f}° t ({p['tx']:.1f}, {p['ty']:.1f})", fontsize=7)
  fig.suptitle(f"{orig} -> {target}: motion across the decision boundary (local flow after the "
               "global affine; arrow colour = direction, brightness = length)", fontsize=8)
  fig.tight_layout()
  figures.save(fig, path)
