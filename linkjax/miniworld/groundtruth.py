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

import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linkjax import preprocess, quantify
from linkjax import miniworld as world
from linkjax.models import segmenter as seg_lib
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


def true_render(z: Any, class_idx: Any) -> tuple[jax.Array, jax.Array]:
  """The render the generator reproduces for (z, class): images [B, 64, 64, 3] in [0, 1], masks."""
  eps = ops.normalize_2nd_moment(jnp.asarray(z, jnp.float32))
  return world.render(world.theta_from_noise(eps, jnp.asarray(class_idx, jnp.int32)))


def generate_and_segment(generator: nnx.Module, segmenter: nnx.Module | None, z: np.ndarray,
                         class_idx: np.ndarray, *, psi: float = 1.0, batch: int = 50,
                         classifier: nnx.Module | None = None,
                         with_truth: bool = True) -> dict[str, np.ndarray]:
  """Generates images for (z, class), segments and classifies them, and renders the truth.

  Args:
    generator: StyleGAN-XL (mapping + synthesis).
    segmenter: few-shot segmenter on the generator's features, or None.
    z: [N, z_dim]; class_idx: [N] int.
    psi: truncation of the generated images (the truth is only exact at psi 1).
    batch: samples per compiled call (the last batch is padded; one compilation).
    classifier: optional ResNet; adds 'pred' [N] on the generated uint8 images.
    with_truth: also render the true images and masks (built-in world only).
  Returns:
    dict of numpy arrays: 'ws' [N, num_ws, w_dim], 'images' [N, H, W, 3] uint8 (generated),
    'masks' [N, R, R] int32 (segmenter), 'true_images' [N, 64, 64, 3] float32 in [0, 1],
    'true_masks' [N, 64, 64] int32, 'pred' [N] int32 -- each only when available.
  """
  g_def, g_state = nnx.split(generator)
  s_def, s_state = nnx.split(segmenter) if segmenter is not None else (None, None)
  c_def, c_state = nnx.split(classifier) if classifier is not None else (None, None)
  psi = float(psi)

  @jax.jit
  def run(g_state, s_state, c_state, z, c):
    g = nnx.merge(g_def, g_state)
    ws = g.mapping(z, c, psi=psi)
    img, feats = g.synthesis(ws, return_features=True)
    u8 = preprocess.to_uint8(img)
    out = {"ws": ws, "images": u8}
    if s_def is not None:
      seg = nnx.merge(s_def, s_state)
      out["masks"] = seg_lib.predict_masks(seg, seg_lib.select_features(
          feats, seg.config.feature_layers))
    if c_def is not None:
      clf = nnx.merge(c_def, c_state)
      logits, _ = clf(preprocess.classifier_input(u8, resize=clf.config.resize,
                                                  crop=clf.config.crop))
      out["pred"] = jnp.argmax(logits, -1).astype(jnp.int32)
    if with_truth:
      out["true_images"], out["true_masks"] = true_render(z, c)
    return out

  z = np.asarray(z, np.float32)
  class_idx = np.asarray(class_idx, np.int32)
  n = z.shape[0]
  batch = min(batch, n)
  parts: dict[str, list[np.ndarray]] = {}
  for a in range(0, n, batch):
    zb, cb = z[a:a + batch], class_idx[a:a + batch]
    m = zb.shape[0]
    if m < batch:
      zb = np.concatenate([zb, np.repeat(zb[-1:], batch - m, 0)])
      cb = np.concatenate([cb, np.repeat(cb[-1:], batch - m, 0)])
    out = jax.device_get(run(g_state, s_state, c_state, jnp.asarray(zb), jnp.asarray(cb)))
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v)[:m])
  return {k: np.concatenate(v) for k, v in parts.items()}


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
    true = seg_lib.resize_masks(true, pred.shape[-1])
  out = np.full(n_labels, np.nan)
  for lab in range(n_labels):
    p, t = pred == lab, true == lab
    union = np.logical_or(p, t).sum()
    if union:
      out[lab] = np.logical_and(p, t).sum() / union
  return out


def _metrics(images01: np.ndarray, masks: np.ndarray, n_labels: int, batch: int) -> np.ndarray:
  out = []
  fn = jax.jit(lambda im, m: quantify.part_metrics(im, m, n_labels=n_labels))
  for a in range(0, len(images01), batch):
    im, m = images01[a:a + batch], masks[a:a + batch]
    k = im.shape[0]
    if k < batch:  # one compiled shape
      im = np.concatenate([im, np.repeat(im[-1:], batch - k, 0)])
      m = np.concatenate([m, np.repeat(m[-1:], batch - k, 0)])
    out.append(np.asarray(fn(jnp.asarray(im, jnp.float32), jnp.asarray(m, jnp.int32)))[:k])
  return np.concatenate(out)


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
    true_m = seg_lib.resize_masks(true_m, res)
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
    if sel.sum() < 3:
      continue
    for j in range(measured.shape[2]):
      a, b = measured[sel, lab, j].astype(np.float64), true[sel, lab, j].astype(np.float64)
      if np.std(a) > 0 and np.std(b) > 0:
        r[lab, j] = float(np.corrcoef(a, b)[0, 1])
  return {"r": r, "n": valid.sum(axis=0)}


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
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  corr = metric_correlations(measured, true, min_area)
  n_l = measured.shape[1]
  rows = len(metrics)
  fig, axes = plt.subplots(rows, n_l, figsize=(1.9 * n_l, 1.9 * rows + 0.3), squeeze=False)
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
  fig.savefig(path, dpi=100)
  plt.close(fig)
