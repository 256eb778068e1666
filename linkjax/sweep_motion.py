"""Motion fields of unit sweeps (paper Fig. 4C): how the strongest settings of a unit move parts.

For each unit and each strip sample (`sweep.strip_samples`), the unperturbed image (r
unchanged) is I_o and the images with the unit set to the ends of its range (the strip's
first and last columns, `values[u, 0]` and `values[u, -1]`) are the two I_p; `motion`
estimates the global affine and the residual local flow of both pairs (pixel descriptors, at
the sweep's image resolution: the segmenter's mask resolution; the images come from the
strips' compiled step). The unperturbed image's
segmenter masks give per-part summaries (`motion.part_summary`) of the local (residual) and
the total flow.

On disk (`out_dir`, next to sweep.npz):
  motion.npz      'units' [U], 'values' [U, 2] (the two ends), 'sample_idx' [S'],
                  'local' and 'total' [U, 2, L, 6] (`motion.SUMMARY_FIELDS` per label,
                  background included: means over the strip samples, `max_norm` the maximum),
                  'affine_params' [U, 2, 6] (`motion.AFFINE_PARAM_NAMES`, mean over samples),
                  'label_names' [L].
  motion.json     the same per unit and end, by name.
  strips/motion_unit_UUUU.npz
                  per sample: 'base' [S', H, W, 3] and 'ends' [S', 2, H, W, 3] uint8, 'masks'
                  [S', H, W], 'flow', 'total_flow' [S', 2, H, W, 2], 'confidence' [S', 2, H, W],
                  'affine_params' [S', 2, 6], 'values' [2], 'sample_idx' [S'].
  strips/motion_unit_UUUU.png
                  rows: samples; columns: image at the low end, its local flow drawn on the
                  unperturbed image, the unperturbed image, the high end's local flow, the
                  image at the high end.
Units whose strips/motion_unit_UUUU.npz exists are not recomputed.
"""

from __future__ import annotations

import os
import pathlib
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linkjax import figures, files, jobs, motion, motion_figures, pairs
from linkjax import sweep as sweep_lib

MOTION_FILE = "motion.npz"
MOTION_JSON = "motion.json"
ENDS = ("low", "high")


