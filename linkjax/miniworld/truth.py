"""The built-in world's ground truth for the planted-truth validation (`validate`).

What a renderer parameter should change when a unit encoding it is swept (`PARAM_TARGETS`), how
two breeds differ part by part on renders with exact masks (`breed_differences`), which
renderer parameters separate them (`parameter_differences`), and how well a parameter's part
metric can be measured at all within a breed on generated images (`measurability`).
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

import jax
import numpy as np

from linkjax import jobs, quantify
from linkjax import miniworld as world
from linkjax.miniworld import groundtruth
from linkjax.miniworld import planted as planted_lib

# The part and metric a planted parameter should change when its unit is swept.
PARAM_TARGETS: dict[str, tuple[str, str]] = {
    "ear_len": ("ear", "area"), "ear_w": ("ear", "area"),
    "tail_len": ("tail", "area"), "tail_w": ("tail", "area"),
    "leg_len": ("leg", "area"), "leg_w": ("leg", "area"),
    "head_r": ("head", "area"),
    "body_len": ("body", "area"), "body_h": ("body", "area"),
    "snout_len": ("snout", "area"), "snout_h": ("snout", "area"),
    "eye_r": ("eye", "area"), "nose_r": ("nose", "area"),
    "tongue_len": ("tongue", "area"), "tongue_w": ("tongue", "area"),
    "body_val": ("body", "luminance"), "body_luminance": ("body", "luminance"),
    "snout_light": ("snout", "luminance"), "nose_val": ("nose", "luminance"),
    "eye_val": ("eye", "luminance"), "tongue_val": ("tongue", "luminance"),
    "ear_angle": ("ear", "angle"), "tail_angle": ("tail", "angle"),
    "pattern_amp": ("body", "entropy"),
}


@functools.partial(jax.jit, static_argnames="n_labels")
def _true_metrics(theta: jax.Array, n_labels: int) -> jax.Array:
  images, masks = world.render(theta)
  return quantify.part_metrics(images, masks, n_labels=n_labels)


def render_metrics(theta: np.ndarray, batch: int) -> np.ndarray:
  """Part metrics [N, L, M] of renders of theta [N, THETA_DIM] with their exact masks."""
  return jobs.map_batches(lambda _, t: _true_metrics(t, len(world.PART_NAMES)), (), theta,
                          batch=min(batch, len(theta)), mesh=jobs.data_mesh(1))


def breed_differences(metrics_a: Any, metrics_b: Any) -> dict[str, np.ndarray]:
  """How two breeds differ part by part, measured on renders with exact masks.

  Args:
    metrics_a, metrics_b: [N, L, M] part metrics of renders of breed a and breed b.
  Returns:
    {'signed': [L, M] mean_b / mean_a - 1 for area (absent parts counting as area 0), mean_b -
     mean_a for the others (over images holding the part); 'relative': its absolute value;
     'cohen_d': [L, M] |mean_b - mean_a| / pooled std}.
  """
  a = np.asarray(metrics_a, np.float64)
  b = np.asarray(metrics_b, np.float64)
  with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)  # parts absent from every image: NaN
    ma, mb = np.nanmean(a, axis=0), np.nanmean(b, axis=0)
    signed = mb - ma
    signed[:, quantify.AREA] = mb[:, quantify.AREA] / np.maximum(ma[:, quantify.AREA], 1.0) - 1.0
    pooled = np.sqrt(0.5 * (np.nanvar(a, axis=0) + np.nanvar(b, axis=0)))
    d = np.where(pooled > 0, np.abs(mb - ma) / np.where(pooled > 0, pooled, 1.0), np.nan)
  return {"signed": signed, "relative": np.abs(signed), "cohen_d": d}


def parameter_differences(class_a: int, class_b: int, top: int = 8) -> list[dict[str, Any]]:
  """The renderer parameters that separate two breeds most (for the record).

  The separation of parameter i is |m_b - m_a| / s in the renderer's tanh-logit units (class
  means m, within-class spread s: `render._class_tables`).

  Returns:
    the `top` parameters, largest first: {'param', 'separation', 'part', 'metric'} (part and
    metric from `PARAM_TARGETS`, None where the parameter has no single part metric).
  """
  render_mod = sys.modules[world.render.__module__]
  means, spread = render_mod._class_tables()  # noqa: SLF001 - the world's own tables
  sep = np.abs(means[class_b] - means[class_a]) / spread
  out = []
  for i in np.argsort(-sep)[:top]:
    name = world.PARAM_NAMES[i]
    part, metric = PARAM_TARGETS.get(name, (None, None))
    out.append({"param": name, "separation": float(sep[i]), "part": part, "metric": metric})
  return out


def measurability(models: Any, params: Any, param_names: Any, *, key: jax.Array, n: int = 500,
                  min_area: float = 5.0, batch: int = 50) -> dict[str, dict[str, Any]]:
  """How well each parameter's expected part metric tracks the parameter within a breed.

  On n class-balanced generated images at psi 1 (whose true theta is known), the within-class
  Pearson r (`planted_lib.unit_correlations` with the classes) of each parameter with its
  `PARAM_TARGETS` part metric measured two ways: the method's (the segmenter's mask on G(z, c))
  and the exact one (the true mask on the render). A unit's sweep cannot show a within-breed
  change that the first cannot see; the second is what a perfect generator and segmenter give.

  Args:
    models, params: a bundle with the miniworld generator and a segmenter.
    param_names: parameters (keys of `PARAM_TARGETS` that `planted_lib.PLANTABLE` holds).
    key: PRNG key of the latents.
    n: images.
    min_area: images where either mask holds less of the part are left out.
    batch: images per compiled call.
  Returns:
    {param: {'part', 'metric', 'r_generated_segmenter', 'r_render_true', 'n'}}.
  """
  z, c = groundtruth.heldout_latents(key, n, models.z_dim)
  data = groundtruth.generate_and_segment(models, params, z, c, psi=1.0, batch=batch)
  measured, true = groundtruth.paired_part_metrics(data, len(world.PART_NAMES), batch)
  theta = np.asarray(groundtruth.true_theta(z, c), np.float32)
  out = {}
  for name in param_names:
    part, metric = PARAM_TARGETS[name]
    l, m = world.PART_NAMES.index(part) - 1, quantify.METRIC_NAMES.index(metric)
    sel = (measured[:, l, quantify.AREA] >= min_area) & (true[:, l, quantify.AREA] >= min_area)
    x = np.stack([measured[sel, l, m], true[sel, l, m]], axis=1)
    r = (planted_lib.unit_correlations(x, theta[sel], (name,), class_idx=c[sel])[name]
         if sel.sum() >= 3 else np.full(2, np.nan))
    out[name] = {"part": part, "metric": metric, "r_generated_segmenter": float(r[0]),
                 "r_render_true": float(r[1]), "n": int(sel.sum())}
  return out
