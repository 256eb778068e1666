"""Part-level image metrics, their change along a unit sweep, and Hoyer label sparsity.

Pure JAX, batched over images, jit- and vmap-friendly (all shapes static). The definitions follow
the reference analysis (see shared/REFERENCE_NOTES.md, "Part metrics"), with one documented
replacement: the reference fitted an ellipse to each external contour with OpenCV `fitEllipse`;
here eccentricity and angle come from the mask's second-order central moments, with
scikit-image `regionprops` conventions (one region per label, all its pixels together).

Metrics (`METRICS`, in the order of the last axis of `part_metrics`):
  area        pixel count of the label.
  luminance   mean of 0.299 R + 0.587 G + 0.114 B inside the mask, 0-1 scale.
  entropy     mean inside the mask of the local Shannon entropy (bits) of
              `img_as_ubyte(rgb2gray(img))` over a disk of radius 5, counting only in-image
              pixels (= `skimage.filters.rank.entropy(..., disk(5))`).
  eccentricity sqrt(1 - l2 / l1) of the inertia tensor's eigenvalues l1 >= l2 (0 if l1 == 0).
  angle       regionprops `orientation` in DEGREES: angle between the image's row axis (axis 0)
              and the major axis, in [-90, 90].
Empty labels (area 0) get area 0 and NaN for the four other metrics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as in the reference's luminance
_GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray weights, as in the reference's entropy
_N_GREY = 256
ENTROPY_RADIUS = 5  # disk radius of the local entropy, as the reference's disk(5)

# The reference's dog part labels (label 0 is the background), also the miniworld's.
DOG_LABELS: tuple[str, ...] = ("background", "leg", "body", "tail", "tongue", "eye", "nose",
                               "snout", "ear", "head")


def disk_half_widths(radius: int) -> tuple[int, ...]:
  """Half-widths of skimage's `disk(radius)` rows (x^2 + y^2 <= r^2), for dy = -r..r."""
  return tuple(math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1))


def to_grey_uint8(images: jax.Array) -> jax.Array:
  """`img_as_ubyte(rgb2gray(img))` in JAX.

  Args:
    images: [..., H, W, 3] float in [0, 1].
  Returns:
    [..., H, W] int32 grey levels in 0..255 (round half to even, like skimage).
  """
  grey = images.astype(jnp.float32) @ jnp.asarray(_GRAY, jnp.float32)
  return jnp.clip(jnp.rint(grey * jnp.float32(255.0)), 0, 255).astype(jnp.int32)


def _disk_counts(x: np.ndarray | jax.Array, radius: int) -> np.ndarray | jax.Array:
  """Sums of `x` ([..., H + 2r, W + 2r], zero-padded by r) over disk(r): [..., H, W].

  The disk is a union of horizontal runs, one per row offset dy, of half-width hw(dy). Runs are
  built from a doubling ladder along x (p_1 = x, p_2m[i] = p_m[i] + p_m[i + m]), each width
  2hw + 1 a sum of its binary digits' ladder entries; then one shifted run per row is added.
  About 2r + log2(r) + popcounts additions per output, all on whole planes.
  """
  r = radius
  h, w = x.shape[-2] - 2 * r, x.shape[-1] - 2 * r
  ladder = {1: x}
  m = 1
  while 2 * m <= 2 * r + 1:
    p = ladder[m]
    n = p.shape[-1] - m
    ladder[2 * m] = p[..., :n] + p[..., m:m + n]
    m *= 2
  runs = {}
  for hw in sorted(set(disk_half_widths(r))):
    width, start, acc = 2 * hw + 1, r - hw, None
    for bit in sorted(ladder, reverse=True):
      if width & bit:
        term = ladder[bit][..., start:start + w]
        acc = term if acc is None else acc + term
        start += bit
    runs[hw] = acc  # [..., H + 2r, W]: run of half-width hw centred on each column
  counts = None
  for i, hw in enumerate(disk_half_widths(r)):
    term = runs[hw][..., i:i + h, :]  # padded row y + dy, dy = i - r
    counts = term if counts is None else counts + term
  return counts


def _disk_pixel_counts(h: int, w: int, radius: int) -> np.ndarray:
  """Number of in-image pixels of disk(radius) around every pixel of an H x W image: [H, W]."""
  inside = np.pad(np.ones((h, w), np.int64), radius)
  return _disk_counts(inside, radius).astype(np.int64)


# Entropy levels handled per step of the loop over grey levels (see `local_entropy`).
_LEVEL_BLOCK = 8


