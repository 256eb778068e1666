"""Planted units of the miniworld classifier: targets, their scaling, and how well units track them.

A classifier with planted units (`train_classifier.TrainConfig.planted`, for the planted-truth
validation, `linkjax.miniworld.validate`) has named units of R additionally trained to *encode one
renderer parameter each*, the other units free. The auxiliary loss is the MSE between r[:, unit]
(post-ReLU global-average-pooled features, so non-negative) and an affine map of the parameter's
z-score to r's typical range, `PLANTED_TARGET_MEAN + PLANTED_TARGET_STD * (value - mean) / std`,
where (mean, std) are the parameter's moments under the world's class-balanced distribution
(`planted_scale='world'`) or within the image's class (`'class'`; `param_moments`). The
parameter's value comes from the same theta that rendered the image, so the unit must read it off
the picture. With the world's moments a unit can meet most of its target by encoding the breed
(breeds differ in every parameter's mean): the first planted classifier did (within-breed r
0.06-0.54 on generated images, body luminance 0.83), and a sweep of such a unit may change the
breed rather than the part. Within-class z-scores have the same mean in every class, so only the
within-breed variation of the parameter pays. The whole loss is `cross_entropy + planted_weight *
mean_over_units(MSE)`; with no planted units the step is the plain classification step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from linkjax import miniworld as world
from linkjax import quantify

PLANTED_SCALES = ("world", "class")

# Parameters a unit can be planted with: every renderer parameter, plus the body colour's true
# luminance (ITU-R 601 luma of its flat RGB colour, which is what the part metric 'luminance'
# measures; body_val is its HSV value, which hue and saturation also modulate).
DERIVED_PARAMS = ("body_luminance",)
PLANTABLE = tuple(world.PARAM_NAMES) + DERIVED_PARAMS
# The planted units' target distribution: mean and std of r's typical large units (the shipped
# classifier's r has mean ~0.37 over units; its active units reach 1-2).
PLANTED_TARGET_MEAN = 0.75
PLANTED_TARGET_STD = 0.25
_MOMENT_SAMPLES = 20000
_MOMENT_SEED = 20240901  # a fixed stream, disjoint from every training seed's fold_in streams


def parse_planted(spec: str) -> tuple[tuple[int, str], ...]:
  """'40:ear_len,120:tail_len' -> ((40, 'ear_len'), (120, 'tail_len')); '' -> ()."""
  out = []
  for item in (x.strip() for x in spec.split(",")):
    if not item:
      continue
    unit, sep, name = item.partition(":")
    if not sep or not unit.strip().isdigit():
      raise ValueError(f"planted entries are UNIT:PARAM, got {item!r}")
    out.append((int(unit), name.strip()))
  return tuple(out)


def param_values(theta: jax.Array, names: tuple[str, ...]) -> jax.Array:
  """Physical values of named (plantable) parameters.

  Args:
    theta: [B, THETA_DIM] in [-1, 1].
    names: K names from `PLANTABLE`.
  Returns:
    [B, K] float32 (lengths in pixels, colours in [0, 1], ...).
  """
  phys = world.physical(theta)
  cols = []
  for name in names:
    if name == "body_luminance":
      body = world.part_colours(theta)[..., world.PART_NAMES.index("body") - 1, :]
      cols.append(body @ jnp.asarray(quantify.LUMA, jnp.float32))
    else:
      cols.append(phys[name])
  return jnp.stack(cols, axis=-1).astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def param_moments(names: tuple[str, ...], per_class: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of each parameter under the world's distribution.

  Estimated once from `_MOMENT_SAMPLES` class-balanced draws of a fixed PRNG stream, so they are
  constants of the world (the same in training, evaluation and the validation).

  Args:
    names: K names from `PLANTABLE`.
    per_class: moments within each class instead of over the class-balanced mixture.
  Returns:
    (mean, std): [K] float32, or [NUM_CLASSES, K] with `per_class`.
  """
  n = _MOMENT_SAMPLES
  # Constants of the world: evaluated eagerly even when first asked for inside a jitted step.
  with jax.ensure_compile_time_eval():
    labels = jnp.arange(n, dtype=jnp.int32) % world.NUM_CLASSES
    theta = world.sample_theta(jax.random.key(_MOMENT_SEED), labels)
    v = np.asarray(param_values(theta, names), np.float64)
  if not per_class:
    return v.mean(axis=0).astype(np.float32), v.std(axis=0).astype(np.float32)
  labels = np.asarray(labels)
  mean = np.stack([v[labels == c].mean(axis=0) for c in range(world.NUM_CLASSES)])
  std = np.stack([v[labels == c].std(axis=0) for c in range(world.NUM_CLASSES)])
  if not np.all(std > 0):
    bad = sorted({names[k] for k in np.argwhere(~(std > 0))[:, 1]})
    raise ValueError(f"parameters {bad} do not vary within every class; plant them with "
                     "planted_scale='world'")
  return mean.astype(np.float32), std.astype(np.float32)


