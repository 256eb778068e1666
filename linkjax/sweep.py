"""Unit sweeps (paper Sec. 3.2, 4.3): set one unit of R across its range, regenerate, measure.

For every (sample s, unit u, step k) triple the sample's activations r[s] get unit u *replaced* by
`sweep_values(lo, hi, steps)[u, k]` (other units keep the sample's values), then the models'
`sweep_outputs` (`ModelBundle`: r' -> link -> image (+ features) -> classifier probabilities
through the exact uint8 path; segmenter masks at its resolution R; the uint8 image resized to R
with Pillow's bilinear filter, bit-exact) and `quantify.part_metrics` on the R x R image.

The core is a pure function, `sweep_chunk(models, params, r_samples, values, sample, unit, step)`,
over a chunk of triples given as three int32 index arrays; the models are static, their weights
an argument. `run_sweep` compiles it once per chunk size with the chunk axis sharded over a 1-D
device mesh, streams each shard's results to a stamped, atomically written shard file of a
`jobs.RunDir` (locked; resumes from finished shards), and assembles `sweep.npz`. `save_strips`
renders image strips for chosen units; `run` is the driver from directories that
`experiments.sweep_units` and the demo call.

On disk (`out_dir`):
  run.json            the run's identity (units, samples, classes, steps, chunk, hashes of r and
                      of the sweep values, the models' description).
  shards/base.npz     the unperturbed images' results (r -> f(r) -> ...).
  shards/shard_KKKKKKK.npz
                      results of the triples with flat index in [K*shard_size, (K+1)*shard_size)
                      of the C-ordered [S, U, steps] grid.
  sweep.npz           the assembled arrays (see `run_sweep`).
  strips/unit_UUUU.png (+ .npz)
                      image strips (rows: samples, columns: steps) for the units asked for.

Base samples. The reference sweeps samples drawn at psi 0.7 with seed 136 and no correctness
filter. We take them from a pair directory: the first `samples_per_class` draws of each class by
draw index (`select_samples`); `experiments.make_pairs --psi=0.7 --seed=136 --keep=all` gives
the reference's sample set. The per-unit range is the empirical [min, max] over the selected
base samples pooled across classes (`range_from='samples'`, the reference), or over every pair.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from linkjax import bundle as bundle_lib
from linkjax import batching, cli, files, jobs, pairs, quantify, unit_analysis

SWEEP_FILE = "sweep.npz"
STRIP_DIR = "strips"
BASE_SHARD = "base"
FORMAT_VERSION = 2
NO_UNIT = -1  # unit index meaning "leave r unchanged" (the unperturbed baseline)
RANGE_FROM = ("samples", "pairs")


class SweepError(jobs.JobError):
  """Missing, incomplete or conflicting sweep output."""


# ---------------------------------------------------------------------------------- small parts


def unit_ranges(r: Any) -> tuple[np.ndarray, np.ndarray]:
  """Empirical per-unit range over samples (pooled over classes).

  Args:
    r: [N, R] activations.
  Returns:
    (lo [R], hi [R]) float32: column minima and maxima.
  """
  r = np.asarray(r, np.float32)
  if r.ndim != 2 or r.shape[0] == 0:
    raise ValueError(f"expected r of shape [N > 0, R], got {r.shape}")
  if not np.all(np.isfinite(r)):
    raise ValueError("r holds non-finite values (NaN or inf)")
  return r.min(axis=0), r.max(axis=0)


def sweep_values(lo: Any, hi: Any, steps: int) -> np.ndarray:
  """Per-unit sweep values `numpy.linspace(lo[u], hi[u], steps)` (computed in float64).

  Args:
    lo: [R] lower ends; hi: [R] upper ends.
    steps: values per unit (>= 2: the first is lo, the last hi).
  Returns:
    [R, steps] float32.
  """
  if steps < 2:
    raise ValueError(f"steps must be >= 2, got {steps}")
  return np.linspace(np.asarray(lo, np.float64), np.asarray(hi, np.float64), steps,
                     axis=-1).astype(np.float32)


def parse_units(spec: str, num_units: int) -> np.ndarray:
  """Unit list from 'all', a range 'a-b' (inclusive), a list '3,5,7' or a mix '0-3,10'.

  Args:
    spec: the specification.
    num_units: R; every unit must be in [0, R).
  Returns:
    [U] int32 unit indices, in the order given, without duplicates.
  """
  spec = spec.strip()
  if spec == "all":
    return np.arange(num_units, dtype=np.int32)
  out = cli.parse_ranges(spec, "unit")
  bad = [u for u in out if not 0 <= u < num_units]
  if bad:
    raise ValueError(f"units {bad[:5]} outside [0, {num_units})")
  if len(set(out)) != len(out):
    raise ValueError(f"duplicate units in {spec!r}")
  return np.asarray(out, np.int32)


def select_samples(class_idx: Any, draw_idx: Any, n_per_class: int,
                   classes: Sequence[int] | None = None) -> np.ndarray:
  """Rows of a pair set: the first `n_per_class` draws (by draw index) of each class.

  Args:
    class_idx: [N] class of each pair.
    draw_idx: [N] draw index of each pair.
    n_per_class: samples per class (a class with fewer pairs contributes what it has).
    classes: classes to take, in this order (default: sorted unique `class_idx`).
  Returns:
    [S] int64 row indices, grouped by class in `classes` order, by draw index within a class.
  """
  class_idx = np.asarray(class_idx)
  draw_idx = np.asarray(draw_idx)
  if classes is None:
    classes = np.unique(class_idx)
  rows = []
  for c in classes:
    idx = np.flatnonzero(class_idx == c)
    if idx.size == 0:
      raise ValueError(f"class {c} has no pairs")
    if idx.size < n_per_class:
      logging.warning("class %d has only %d pairs (< %d)", c, idx.size, n_per_class)
    rows.append(idx[np.argsort(draw_idx[idx], kind="stable")][:n_per_class])
  return np.concatenate(rows).astype(np.int64)


def strip_samples(class_idx: Any, n_rows: int) -> np.ndarray:
  """Sample rows for strips: round-robin over classes (in order of appearance), first ones first.

  Args:
    class_idx: [S] class of each sample; n_rows: number of rows wanted.
  Returns:
    [min(n_rows, S)] int32 sample positions.
  """
  class_idx = np.asarray(class_idx)
  _, first = np.unique(class_idx, return_index=True)
  groups = [list(np.flatnonzero(class_idx == class_idx[i])) for i in sorted(first)]
  rows: list[int] = []
  depth = 0
  while len(rows) < min(n_rows, class_idx.size):
    for g in groups:
      if depth < len(g) and len(rows) < n_rows:
        rows.append(int(g[depth]))
    depth += 1
  return np.asarray(rows, np.int32)


# ------------------------------------------------------------------------------------ the core


def set_unit(r: jax.Array, unit: jax.Array, value: jax.Array) -> jax.Array:
  """r with entry `unit` replaced by `value` (unchanged for unit == NO_UNIT).

  Args:
    r: [R] activations of one sample; unit: [] int32; value: [] float32.
  Returns:
    [R] float32.
  """
  return jnp.where(jnp.arange(r.shape[-1]) == unit, value, r.astype(jnp.float32))


def sweep_chunk(models: Any, params: Any, r_samples: jax.Array, values: jax.Array,
                sample: jax.Array, unit: jax.Array, step: jax.Array, *,
                classes: Sequence[int], return_images: bool = False,
                micro_batch: int | None = None) -> dict[str, jax.Array]:
  """Results of a chunk of (sample, unit, step) triples. Pure; jit/shard it from outside.

  Args:
    models: a `ModelBundle` (or toy) with `sweep_outputs` and `n_labels`.
    params: their weights.
    r_samples: [S, R] base activations of the samples.
    values: [R, steps] sweep values of every unit (`sweep_values`).
    sample: [B] int32 rows of `r_samples`.
    unit: [B] int32 units to set (NO_UNIT: leave r unchanged).
    step: [B] int32 steps (columns of `values`).
    classes: class indices whose probabilities are returned.
    return_images: also return the images and their masks.
    micro_batch: images per sequential step of the models (`batching.micro_batched`: on CPU
      the temporaries stay in cache); None: the whole chunk at once. Equal up to rounding.
  Returns:
    {'metrics': [B, n_labels - 1, M] float32 (`quantify.part_metrics`), 'probs': [B, len(classes)],
     'pred': [B] int32 argmax over all classes, ('images': [B, H, W, 3] uint8, 'masks':
     [B, H, W] int32)}.
  """
  r = jnp.take(r_samples, sample, axis=0)
  value = values[jnp.maximum(unit, 0), step]
  outputs = batching.micro_batched(models.sweep_outputs, micro_batch)
  out = outputs(params, jax.vmap(set_unit)(r, unit, value))
  images = out["images"]
  metrics = quantify.part_metrics(images.astype(jnp.float32) / jnp.float32(255.0),
                                  out["masks"].astype(jnp.int32), n_labels=models.n_labels)
  probs = out["probs"].astype(jnp.float32)
  res = {"metrics": metrics, "probs": probs[:, jnp.asarray(classes, jnp.int32)],
         "pred": jnp.argmax(probs, axis=-1).astype(jnp.int32)}
  if return_images:
    res["images"] = images
    res["masks"] = out["masks"].astype(jnp.int32)
  return res


@functools.lru_cache(maxsize=16)
def make_step(models: Any, classes: tuple[int, ...], mesh: jax.sharding.Mesh,
              return_images: bool = False):
  """`sweep_chunk` compiled for `mesh`: triples sharded on 'data', everything else replicated.

  Returns `step(params, r_samples, values, sample, unit, step)`; the chunk size must be a
  multiple of the mesh size. The models run in micro-batches sized for the mesh
  (`batching.default_micro_batch`). Cached, so the models compile once per chunk shape.
  """
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())
  fn = functools.partial(sweep_chunk, models, classes=classes, return_images=return_images,
                         micro_batch=batching.default_micro_batch(mesh.devices.size))
  return jax.jit(fn, in_shardings=(repl, repl, repl, data, data, data), out_shardings=data)


def render_triples(step: Callable, params: Any, r_samples: jax.Array, values: jax.Array,
                   sample: np.ndarray, unit: np.ndarray, step_idx: np.ndarray, *, chunk: int,
                   mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """Images and masks of (sample, unit, step) triples through a step with images.

  Args:
    step: `make_step(models, classes, mesh, True)`.
    params, r_samples, values: replicated on `mesh` (`jax.device_put`).
    sample, unit, step_idx: [N] int32 triples (as `sweep_chunk`).
    chunk: triples per call (a multiple of the mesh size; one compilation per chunk size).
    mesh: the step's mesh.
  Returns:
    {'images': [N, H, W, 3] uint8, 'masks': [N, H, W] int32} on the host.
  """
  data = NamedSharding(mesh, P("data"))
  out: dict[str, list[np.ndarray]] = {"images": [], "masks": []}
  for a, b in jobs.chunks(sample.size, chunk):
    o = step(params, r_samples, values, *(jax.device_put(jobs.pad_rows(x[a:b], chunk), data)
                                          for x in (sample, unit, step_idx)))
    for k in out:
      out[k].append(np.asarray(o[k])[:b - a])
  return {k: np.concatenate(v) for k, v in out.items()}


def _triples(flat: np.ndarray, n_units: int, steps: int, units: np.ndarray):
  """(sample, unit, step) int32 arrays of flat indices into the C-ordered [S, U, steps] grid."""
  s, u_pos, k = flat // (n_units * steps), (flat // steps) % n_units, flat % steps
  return s.astype(np.int32), units[u_pos].astype(np.int32), k.astype(np.int32)


def _shard_name(h: int) -> str:
  return f"shard_{h:07d}"


class _Chunks:
  """Dispatches chunks of triples through the compiled step, fetching chunk k while k+1 runs."""

  def __init__(self, step, params, r_samples, values, chunk: int, progress: jobs.Progress,
               mesh: jax.sharding.Mesh):
    self._step, self._params, self._chunk = step, params, chunk
    # Committed to this process's devices: with several processes jit refuses host arrays.
    self._data = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())
    self._r, self._v = jax.device_put(r_samples, repl), jax.device_put(values, repl)
    self._progress = progress
    self._pending = None
    self.first_call_s = 0.0  # compiling the step plus one chunk

  def submit(self, s, u, k, done: Callable[[dict[str, np.ndarray]], None]) -> None:
    c, n = self._chunk, s.size
    s, u, k = (jax.device_put(jobs.pad_rows(a, c), self._data) for a in (s, u, k))
    t0 = time.perf_counter()
    out = self._step(self._params, self._r, self._v, s, u, k)  # dispatched asynchronously
    if not self.first_call_s:
      jax.block_until_ready(out)
      self.first_call_s = time.perf_counter() - t0
    self.flush()
    self._pending = (out, n, done)

  def flush(self) -> None:
    if self._pending is not None:
      out, n, done = self._pending
      self._pending = None
      done({key: np.asarray(v)[:n] for key, v in out.items()})
      self._progress.update(n)


def run_sweep(out_dir: str | os.PathLike, models: Any, params: Any, r_samples: Any,
              class_idx: Any, *, units: Sequence[int], steps: int = 3, chunk: int = 64,
              shard_size: int = 4096, lo: Any = None, hi: Any = None, sample_ids: Any = None,
              classes: Sequence[int] | None = None, mesh: jax.sharding.Mesh | None = None,
              overwrite: bool = False, log_every_s: float = 30.0,
              on_shard: Callable[[int], None] | None = None,
              timing: dict[str, float] | None = None) -> dict[str, np.ndarray]:
  """Sweeps units over samples, streaming results to shard files; a rerun resumes.

  Args:
    out_dir: output directory (see the module docstring for its layout).
    models: a `ModelBundle` with link, generator, classifier and segmenter (or a toy).
    params: their weights.
    r_samples: [S, R] base activations.
    class_idx: [S] class of each sample (its "original class").
    units: [U] units to sweep.
    steps: values per unit.
    chunk: triples per compiled call (rounded up to a multiple of the device count); memory
      grows linearly with it.
    shard_size: triples per shard file (rounded up to a multiple of the chunk): the unit of
      resumption (a full 2048-unit sweep is a few hundred files, not one per chunk).
    lo, hi: [R] unit ranges (default: `unit_ranges(r_samples)`).
    sample_ids: [S] ids stored with the results (e.g. rows of the pair file; default arange).
    classes: classes whose probabilities are kept (default: sorted unique `class_idx`).
    mesh: 1-D 'data' mesh (default: all devices).
    overwrite: replace a sweep with other arguments in `out_dir`.
    log_every_s: seconds between progress lines when not on a terminal.
    on_shard: called with the shard index after each newly written shard (tests).
    timing: if given, receives 'first_call_s' (the first chunk: compiling the step plus one
      chunk), 'steps_s' (all chunks, the first included, with the shards' host work
      overlapped) and 'images' computed here.
  Returns:
    The arrays of `sweep.npz`: 'metrics' [S, U, steps, L, M], 'probs' [S, U, steps, C],
    'pred' [S, U, steps] int32, 'base_metrics' [S, L, M], 'base_probs' [S, C], 'base_pred' [S]
    (unperturbed r), 'units' [U], 'sample_idx' [S], 'class_idx' [S], 'classes' [C],
    'values' [U, steps], 'lo' [U], 'hi' [U], 'label_names' [L + 1], 'mask_resolution' [];
    L = n_labels - 1, M = len(quantify.METRICS).
  """
  r_samples = np.asarray(r_samples, np.float32)
  class_idx = np.asarray(class_idx, np.int32)
  units = np.asarray(units, np.int32)
  if r_samples.ndim != 2 or r_samples.shape[0] == 0:
    raise ValueError(f"r_samples must be [S > 0, R], got {r_samples.shape}")
  n_s, n_r = r_samples.shape
  n_u = units.size
  if class_idx.shape != (n_s,):
    raise ValueError(f"class_idx must be [{n_s}], got {class_idx.shape}")
  if n_u == 0 or units.min() < 0 or units.max() >= n_r:
    raise ValueError(f"units must be non-empty and in [0, {n_r})")
  if lo is None or hi is None:
    lo, hi = unit_ranges(r_samples)
  values = sweep_values(lo, hi, steps)  # [R, steps]
  if not np.all(np.isfinite(values)):
    raise ValueError("the unit ranges (lo, hi) hold non-finite values")
  sample_ids = np.arange(n_s) if sample_ids is None else np.asarray(sample_ids)
  classes = tuple(int(c) for c in (np.unique(class_idx) if classes is None else classes))
  mesh = mesh or jobs.data_mesh()
  eff_chunk = jobs.padded_size(chunk, mesh)
  total = n_s * n_u * steps
  chunks_per_shard = max(1, -(-int(shard_size) // eff_chunk))
  shard_size = chunks_per_shard * eff_chunk
  n_shards = -(-total // shard_size)
  record = {"version": FORMAT_VERSION, "units": units.tolist(), "sample_ids": sample_ids.tolist(),
            "class_idx": class_idx.tolist(), "classes": list(classes), "steps": int(steps),
            "chunk": eff_chunk, "shard_size": shard_size, "r_hash": jobs.array_hash(r_samples),
            "values_hash": jobs.array_hash(values), "n_labels": int(models.n_labels),
            "models": models.describe()}
  with jobs.RunDir(out_dir, "sweep", record, (SWEEP_FILE, STRIP_DIR), overwrite=overwrite,
                   error=SweepError) as run:
    final = run.path / SWEEP_FILE
    if final.exists():
      return load(run.path)
    step_fn = make_step(models, classes, mesh)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    procs = run.processes  # shards are the unit of work across processes
    mine = [h for h in range(n_shards) if procs.owns(h)]
    todo = [h for h in mine if run.read_shard(_shard_name(h)) is None]

    def size(h: int) -> int:
      return min((h + 1) * shard_size, total) - h * shard_size

    base = run.read_shard(BASE_SHARD) if procs.main else {}
    progress = jobs.Progress(sum(size(h) for h in mine) + (n_s if base is None else 0),
                             done=sum(size(h) for h in mine) - sum(size(h) for h in todo),
                             every_s=log_every_s, label="sweep ")
    logging.info("sweep: %d samples x %d units x %d steps = %d images, chunks of %d (%d shard "
                 "files); %d shards done, %d to go; %d devices", n_s, n_u, steps, total,
                 eff_chunk, n_shards, n_shards - len(todo), len(todo), mesh.devices.size)
    if procs.count > 1:
      logging.info("sweep: process %d of %d computes %d of the shards", procs.index, procs.count,
                   len(mine))
    runner = _Chunks(step_fn, params, r_samples, values, eff_chunk, progress, mesh)
    t0 = time.perf_counter()
    base_computed = base is None
    if base is None:  # unperturbed baseline: every sample once, unit untouched
      parts: list[dict[str, np.ndarray]] = []
      for a, b in jobs.chunks(n_s, eff_chunk):
        s = np.arange(a, b, dtype=np.int32)
        runner.submit(s, np.full_like(s, NO_UNIT), np.zeros_like(s), parts.append)
      runner.flush()
      base = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      run.write_shard(BASE_SHARD, base)

    shard_parts: dict[int, list[dict[str, np.ndarray]]] = {}

    def collect(h: int, last: bool):
      def done(res: dict[str, np.ndarray]) -> None:
        shard_parts.setdefault(h, []).append(res)
        if last:
          parts = shard_parts.pop(h)
          run.write_shard(_shard_name(h), {k: np.concatenate([c[k] for c in parts])
                                           for k in parts[0]})
          if on_shard is not None:
            on_shard(h)
      return done

    for h in todo:
      end = min((h + 1) * shard_size, total)
      for a in range(h * shard_size, end, eff_chunk):
        flat = np.arange(a, min(a + eff_chunk, end), dtype=np.int64)
        runner.submit(*_triples(flat, n_u, steps, units), collect(h, a + eff_chunk >= end))
    runner.flush()
    if timing is not None:
      timing.update(first_call_s=runner.first_call_s, steps_s=time.perf_counter() - t0,
                    images=sum(size(h) for h in todo) + (n_s if base_computed else 0))
    if not procs.main:  # process 0 assembles
      run.wait_output(SWEEP_FILE)
      return load(run.path)

    shards = [run.read_shard(_shard_name(h)) if procs.owns(h) else run.wait_shard(_shard_name(h))
              for h in range(n_shards)]
    flat_res = {k: np.concatenate([sh[k] for sh in shards]) for k in shards[0]}
    n_l = flat_res["metrics"].shape[-2]
    result = {
        "metrics": flat_res["metrics"].reshape(n_s, n_u, steps, n_l, len(quantify.METRICS)),
        "probs": flat_res["probs"].reshape(n_s, n_u, steps, len(classes)),
        "pred": flat_res["pred"].reshape(n_s, n_u, steps),
        "base_metrics": base["metrics"], "base_probs": base["probs"], "base_pred": base["pred"],
        "units": units, "sample_idx": sample_ids, "class_idx": class_idx,
        "classes": np.asarray(classes, np.int32), "values": values[units],
        "lo": np.asarray(lo, np.float32)[units], "hi": np.asarray(hi, np.float32)[units],
        "label_names": np.asarray(_label_names(models), dtype=str),
        "mask_resolution": np.int32(getattr(models, "mask_resolution", 0)),
    }
    run.write_output(SWEEP_FILE, result)
    logging.info("sweep: wrote %s", final)
    return result


def _label_names(models: Any) -> list[str]:
  names = list(getattr(models, "label_names", ()) or ())
  if len(names) != models.n_labels:
    names = ["background"] + [f"label{i}" for i in range(1, models.n_labels)]
  return names


def save_strips(out_dir: str | os.PathLike, models: Any, params: Any, r_samples: Any,
                class_idx: Any, units: Sequence[int], *, lo: Any, hi: Any, steps: int,
                sample_ids: Any = None, rows: int = 8, chunk: int = 64,
                mesh: jax.sharding.Mesh | None = None) -> list[pathlib.Path]:
  """Image strips (rows: samples round-robin over classes, columns: steps) for `units`.

  Writes strips/unit_UUUU.png and .npz ('images' [rows, steps, H, W, 3] uint8, 'values'
  [steps], 'sample_idx' [rows]); units whose PNG exists are skipped.

  Returns:
    the PNG paths, one per unit.
  """
  r_samples = np.asarray(r_samples, np.float32)
  class_idx = np.asarray(class_idx, np.int32)
  sample_ids = np.arange(len(r_samples)) if sample_ids is None else np.asarray(sample_ids)
  values = sweep_values(lo, hi, steps)
  mesh = mesh or jobs.data_mesh()
  size = jobs.padded_size(chunk, mesh)
  classes = tuple(int(c) for c in np.unique(class_idx))
  img_fn = make_step(models, classes, mesh, True)
  strip_dir = pathlib.Path(out_dir) / STRIP_DIR
  strip_dir.mkdir(parents=True, exist_ok=True)
  picked = strip_samples(class_idx, rows)
  repl = NamedSharding(mesh, P())
  params = jax.device_put(params, repl)
  r_dev, v_dev = jax.device_put(r_samples, repl), jax.device_put(values, repl)
  written = []
  for unit in units:
    png = strip_dir / f"unit_{int(unit):04d}.png"
    written.append(png)
    if png.exists():
      continue
    s = np.repeat(picked, steps).astype(np.int32)
    k = np.tile(np.arange(steps, dtype=np.int32), picked.size)
    u = np.full_like(s, int(unit))
    images = render_triples(img_fn, params, r_dev, v_dev, s, u, k, chunk=size, mesh=mesh)["images"]
    images = images.reshape(picked.size, steps, *images.shape[1:])
    files.write_npz(strip_dir / f"unit_{int(unit):04d}.npz",
                    {"images": images, "values": values[unit], "sample_idx": sample_ids[picked]})
    n_r, n_k, h, w = images.shape[:4]  # rows = samples, columns = steps
    grid = images.transpose(0, 2, 1, 3, 4).reshape(n_r * h, n_k * w, 3)
    files.write_atomic(png, lambda f, g=grid: Image.fromarray(g).save(f, format="PNG"))
  return written


def load(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads `out_dir/sweep.npz` (see `run_sweep` for the arrays)."""
  path = pathlib.Path(out_dir) / SWEEP_FILE
  if not path.exists():
    raise SweepError(f"no finished sweep at {out_dir} ({SWEEP_FILE} is missing; rerun the same "
                     "sweep command to resume)")
  try:
    return files.read_npz(path)
  except files.FileError as e:
    raise SweepError(str(e)) from e