def local_entropy(grey: jax.Array, radius: int = 5) -> jax.Array:
  """Local Shannon entropy (bits) over a disk; equals skimage.filters.rank.entropy.

  Entropy = log2(N) - sum_v c_v log2(c_v) / N, with c_v the count of grey level v in the disk
  around a pixel and N = sum_v c_v the number of in-image pixels of the disk (skimage's rank
  filters count only in-image pixels), which depends on the position only and is a constant.
  The counts come from a one-hot encoding of the levels, padded with all-zero vectors outside
  the image, summed over the disk's horizontal runs (`_disk_counts`) in uint8 (counts <= |disk|
  = 81 for r = 5 < 256, exact). Levels are processed in a loop over blocks of `_LEVEL_BLOCK`
  levels, accumulating sum_v c_v log2(c_v) in float32: the block's [..., 8, H + 2r, W + 2r]
  temporaries stay in cache for a batch of images, where the [..., 256, H, W] arrays of all
  levels at once did not, and the loop keeps any leading batch axis a parallel (shardable) axis.
  The block's sum over levels is taken as two halves: with a single reduction, XLA:CPU fuses the
  whole add tree of `_disk_counts` into the reduction, which then runs ~5x slower.

  Args:
    grey: [..., H, W] int32 grey levels in 0..255.
    radius: disk radius in pixels (needs |disk| <= 255, i.e. r <= 8).
  Returns:
    [..., H, W] float32 entropy in bits.
  """
  if sum(2 * hw + 1 for hw in disk_half_widths(radius)) > 255:
    raise ValueError(f"radius {radius} too large for uint8 neighbourhood counts")
  *batch, h, w = grey.shape
  r = radius
  pad = [(0, 0)] * len(batch) + [(r, r), (r, r)]
  padded = jnp.pad(grey.astype(jnp.int32), pad, constant_values=-1)[..., None, :, :]
  block = _LEVEL_BLOCK

  def f_sum(c):
    c = c.astype(jnp.float32)
    return jnp.sum(c * jnp.log2(jnp.maximum(c, 1.0)), axis=-3)

  def body(i, acc):
    levels = (i * block + jnp.arange(block, dtype=jnp.int32))[:, None, None]
    counts = _disk_counts((padded == levels).astype(jnp.uint8), r)  # [..., block, H, W]
    half = block // 2
    return acc + (f_sum(counts[..., :half, :, :]) + f_sum(counts[..., half:, :, :]))

  c_log_c = lax.fori_loop(0, _N_GREY // block, body, jnp.zeros((*batch, h, w), jnp.float32))
  n = _disk_pixel_counts(h, w, r)
  return jnp.asarray(np.log2(n), jnp.float32) - c_log_c / jnp.asarray(n, jnp.float32)


class PartMasks(NamedTuple):
  """One image and its per-label masks: what every metric is computed from.

  Attributes:
    image: [H, W, 3] float32 in [0, 1].
    masks: [L, H, W] float32 0/1 indicator of each reported label.
    area: [L] pixel counts.
  """
  image: jax.Array
  masks: jax.Array
  area: jax.Array

  def mean(self, x: jax.Array) -> jax.Array:
    """Mean of x ([H, W] or [L, H, W]) inside each label's mask: [L] (0 for empty labels)."""
    if x.ndim == 2:  # one contraction, without an [L, H, W] product
      total = jnp.einsum("lhw,hw->l", self.masks, x.astype(jnp.float32),
                         precision=lax.Precision.HIGHEST)
    else:
      total = jnp.sum(self.masks * x, axis=(1, 2))
    return total / jnp.where(self.area > 0, self.area, 1.0)


def _area(p: PartMasks) -> jax.Array:
  return p.area


def _luminance(p: PartMasks) -> jax.Array:
  return p.mean(p.image @ jnp.asarray(LUMA, jnp.float32))


def _entropy(p: PartMasks) -> jax.Array:
  return p.mean(local_entropy(to_grey_uint8(p.image), ENTROPY_RADIUS))


def _inertia(p: PartMasks) -> tuple[jax.Array, jax.Array, jax.Array]:
  """skimage's inertia tensor [[a, b], [b, c]] of each label: (a, b, c), each [L].

  Central moments from integer sums: per-row and per-column pixel counts of each mask (and the
  column-weighted row sums) are small integers, exact in float32; the coordinates are shifted
  by an integer point k near each label's centroid, so sum((r - k)^2) etc. are sums of integer
  products without the cancellation of raw moments, and the variance is
  sum((r - k)^2) / A - (sum(r - k) / A)^2 with |sum(r - k) / A| < 1. Only [L, H] and [L, W]
  arrays are formed besides the masks.
  """
  h, w = p.masks.shape[1:]
  rows = jnp.arange(h, dtype=jnp.float32)
  cols = jnp.arange(w, dtype=jnp.float32)
  row_count = jnp.sum(p.masks, axis=2)  # [L, H]
  col_count = jnp.sum(p.masks, axis=1)  # [L, W]
  row_csum = jnp.sum(p.masks * cols, axis=2)  # [L, H]: sum of column indices per row
  area = jnp.where(p.area > 0, p.area, 1.0)[:, None]
  k_r = jnp.floor(jnp.sum(row_count * rows, axis=1, keepdims=True) / area)
  k_c = jnp.floor(jnp.sum(col_count * cols, axis=1, keepdims=True) / area)
  dr, dc = rows - k_r, cols - k_c  # [L, H], [L, W] integers
  m_r = jnp.sum(dr * row_count, axis=1, keepdims=True) / area
  m_c = jnp.sum(dc * col_count, axis=1, keepdims=True) / area
  mu20 = jnp.sum(dr * dr * row_count, axis=1, keepdims=True) / area - m_r * m_r
  mu02 = jnp.sum(dc * dc * col_count, axis=1, keepdims=True) / area - m_c * m_c
  mu11 = (jnp.sum(dr * (row_csum - k_c * row_count), axis=1, keepdims=True) / area
          - m_r * m_c)
  return mu02[:, 0], -mu11[:, 0], mu20[:, 0]


def _eccentricity(p: PartMasks) -> jax.Array:
  a, b, c = _inertia(p)
  half_tr = 0.5 * (a + c)
  disc = jnp.sqrt(0.25 * (a - c) ** 2 + b * b)
  l1 = jnp.maximum(half_tr + disc, 0.0)
  l2 = jnp.maximum(half_tr - disc, 0.0)
  return jnp.where(l1 > 0, jnp.sqrt(jnp.clip(1.0 - l2 / jnp.where(l1 > 0, l1, 1.0), 0.0, 1.0)),
                   0.0)


def _angle(p: PartMasks) -> jax.Array:
  a, b, c = _inertia(p)
  # skimage tests `a - c == 0` exactly in float64; in float32 symmetric shapes give a - c at
  # rounding level, so equality (and the sign of b) is judged relative to the trace.
  tol = jnp.float32(1e-6) * (a + c)
  orient = jnp.where(jnp.abs(a - c) <= tol,
                     jnp.where(b < -tol, jnp.float32(np.pi / 4), jnp.float32(-np.pi / 4)),
                     0.5 * jnp.arctan2(-2.0 * b, c - a))
  return jnp.degrees(orient)


@dataclasses.dataclass(frozen=True)
class Metric:
  """A part metric: its per-label value and how a change of it is measured.

  Attributes:
    fn: PartMasks -> [L] float32.
    change: 'ratio' (relative to the start: area), 'difference', or 'axial' (a difference of
      orientations in degrees, wrapped to [-90, 90)).
  """
  fn: Callable[[PartMasks], jax.Array]
  change: str = "difference"


# The metrics, in the order of the last axis of every metrics array.
METRICS: dict[str, Metric] = {
    "area": Metric(_area, change="ratio"),
    "luminance": Metric(_luminance),
    "entropy": Metric(_entropy),
    "eccentricity": Metric(_eccentricity),
    "angle": Metric(_angle, change="axial"),
}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
AREA = METRIC_NAMES.index("area")


def _image_metrics(image: jax.Array, mask: jax.Array, labels: jax.Array) -> jax.Array:
  """Metrics of one image; image [H, W, 3], mask [H, W] int32, labels [L] -> [L, M]."""
  m = (mask[None, :, :] == labels[:, None, None]).astype(jnp.float32)  # [L, H, W]
  parts = PartMasks(image=image.astype(jnp.float32), masks=m, area=jnp.sum(m, axis=(1, 2)))
  values = jnp.stack([metric.fn(parts) for metric in METRICS.values()], axis=-1)
  # Empty labels: area 0, every other metric NaN.
  is_area = jnp.arange(len(METRICS)) == AREA
  return jnp.where((parts.area > 0)[:, None] | is_area[None, :], values, jnp.float32(jnp.nan))


def part_metrics(images: jax.Array, masks: jax.Array, n_labels: int = 10,
                 ignore_background: bool = True) -> jax.Array:
  """Every metric of `METRICS` for each label of each image.

  The ellipse comes from second-order central moments (scikit-image `regionprops`
  conventions), replacing the reference's OpenCV `fitEllipse` on contours.

  Args:
    images: [B, H, W, 3] float in [0, 1] (the paper uses 128x128).
    masks: [B, H, W] int32 label index per pixel.
    n_labels: number of labels including background 0.
    ignore_background: if True report labels 1..n_labels-1, else 0..n_labels-1.
  Returns:
    [B, L, M] float32 with L = n_labels - 1 (or n_labels), M = len(METRICS) in `METRIC_NAMES`
    order. Empty labels: area 0, other metrics NaN.
  """
  first = 1 if ignore_background else 0
  labels = jnp.arange(first, n_labels, dtype=jnp.int32)
  return jax.vmap(lambda im, m: _image_metrics(im, m.astype(jnp.int32), labels))(images, masks)


def relative_change(metrics: jax.Array, ref: jax.Array) -> jax.Array:
  """Change of each metric from `ref`, by its `Metric.change` rule.

  'ratio': metrics / max(ref, 1) - 1 (a part absent in `ref` is taken as 1 px so the value
  stays finite); 'difference': metrics - ref; 'axial': the difference wrapped to [-90, 90)
  degrees (orientations are axial: +90 and -90 are the same axis).

  Args:
    metrics: [..., M]; ref: broadcastable to it.
  Returns:
    [..., M] float32 (NaN where an endpoint is NaN).
  """
  metrics = metrics.astype(jnp.float32)
  ref = jnp.broadcast_to(ref.astype(jnp.float32), metrics.shape)
  cols = []
  for j, metric in enumerate(METRICS.values()):
    a, b = metrics[..., j], ref[..., j]
    if metric.change == "ratio":
      cols.append(a / jnp.maximum(b, 1.0) - 1.0)
    elif metric.change == "axial":
      cols.append(jnp.mod(a - b + 90.0, 180.0) - 90.0)
    else:
      cols.append(a - b)
  return jnp.stack(cols, axis=-1)


def sweep_changes(metrics: jax.Array, min_area: float = 20.0) -> jax.Array:
  """Change of each part metric from the first to the last sweep step (`relative_change`).

  A NaN endpoint (label empty at the first or last step) gives change 0. Labels whose mean area
  over the steps is below `min_area` px get all-zero changes.

  Args:
    metrics: [..., steps, L, M] from `part_metrics`.
    min_area: minimum mean area (px) for a label to count.
  Returns:
    [..., L, M] float32, finite.
  """
  metrics = metrics.astype(jnp.float32)
  delta = relative_change(metrics[..., -1, :, :], metrics[..., 0, :, :])
  delta = jnp.where(jnp.isnan(delta), 0.0, delta)
  big_enough = jnp.mean(metrics[..., AREA], axis=-2) >= min_area  # [..., L]
  return jnp.where(big_enough[..., None], delta, 0.0)


def hoyer(x: jax.Array, axis: int = -1) -> jax.Array:
  """Hoyer sparsity (sqrt(k) - |x|_1 / |x|_2) / (sqrt(k) - 1) along `axis`; 0 for x = 0.

  1 for a one-hot vector, 0 for a constant (non-zero) vector.

  Args:
    x: [..., k, ...] with k = x.shape[axis] >= 2.
    axis: the axis to reduce.
  Returns:
    x's shape without `axis`, float32.
  """
  k = x.shape[axis]
  if k < 2:
    raise ValueError(f"Hoyer sparsity needs at least 2 entries along axis {axis}, got {k}")
  x = x.astype(jnp.float32)
  l1 = jnp.sum(jnp.abs(x), axis=axis)
  l2 = jnp.sqrt(jnp.sum(x * x, axis=axis))
  sqrt_k = jnp.float32(math.sqrt(k))
  s = (sqrt_k - l1 / jnp.where(l2 > 0, l2, 1.0)) / (sqrt_k - 1.0)
  return jnp.where(l2 > 0, s, 0.0)


def label_sparsity(changes: jax.Array) -> dict[str, jax.Array]:
  """Hoyer sparsity of the median absolute change across samples.

  The median is taken over |change| (the size of a unit's effect on each label regardless of its
  direction in each sample). Note that the overall value mixes units (relative area, 0-1
  luminance, bits, eccentricity, degrees) exactly as the 45-vector is defined.

  Args:
    changes: [..., S, L, M] from `sweep_changes` for S samples.
  Returns:
    dict with 'per_metric' [..., M] (k = L labels per metric) and 'overall' [...] (k = M L).
  """
  med = jnp.median(jnp.abs(changes.astype(jnp.float32)), axis=-3)  # [..., L, M]
  return {
      "per_metric": hoyer(med, axis=-2),
      "overall": hoyer(med.reshape(*med.shape[:-2], -1), axis=-1),
  }
