"""Drawing motion fields: arrows over an image, coloured by direction on an HSV wheel.

The reference (`motion_visualization.py`, see REFERENCE_NOTES "Motion fields") draws each
(dx, dy) as an arrow whose hue is its direction and whose value (brightness) is its
magnitude, cuts small motions at a percentile, leaves a border margin and keeps every k-th
vector. `plot_flow` does the same with `linkjax.figures` (no pyplot), optionally over an HSV
image of the whole field, and leaves out low-confidence vectors.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib import colors as mcolors

from linkjax import figures


def flow_to_hsv(flow: np.ndarray, max_norm: float | None = None,
                min_value: float = 0.0) -> np.ndarray:
  """Direction as hue, magnitude as value, full saturation.

  Args:
    flow: [..., 2] (dx, dy), y pointing down.
    max_norm: magnitude shown at full brightness (default: the field's maximum).
    min_value: value of a zero vector (value = min_value + (1 - min_value) |f| / max_norm).
  Returns:
    [..., 3] RGB in [0, 1]; hue 0 (red) points right (+x), hue 1/4 (yellow-green) down (+y),
    as drawn on screen.
  """
  flow = np.asarray(flow, np.float64)
  norm = np.hypot(flow[..., 0], flow[..., 1])
  top = float(max_norm) if max_norm else float(norm.max())
  hue = (np.arctan2(flow[..., 1], flow[..., 0]) / (2 * np.pi)) % 1.0
  value = np.clip(norm / top, 0.0, 1.0) if top > 0 else np.zeros_like(norm)
  value = min_value + (1.0 - min_value) * value
  return mcolors.hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], -1))


def select_vectors(flow: np.ndarray, confidence: np.ndarray | None = None, *, step: int = 4,
                   margin: int = 4, min_percentile: float = 50.0, min_norm: float = 0.25,
                   min_confidence: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
  """Which vectors to draw: every `step`-th pixel inside the margin, above the cuts.

  Args:
    flow: [H, W, 2].
    confidence: optional [H, W] in [0, 1]; pixels below `min_confidence` are dropped.
    step: keep every step-th row and column.
    margin: pixels left out along each border.
    min_percentile: drop vectors shorter than this percentile of the kept magnitudes (the
      reference's cut of small motions; 0 keeps all).
    min_norm: and those shorter than this (pixels).
    min_confidence: see confidence.
  Returns:
    (ys [N], xs [N]) integer pixel positions.
  """
  h, w = flow.shape[:2]
  yy, xx = np.mgrid[margin:h - margin:step, margin:w - margin:step]
  ys, xs = yy.ravel(), xx.ravel()
  norm = np.hypot(flow[ys, xs, 0], flow[ys, xs, 1])
  keep = norm >= min_norm
  if confidence is not None:
    keep &= np.asarray(confidence)[ys, xs] >= min_confidence
  if min_percentile > 0 and keep.any():
    keep &= norm >= np.percentile(norm[keep], min_percentile)
  return ys[keep], xs[keep]


def plot_flow(path_or_ax: str | os.PathLike | Any, image: Any, flow: Any,
              confidence: Any = None, *, step: int = 4, margin: int = 4,
              min_percentile: float = 50.0, min_norm: float = 0.25,
              min_confidence: float = 0.25, scale: float = 1.0, overlay: float = 0.0,
              max_norm: float | None = None, title: str | None = None,
              width: float = 0.006) -> Any:
  """Arrows of a flow field over an image, coloured on an HSV wheel (hue = direction,
  value = magnitude).

  Args:
    path_or_ax: a PNG path (a figure is made and written) or a matplotlib Axes to draw in.
    image: [H, W, 3] in [0, 1] (float) or uint8: the image the flow starts from (I_o).
    flow: [H, W, 2] (dx, dy) in pixels (e.g. `MotionResult.flow[i]`).
    confidence: optional [H, W] in [0, 1].
    step, margin, min_percentile, min_norm, min_confidence: which vectors (`select_vectors`).
    scale: arrow length per pixel of displacement (1: arrows end where the pixel moves).
    overlay: opacity of the whole field's HSV image over the picture (0: none).
    max_norm: magnitude at full brightness (default: the largest drawn vector).
    title: optional axes title.
    width: arrow shaft width (fraction of the axes width).
  Returns:
    the Axes drawn in.
  """
  img = np.asarray(image)
  img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
  flow = np.asarray(flow, np.float64)
  conf = None if confidence is None else np.asarray(confidence, np.float64)
  if flow.shape[:2] != img.shape[:2] or flow.shape[-1] != 2:
    raise ValueError(f"flow {flow.shape} does not fit image {img.shape}")
  fig = None
  if isinstance(path_or_ax, (str, os.PathLike)):
    fig, ax = figures.subplots(figsize=(4, 4))
  else:
    ax = path_or_ax
  ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
  ys, xs = select_vectors(flow, conf, step=step, margin=margin, min_percentile=min_percentile,
                          min_norm=min_norm, min_confidence=min_confidence)
  norm = np.hypot(flow[..., 0], flow[..., 1])
  top = max_norm or (float(norm[ys, xs].max()) if len(ys) else float(norm.max()) or 1.0)
  if overlay > 0:
    ax.imshow(flow_to_hsv(flow, top), alpha=overlay, interpolation="nearest")
  if len(ys):
    # A floor on the value keeps the shortest drawn arrows visible.
    cols = flow_to_hsv(flow[ys, xs], top, min_value=0.3)
    ax.quiver(xs, ys, flow[ys, xs, 0] * scale, flow[ys, xs, 1] * scale, color=cols,
              angles="xy", scale_units="xy", scale=1.0, width=width, headwidth=4,
              headlength=4, headaxislength=3.5, edgecolor="k", linewidth=0.3)
  ax.set_xlim(-0.5, img.shape[1] - 0.5)
  ax.set_ylim(img.shape[0] - 0.5, -0.5)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8)
  if fig is not None:
    fig.tight_layout()
    figures.save(fig, path_or_ax, dpi=120)
  return ax


def hsv_wheel(ax: Any, size: int = 64) -> Any:
  """A colour key for `flow_to_hsv`: the direction/magnitude wheel in an Axes."""
  yy, xx = np.mgrid[:size, :size]
  c = (size - 1) / 2.0
  f = np.stack([(xx - c) / c, (yy - c) / c], -1)
  rgb = flow_to_hsv(f, 1.0)
  rgb[np.hypot(f[..., 0], f[..., 1]) > 1.0] = 1.0
  ax.imshow(rgb, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  return ax