def _aggregate(summary: np.ndarray) -> np.ndarray:
  """[S', ..., L, 6] per sample -> [..., L, 6]: NaN-aware means, the maximum for max_norm."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices (absent parts) stay NaN
    out = np.nanmean(summary, axis=0)
    mx = motion.SUMMARY_FIELDS.index("max_norm")
    out[..., mx] = np.nanmax(summary[..., mx], axis=0)
  return out


def renderer(models: Any, params: Any, r_samples: np.ndarray, values: np.ndarray,
             classes: Sequence[int], chunk: int, mesh: jax.sharding.Mesh
             ) -> Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]:
  """(sample, unit, step) triples -> {'images', 'masks'} through the sweep's own compiled step
  with images (`sweep.make_step`, as the strips: nothing new to compile for the models), with
  the weights and activations put on the devices once.

  Args:
    models, params: sweep models (`sweep_outputs`).
    r_samples: [S, R] base activations.
    values: [R, steps] sweep values (`sweep.sweep_values`).
    classes: the step's classes (as the strips': the sorted classes of the samples).
    chunk: triples per compiled call of the step (rounded up to the mesh size).
    mesh: 1-D 'data' mesh.
  """
  size = jobs.padded_size(chunk, mesh)
  step = sweep_lib.make_step(models, tuple(int(c) for c in classes), mesh, True)
  repl = NamedSharding(mesh, P())
  params = jax.device_put(params, repl)
  r_dev, v_dev = (jax.device_put(np.asarray(a, np.float32), repl) for a in (r_samples, values))
  return lambda s, u, k: sweep_lib.render_triples(step, params, r_dev, v_dev, s, u, k,
                                                  chunk=size, mesh=mesh)


def unit_motion(render: Callable, base: np.ndarray, masks: np.ndarray, rows: np.ndarray,
                unit: int, last: int, n_labels: int, *, key: jax.Array,
                config: motion.MotionConfig | None = None, batch: int = 8,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, np.ndarray]:
  """Flows from the unperturbed images to the images with `unit` at the two ends of its range.

  Args:
    render: `renderer(...)`.
    base, masks: [S', H, W, 3] uint8 unperturbed images of `rows` and their [S', H, W] masks
      (`render(rows, NO_UNIT, 0)`: the same for every unit).
    rows: [S'] the samples (rows of r_samples).
    unit: the unit.
    last: the column of the high end in the sweep values (steps - 1; the low end is 0).
    n_labels: the segmenter's labels.
    key: PRNG key of the affine fits.
    config: motion settings; None: `motion.config_for_size` of the defaults for the images.
    batch: pairs per compiled call of the motion.
    mesh: 1-D 'data' mesh (default: all local devices).
  Returns:
    the arrays of strips/motion_unit_UUUU.npz (without 'values' and 'sample_idx') plus
    'local' and 'total' [S', 2, n_labels, 6] per-sample part summaries.
  """
  n = len(rows)
  # The unit at the low end, then at the high end.
  s = np.tile(np.asarray(rows, np.int32), 2)
  u = np.full(2 * n, unit, np.int32)
  k = np.concatenate([np.zeros(n), np.full(n, last)]).astype(np.int32)
  ends = render(s, u, k)["images"]
  config = config or motion.config_for_size(base.shape[1])
  res = motion.estimate_many(np.concatenate([base, base]), ends, key=key, config=config,
                             batch=batch, mesh=mesh)
  two = lambda a: np.swapaxes(np.asarray(a).reshape(2, n, *a.shape[1:]), 0, 1)  # noqa: E731
  masks2 = np.concatenate([masks, masks])
  summ = lambda f: two(np.asarray(motion.part_summary(  # noqa: E731
      jnp.asarray(f), jnp.asarray(res.confidence), jnp.asarray(masks2), n_labels)))
  return {"base": base, "ends": two(ends), "masks": masks, "flow": two(res.flow),
          "total_flow": two(res.total_flow), "confidence": two(res.confidence),
          "affine_params": two(res.affine_params), "local": summ(res.flow),
          "total": summ(res.total_flow)}


def plot_unit(path: str | os.PathLike, data: dict[str, np.ndarray], unit: int) -> None:
  """Rows: samples; columns: low end, its local flow on the unperturbed image, the unperturbed
  image, the high end's local flow, the high end (arrows: HSV wheel, one scale per row)."""
  base, ends, flow, conf = data["base"], data["ends"], data["flow"], data["confidence"]
  rows, size = len(base), base.shape[1]
  step = max(2, size // 16)
  names = motion.AFFINE_PARAM_NAMES
  fig, axes = figures.subplots(rows, 5, figsize=(8.5, 1.75 * rows + 0.4), squeeze=False)
  for i in range(rows):
    top = max(0.5, float(np.linalg.norm(flow[i], axis=-1).max()))
    for j, col, img in ((0, 0, ends[i, 0]), (2, None, base[i]), (4, 1, ends[i, 1])):
      ax = axes[i, j]
      ax.imshow(img)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title("unperturbed" if col is None else
                     f"{ENDS[col]}: {float(data['values'][col]):.3g}", fontsize=8)
    for j, col in ((1, 0), (3, 1)):
      p = dict(zip(names, data["affine_params"][i, col].tolist()))
      motion_figures.plot_flow(axes[i, j], base[i], flow[i, col], conf[i, col], step=step,
                               margin=step, min_percentile=0.0, min_norm=0.25,
                               max_norm=top, scale=1.0)
      axes[i, j].set_title(f"s {0.5 * (p['scale_x'] + p['scale_y']):.2f} "
                           f"rot {p['rotation_deg']:.1f}° t ({p['tx']:.1f}, {p['ty']:.1f})",
                           fontsize=6)
  fig.suptitle(f"unit {unit}: local motion from the unperturbed image (after the global affine"
               " s, rot, t)", fontsize=8)
  fig.tight_layout()
  figures.save(fig, path, dpi=100)


def run(out_dir: str | os.PathLike, models: Any, params: Any, r_samples: Any, class_idx: Any,
        units: Sequence[int], *, lo: Any, hi: Any, steps: int, key: jax.Array,
        sample_ids: Any = None, rows: int = 8, chunk: int = 64, batch: int = 8,
        config: motion.MotionConfig | None = None,
        mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Motion fields of `units` on the strip samples; writes the files of the module docstring.

  Args:
    out_dir: sweep directory.
    models, params: sweep models (see `renderer`).
    r_samples: [S, R] base activations; class_idx: [S] their classes.
    units: units to analyse (the strip units).
    lo, hi: [R] unit ranges; steps: values per unit (the ends are the first and last).
    key: PRNG key (unit u uses fold_in(key, u)).
    sample_ids: [S] ids stored with the results (default arange).
    rows: samples per unit (`sweep.strip_samples`: round-robin over classes).
    chunk: images per compiled call of the models (the strips' chunk: the same compilation).
    batch: pairs per compiled call of the motion.
    config: motion settings; None: `motion.config_for_size` of the defaults for the images.
    mesh: 1-D 'data' mesh.
  Returns:
    {'units', 'label_names', 'per_unit': motion.json's per-unit entries}.
  """
  out = pathlib.Path(out_dir)
  strip_dir = out / sweep_lib.STRIP_DIR
  strip_dir.mkdir(parents=True, exist_ok=True)
  r_samples = np.asarray(r_samples, np.float32)
  class_idx = np.asarray(class_idx, np.int32)
  sample_ids = np.arange(len(r_samples)) if sample_ids is None else np.asarray(sample_ids)
  all_values = sweep_lib.sweep_values(lo, hi, steps)
  values = all_values[:, [0, -1]]  # [R, 2]
  classes = tuple(int(c) for c in np.unique(class_idx))
  picked = sweep_lib.strip_samples(class_idx, rows)
  names = sweep_lib._label_names(models)
  summaries: dict[str, list[np.ndarray]] = {"local": [], "total": [], "affine_params": []}
  mesh = mesh or jobs.data_mesh()
  render = base = None
  for unit in units:
    unit = int(unit)
    npz = strip_dir / f"motion_unit_{unit:04d}.npz"
    if npz.exists():
      data = files.read_npz(npz)
    else:
      if render is None:  # the unperturbed images, once for all units
        render = renderer(models, params, r_samples, all_values, classes, chunk, mesh)
        base = render(picked.astype(np.int32), np.full(picked.size, sweep_lib.NO_UNIT, np.int32),
                      np.zeros(picked.size, np.int32))
      res = unit_motion(render, base["images"], base["masks"], picked, unit, steps - 1,
                        models.n_labels, key=jax.random.fold_in(key, unit), config=config,
                        batch=batch, mesh=mesh)
      data = {**res, "values": values[unit], "sample_idx": sample_ids[picked]}
      plot_unit(strip_dir / f"motion_unit_{unit:04d}.png", data, unit)
      files.write_npz(npz, data)
    for k in summaries:
      summaries[k].append(_aggregate(data[k]))
  arrays = {"units": np.asarray(units, np.int32), "values": values[np.asarray(units, np.int64)],
            "sample_idx": sample_ids[picked], "label_names": np.asarray(names, dtype=str),
            **{k: np.stack(v) for k, v in summaries.items()}}
  files.write_npz(out / MOTION_FILE, arrays)
  fields = motion.SUMMARY_FIELDS
  per_unit = {}
  for i, unit in enumerate(units):
    per_unit[str(int(unit))] = {end: {
        "value": float(arrays["values"][i, e]),
        "affine": dict(zip(motion.AFFINE_PARAM_NAMES, arrays["affine_params"][i, e].tolist())),
        **{kind: {name: {f: float(arrays[kind][i, e, lab, fields.index(f)])
                         for f in ("mean_norm", "max_norm", "mean_dx", "mean_dy")}
                  for lab, name in enumerate(names)} for kind in ("local", "total")}}
        for e, end in enumerate(ENDS)}
  summary = {"units": [int(u) for u in units], "label_names": names, "per_unit": per_unit,
             "samples": [int(s) for s in sample_ids[picked]]}
  files.write_json(out / MOTION_JSON, files.json_safe(summary))
  return summary


def run_config(pairs_dir: str | os.PathLike, models: Any, params: Any,
               out_dir: str | os.PathLike, config: sweep_lib.SweepConfig,
               strip_units: Sequence[int], *, mesh: jax.sharding.Mesh | None = None
               ) -> dict[str, Any] | None:
  """The motion pass of a finished `sweep.run` (config.motion): `run` on its strip units and
  base samples, by process 0 only. Returns `run`'s summary with 'seconds', or None (motion off,
  no strip units, or another process)."""
  if not (config.motion and strip_units) or jax.process_index() != 0:
    return None
  t0 = time.perf_counter()
  data = pairs.load(pairs_dir)
  present, rows, r_samples, lo, hi = sweep_lib.base_samples(data, config, pairs_dir)
  summary = run(out_dir, models, params, r_samples, data["class_idx"][rows], strip_units,
                lo=lo, hi=hi, steps=config.steps, key=jax.random.key(config.motion_seed),
                sample_ids=rows,
                rows=min(config.strip_rows, len(present) * config.samples_per_class),
                chunk=config.chunk, mesh=mesh)
  return {**summary, "seconds": time.perf_counter() - t0}