def planted_targets(theta: jax.Array, names: tuple[str, ...], class_idx: jax.Array | None = None,
                    scale: str = "world") -> jax.Array:
  """The planted units' regression targets (see the module docstring).

  Args:
    theta: [B, THETA_DIM] in [-1, 1].
    names: K names from `PLANTABLE`.
    class_idx: [B] int classes of the images (needed with scale 'class').
    scale: 'world' or 'class' (`TrainConfig.planted_scale`).
  Returns:
    [B, K] float32.
  """
  if scale not in PLANTED_SCALES:
    raise ValueError(f"scale must be one of {PLANTED_SCALES}, got {scale!r}")
  if scale == "class":
    if class_idx is None:
      raise ValueError("planted targets scaled within class need class_idx")
    mean, std = param_moments(tuple(names), per_class=True)
    c = jnp.asarray(class_idx, jnp.int32)
    mean, std = jnp.asarray(mean)[c], jnp.asarray(std)[c]
  else:
    mean, std = param_moments(tuple(names))
  zscore = (param_values(theta, names) - jnp.asarray(mean)) / jnp.asarray(std)
  return jnp.float32(PLANTED_TARGET_MEAN) + jnp.float32(PLANTED_TARGET_STD) * zscore


def _centre(x: np.ndarray, class_idx: np.ndarray | None) -> np.ndarray:
  """x [N, ...] minus its mean, per class when class_idx [N] is given."""
  x = np.asarray(x, np.float64)
  if class_idx is None:
    return x - x.mean(axis=0)
  out = x.copy()
  for k in np.unique(class_idx):
    sel = class_idx == k
    out[sel] -= x[sel].mean(axis=0)
  return out


def unit_correlations(r: np.ndarray, theta: np.ndarray, names: Sequence[str],
                      class_idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Pearson r of every unit with each named parameter: {name: [R]} (0 for a constant unit).

  Args:
    r: [N, R]; theta: [N, THETA_DIM]; names: parameters (`train_classifier.param_values`).
    class_idx: [N] classes; given, both sides are centred per class first (the within-class
      correlation): a unit that only tells the breeds apart does not count as encoding a
      parameter in which the breeds differ. None: the pooled correlation.
  """
  values = np.asarray(param_values(jnp.asarray(theta), tuple(names)),
                      np.float64)
  cls = None if class_idx is None else np.asarray(class_idx)
  rc = _centre(r, cls)
  vc = _centre(values, cls)
  out = {}
  for k, name in enumerate(names):
    v = vc[:, k]
    denom = np.sqrt((rc * rc).sum(axis=0) * (v * v).sum())
    out[name] = np.where(denom > 0, rc.T @ v / np.where(denom > 0, denom, 1.0), 0.0)
  return out


def planted_report(r: np.ndarray, theta: np.ndarray, planted: tuple[tuple[int, str], ...],
                   class_idx: np.ndarray | None = None,
                   scale: str = "world") -> list[dict[str, Any]]:
  """How well each planted unit encodes its parameter, and how well any other unit does.

  Args:
    r: [N, R] activations; theta: [N, THETA_DIM] the true parameters of the same images.
    planted: ((unit, parameter), ...).
    class_idx: [N] classes of the images: adds the within-class correlations (and is needed
      for the targets with scale 'class').
    scale: the targets' z-scoring (`TrainConfig.planted_scale`).
  Returns:
    one dict per planted unit: 'unit', 'param', 'r' (Pearson r of r[:, unit] with the
    parameter), 'rmse_target' (RMS error against the training target), 'best_other_unit' and
    'best_other_r' (the unit with the largest |r| among all other units, and that r), 'n';
    with class_idx also 'r_within_class', 'best_other_unit_within_class' and
    'best_other_r_within_class' (the same after subtracting each class's means).
  """
  names = tuple(n for _, n in planted)
  targets = np.asarray(planted_targets(jnp.asarray(theta), names, class_idx, scale), np.float64)
  pooled = unit_correlations(r, theta, names)
  within = None if class_idx is None else unit_correlations(r, theta, names, class_idx=class_idx)
  out = []
  for k, (unit, name) in enumerate(planted):
    entry = {"unit": int(unit), "param": name,
             "rmse_target": float(np.sqrt(np.mean((r[:, unit] - targets[:, k]) ** 2))),
             "n": int(len(r))}
    for suffix, corrs in (("", pooled), ("_within_class", within)):
      if corrs is None:
        continue
      corr = corrs[name]
      others = np.abs(corr).copy()
      others[unit] = -1.0
      best = int(np.argmax(others))
      # NaN: a constant unit (unit_correlations gives 0 there).
      entry["r" + suffix] = float(corr[unit]) if np.std(r[:, unit]) > 0 else float("nan")
      entry["best_other_unit" + suffix] = best
      entry["best_other_r" + suffix] = float(corr[best])
    out.append(entry)
  return out


def planted_map(record: dict[str, Any]) -> tuple[tuple[int, str], ...]:
  """The planted (unit, parameter) pairs of a classifier's metrics.json record (() if none)."""
  return tuple((int(p["unit"]), str(p["param"])) for p in record.get("planted", []))