# ------------------------------------------------------------------------------------- driver


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
  """A sweep from a pair directory (flags of experiments/sweep_units.py).

  Attributes:
    units: unit specification for `parse_units` ('all', '0-99', '3,5,7').
    samples_per_class: base samples per class (the first draws of each class).
    steps: values per unit (2 = the range's endpoints).
    chunk: triples per compiled call.
    shard_size: triples per shard file.
    range_from: 'samples' (reference: [min, max] over the base samples) or 'pairs'.
    classes: classes to take samples from (None: every class of the pair file).
    strip_units: units whose image strips are saved.
    strip_top: additionally, strips of this many units with the largest label changes.
    strip_rows: samples per strip.
    motion: also the motion fields of the strip units (`linkjax.sweep_motion`: per-part
      displacement summaries in motion.npz / motion.json, quiver strips).
    motion_seed: seed of the motion's affine fits.
  """
  units: str = "all"
  samples_per_class: int = 100
  steps: int = 3
  chunk: int = 64
  shard_size: int = 4096
  range_from: str = "samples"
  classes: tuple[int, ...] | None = None
  strip_units: tuple[int, ...] = ()
  strip_top: int = 0
  strip_rows: int = 8
  motion: bool = False
  motion_seed: int = 0

  def __post_init__(self):
    if self.range_from not in RANGE_FROM:
      raise ValueError(f"range_from must be one of {RANGE_FROM}, got {self.range_from!r}")
    for name in ("samples_per_class", "chunk", "shard_size", "strip_rows"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.steps < 2:
      raise ValueError(f"steps must be >= 2, got {self.steps}")
    if self.motion and not (self.strip_units or self.strip_top):
      raise ValueError("motion is computed for the strip units: give strip_units or strip_top")


def base_samples(data: Mapping[str, np.ndarray], config: SweepConfig, source: Any = "pairs"
                 ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The sweep's base samples of a pair file (`pairs.load`): (present classes, rows [S],
  r_samples [S, R], lo [R], hi [R]); `source` names the file in errors."""
  present = [int(c) for c in (config.classes if config.classes is not None
                              else np.unique(data["class_idx"]))
             if np.any(data["class_idx"] == c)]
  if not present:
    raise ValueError(f"none of the classes {list(config.classes or [])} has pairs in {source}")
  rows = select_samples(data["class_idx"], data["draw_idx"], config.samples_per_class, present)
  r_samples = np.asarray(data["r"], np.float32)[rows]
  lo, hi = unit_ranges(r_samples if config.range_from == "samples" else data["r"])
  return present, rows, r_samples, lo, hi


def run(pairs_dir: str | os.PathLike, models: bundle_lib.ModelBundle, params: Any,
        out_dir: str | os.PathLike, config: SweepConfig, *, min_area: float | None = None,
        mesh: jax.sharding.Mesh | None = None, overwrite: bool = False,
        log_every_s: float = 30.0) -> dict[str, Any]:
  """The sweep of a pair directory's base samples, then the strips; returns a summary.

  Args:
    pairs_dir: pair directory; base samples = the first `samples_per_class` draws per class.
    models, params: a bundle with link, generator, classifier and segmenter.
    out_dir: sweep directory.
    config: what to sweep.
    min_area: minimum part area for ranking units by label change (`strip_top`); None: the
      reference's 20 px at 128 x 128 scaled to the mask resolution.
    mesh, overwrite, log_every_s: as `run_sweep`.
  Returns:
    {'n_units', 'n_samples', 'steps', 'n_images', 'strip_units', 'timing' (of `run_sweep`;
     empty for a finished sweep), 'arrays': sweep.npz arrays}. The motion fields of the strip
    units (config.motion) are a separate pass: `sweep_motion.run_config`.
  """
  data = pairs.load(pairs_dir)
  present, rows, r_samples, lo, hi = base_samples(data, config, pairs_dir)
  unit_list = parse_units(config.units, r_samples.shape[1])
  logging.info("sweep: %d base samples from %s (%d classes), %d units", rows.size, pairs_dir,
               len(present), unit_list.size)
  timing: dict[str, float] = {}
  arrays = run_sweep(out_dir, models, params, r_samples, data["class_idx"][rows], units=unit_list,
                     steps=config.steps, chunk=config.chunk, shard_size=config.shard_size,
                     lo=lo, hi=hi, sample_ids=rows, classes=present, mesh=mesh,
                     overwrite=overwrite, log_every_s=log_every_s, timing=timing)
  strips = list(config.strip_units)
  if config.strip_top:
    area = unit_analysis.min_area_for(int(arrays["mask_resolution"]), min_area)
    strength = unit_analysis.normalise_vectors(unit_analysis.unit_vectors(
        unit_analysis.label_changes(arrays["metrics"], area))).sum(axis=1)
    strips += [int(unit_list[i]) for i in np.argsort(-strength)[:config.strip_top]
               if int(unit_list[i]) not in strips]
  if strips and jax.process_index() == 0:  # one process renders the few strip images
    save_strips(out_dir, models, params, r_samples, data["class_idx"][rows], strips, lo=lo,
                hi=hi, steps=config.steps, sample_ids=rows,
                rows=min(config.strip_rows, len(present) * config.samples_per_class),
                chunk=config.chunk, mesh=mesh)
  return {"n_units": int(unit_list.size), "n_samples": int(rows.size), "steps": config.steps,
          "n_images": int(rows.size * unit_list.size * config.steps), "strip_units": strips,
          "timing": timing, "arrays": arrays}
