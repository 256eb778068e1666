"""(w, r) pair generation: z -> w -> image -> classifier -> (r, logits), resumable and sharded.

The models are anything with the `ModelBundle` method `pair_outputs(params, z [B, z_dim],
class_idx [B], psi) -> {'w', 'r', 'logits'}` and a `z_dim` (a `ModelBundle`, or a toy from
`linkjax.testing`); they are a static argument of the compiled step and their weights `params`
a traced one. The run directory, its lock, shards and resumption are `linkjax.jobs.RunDir`.

Determinism. The latent of draw `d` of class `c` under seed `s` is

    z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(jax.random.key(s), c), d), (z_dim,))

(`derive_z`), computed per sample under `vmap`, so no z depends on which batch, device or process
computed it. Draw indices of a class are visited in blocks of `batch` (block k holds draws
k*batch ... k*batch+batch-1); every draw index is used at most once, so no z is ever duplicated.
With `keep='correct'` a draw is accepted iff argmax(logits) == class; per class the first
`n_per_class` accepted draws *in draw order* are kept. The selection (which draws, their z) is
therefore independent of the batch size, the number of devices and of interruptions; w, r and
logits agree across batch sizes and device counts up to XLA's kernel rounding, which may depend on
the batch shape (~1e-7 relative), and a resumed run (same arguments, batch included) is
bit-identical to an uninterrupted one. Draw indices >= `max_draws_per_class` are never used: a
class that is rarely classified correctly stops there, with a logged warning, and keeps what it
found.

On disk (`out_dir`):
  run.json           the run's kind and arguments; a rerun with others is refused unless
                     `overwrite=True` (then everything of the old run is deleted).
  shards/c{class}_b{block}.npz
                     the accepted rows of one finished block (plus `n_drawn`), stamped with the
                     run's identity. A rerun reuses finished shards and computes only the missing
                     ones: killing the process at any moment and rerunning yields bit-identical
                     final arrays.
  pairs.npz          the final arrays: w [N, w_dim], r [N, R], class_idx [N] int32,
                     z [N, z_dim], logits [N, C], draw_idx [N] int32; ordered by class (in the
                     order given), then draw index.
  summary.json       per class: accepted, drawn, acceptance rate, whether the draw limit was hit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linkjax import batching, files, jobs

PAIR_KEYS = ("w", "r", "class_idx", "z", "logits", "draw_idx")
KEEP_MODES = ("correct", "all")
PAIRS_FILE = "pairs.npz"
SUMMARY_FILE = "summary.json"
FORMAT_VERSION = 2


class PairsError(jobs.JobError):
  """Missing, incomplete or conflicting pair-generation output."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairConfig:
  """What pairs to make.

  Attributes:
    classes: class indices, in output order; no duplicates.
    n_per_class: pairs to keep per class.
    seed: non-negative seed of the latents (`derive_z`).
    batch: draw indices per block (before padding to a multiple of the device count).
    psi: truncation towards the class's mean w (the paper: 0.7).
    keep: 'correct' keeps a draw iff argmax(logits) == class; 'all' keeps every draw.
    max_draws_per_class: draw indices >= this are never used (None: 10 * n_per_class).
  """
  classes: tuple[int, ...]
  n_per_class: int
  seed: int = 0
  batch: int = 64
  psi: float = 0.7
  keep: str = "correct"
  max_draws_per_class: int | None = None

  def __post_init__(self):
    classes = tuple(int(c) for c in self.classes)
    object.__setattr__(self, "classes", classes)
    if not classes:
      raise ValueError("no classes given")
    if len(set(classes)) != len(classes):
      raise ValueError(f"duplicate classes in {list(classes)}")
    if min(classes) < 0:
      raise ValueError(f"negative class index in {list(classes)}")
    if self.n_per_class < 1:
      raise ValueError(f"n_per_class must be >= 1, got {self.n_per_class}")
    if not 0 <= self.seed < 2**31:
      raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
    if self.batch < 1:
      raise ValueError(f"batch must be >= 1, got {self.batch}")
    if not math.isfinite(self.psi):
      raise ValueError(f"psi must be a finite number, got {self.psi}")
    if self.keep not in KEEP_MODES:
      raise ValueError(f"keep must be one of {KEEP_MODES}, got {self.keep!r}")
    if self.max_draws is not None and not 1 <= self.max_draws < 2**31:
      raise ValueError(f"max_draws_per_class must be in [1, 2**31), got {self.max_draws}")

  @property
  def max_draws(self) -> int:
    return (10 * self.n_per_class if self.max_draws_per_class is None
            else int(self.max_draws_per_class))


def check_classes(models: Any, classes: Sequence[int]) -> None:
  """Raises ValueError unless every class index is valid for the models' generator/classifier."""
  limits = {}
  for name, attr in (("generator", "generator_config"), ("classifier", "classifier_config")):
    cfg = getattr(models, attr, None)
    if cfg is not None:
      limits[name] = int(cfg.c_dim if name == "generator" else cfg.num_classes)
  if not limits and getattr(models, "num_classes", None) is not None:
    limits["models"] = int(models.num_classes)
  for name, n in limits.items():
    bad = [int(c) for c in classes if not 0 <= int(c) < n]
    if bad:
      raise ValueError(f"class indices {bad[:5]} are outside the {name}'s {n} classes "
                       f"(0..{n - 1})")


def derive_z(seed: int | jax.Array, class_idx: jax.Array, draw_idx: jax.Array,
             z_dim: int) -> jax.Array:
  """The latent of each (seed, class, draw index), independent of batching.

  Args:
    seed: non-negative int32 seed.
    class_idx: [B] integer class indices.
    draw_idx: [B] integer draw indices.
    z_dim: latent size.
  Returns:
    z: [B, z_dim] float32, row i = normal(fold_in(fold_in(key(seed), class_idx[i]), draw_idx[i])).
  """
  base = jax.random.key(seed)

  def one(c, d):
    return jax.random.normal(jax.random.fold_in(jax.random.fold_in(base, c), d), (z_dim,),
                             dtype=jnp.float32)

  return jax.vmap(one)(class_idx, draw_idx)


@functools.lru_cache(maxsize=16)
def make_step(models: Any, psi: float, mesh: jax.sharding.Mesh):
  """The compiled block step `(params, seed, class_idx [B], draw_idx [B]) -> dict` for `mesh`.

  B must be a multiple of the mesh size. Returns w, r, logits and z, sharded on 'data'. The
  models run in micro-batches sized for the mesh (`batching.default_micro_batch`: on CPU the
  generator's temporaries stay in cache). Cached per (models, psi, mesh), so repeated runs
  compile once per batch shape.
  """
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  outputs = batching.micro_batched(
      lambda p, zc: models.pair_outputs(p, zc[0], zc[1], psi=psi),
      batching.default_micro_batch(mesh.devices.size))

  @functools.partial(jax.jit, in_shardings=(repl, repl, data, data), out_shardings=data)
  def step(params, seed, class_idx, draw_idx):
    z = derive_z(seed, class_idx, draw_idx, models.z_dim)
    out = outputs(params, (z, class_idx))
    return {"w": out["w"], "r": out["r"], "logits": out["logits"], "z": z}

  return step


def _shard_name(class_idx: int, block: int) -> str:
  return f"c{class_idx:05d}_b{block:07d}"


def generate_pairs(models: Any, params: Any, out_dir: str | os.PathLike, config: PairConfig, *,
                   mesh: jax.sharding.Mesh | None = None, overwrite: bool = False,
                   run_info: Mapping[str, Any] | None = None,
                   log_every_s: float = 10.0) -> dict[str, np.ndarray]:
  """Generates (w, r) pairs into `out_dir`, resuming a previous identical run; see module doc.

  Args:
    models: a `ModelBundle` (generator + classifier) or a toy with `pair_outputs` and `z_dim`.
    params: their weights.
    out_dir: output directory (created).
    config: which pairs (`PairConfig`).
    mesh: 1-D mesh with axis 'data' (default: all devices).
    overwrite: delete a previous run in `out_dir` with other arguments instead of failing.
    run_info: extra JSON-serialisable identification of the models (e.g. checkpoint paths),
      stored in run.json and compared on resume.
    log_every_s: seconds between progress lines.
  Returns:
    The arrays of pairs.npz (see `load`).
  """
  check_classes(models, config.classes)
  out_dir = pathlib.Path(out_dir)
  record = {"format": FORMAT_VERSION, **dataclasses.asdict(config),
            "max_draws_per_class": config.max_draws, "z_dim": int(models.z_dim),
            "models": {**models.describe(), **dict(run_info or {})}}
  with jobs.RunDir(out_dir, "pairs", record, (PAIRS_FILE, SUMMARY_FILE), overwrite=overwrite,
                   error=PairsError) as run:
    if (out_dir / PAIRS_FILE).exists() and (out_dir / SUMMARY_FILE).exists():
      logging.info("%s is already complete; loading it", out_dir / PAIRS_FILE)
      return load(out_dir)
    result = _generate(models, params, run, config, mesh or jobs.data_mesh(), log_every_s)
    if result is None:  # another process assembles
      run.wait_output(SUMMARY_FILE)
      result = load(out_dir)
    return result


def _generate(models, params, run: jobs.RunDir, config: PairConfig, mesh, log_every_s):
  batch, n_per_class, max_draws = config.batch, config.n_per_class, config.max_draws
  padded = jobs.padded_size(batch, mesh)
  step = make_step(models, float(config.psi), mesh)
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = jax.device_put(params, repl)
  seed_arr = np.int32(config.seed)
  logging.info("pair generation: %d classes x %d, batch %d (padded to %d over %d devices), keep=%s,"
               " max %d draws per class -> %s", len(config.classes), n_per_class, batch, padded,
               mesh.devices.size, config.keep, max_draws, run.path)
  compiled = []  # compiled ahead of the first computed block, so images/s excludes compilation
  stats = {"computed": 0, "t_compute": 0.0, "t_compile": 0.0}

  def submit(c: int, block: int):
    start = block * batch
    draws = np.arange(start, start + padded, dtype=np.int64)
    draws[batch:] = start + batch - 1  # padding rows repeat the block's last draw
    # Committed to this process's devices: with several processes jit refuses host arrays.
    args = (params, jax.device_put(seed_arr, repl),
            jax.device_put(np.full(padded, c, np.int32), data),
            jax.device_put(draws.astype(np.int32), data))
    if not compiled:
      t0 = time.perf_counter()
      compiled.append(step.lower(*args).compile())
      stats["t_compile"] = time.perf_counter() - t0
      stats["t_compute"] -= stats["t_compile"]  # this call runs inside a timed block
      logging.info("compiled the pair step in %.1f s", stats["t_compile"])
    return compiled[0](*args)

  per_class, summary = {}, {}
  n_blocks_max = -(-max_draws // batch)
  procs = run.processes
  # Classes are the unit of work across processes; process 0 also reads the others' shards.
  mine = [c for i, c in enumerate(config.classes) if procs.owns(i)]
  progress = jobs.Progress(len(mine) * n_per_class, "pairs", every_s=log_every_s,
                           label="pairs ")
  for i, c in enumerate(config.classes):
    owned = procs.owns(i)
    if not owned and not procs.main:
      continue
    parts, accepted, drawn, block = [], 0, 0, 0
    inflight: dict[int, Any] = {}
    while accepted < n_per_class and block < n_blocks_max:
      shard = run.read_shard(_shard_name(c, block))
      if shard is None and not owned:
        shard = run.wait_shard(_shard_name(c, block))
      elif shard is None:
        t0 = time.perf_counter()
        out = inflight.pop(block, None)
        if out is None:
          out = submit(c, block)
        # Block `block` can accept at most this many; if that cannot finish the class the next
        # block is certainly needed, so dispatch it now and overlap it with this block's I/O.
        n_valid = min(batch, max_draws - block * batch)
        nxt = block + 1
        if (n_per_class - accepted > n_valid and nxt < n_blocks_max and nxt not in inflight
            and run.read_shard(_shard_name(c, nxt)) is None):
          inflight[nxt] = submit(c, nxt)
        shard = _block_rows(jax.device_get(out), c, block * batch, n_valid, config.keep)
        run.write_shard(_shard_name(c, block), shard)
        stats["computed"] += n_valid
        stats["t_compute"] += time.perf_counter() - t0
      else:
        inflight.pop(block, None)
      drawn += int(shard["n_drawn"])
      if owned:
        progress.update(min(len(shard["draw_idx"]), n_per_class - accepted))
      accepted += len(shard["draw_idx"])
      parts.append(shard)
      block += 1
    hit_limit = accepted < n_per_class
    rows = {k: np.concatenate([p[k] for p in parts])[:n_per_class] for k in PAIR_KEYS}
    per_class[c] = rows
    logging.info("class %d: accepted %d/%d, drawn %d (acceptance %.1f%%)", c,
                 min(accepted, n_per_class), n_per_class, drawn, 100.0 * accepted / max(drawn, 1))
    if hit_limit and owned:
      progress.update(n_per_class - accepted)
      logging.warning(
          "class %d: only %d of %d pairs accepted after max_draws_per_class=%d draws "
          "(acceptance %.2f%%); keeping what was found", c, accepted, n_per_class, max_draws,
          100.0 * accepted / max(drawn, 1))
    summary[str(c)] = {"accepted": int(min(accepted, n_per_class)), "drawn": drawn,
                       "acceptance_rate": accepted / max(drawn, 1), "hit_draw_limit": hit_limit}

  if not procs.main:
    return None
  result = {k: np.concatenate([per_class[c][k] for c in config.classes]) for k in PAIR_KEYS}
  run.write_output(PAIRS_FILE, result)
  images_per_s = stats["computed"] / stats["t_compute"] if stats["t_compute"] > 0 else None
  run.write_json(SUMMARY_FILE, {
      "classes": summary, "n_pairs": int(len(result["draw_idx"])),
      "images_per_s_this_process": images_per_s, "compile_s_this_process": stats["t_compile"],
      "devices": int(mesh.devices.size)})
  logging.info("wrote %d pairs to %s", len(result["draw_idx"]), run.path / PAIRS_FILE)
  return result


def _block_rows(out: Mapping[str, np.ndarray], c: int, start: int, n_valid: int,
                keep: str) -> dict[str, np.ndarray]:
  """The kept rows of one block's outputs (numpy), with the block's number of valid draws."""
  out = {k: np.asarray(v)[:n_valid] for k, v in out.items()}
  for k in ("w", "r", "logits"):
    bad = np.flatnonzero(~np.all(np.isfinite(out[k].reshape(n_valid, -1)), axis=1))
    if bad.size:
      raise PairsError(f"class {c}: the models produced non-finite {k} for draws "
                       f"{(start + bad[:5]).tolist()}; check the checkpoints and psi")
  mask = (np.argmax(out["logits"], axis=-1) == c) if keep == "correct" else np.ones(n_valid, bool)
  draws = np.arange(start, start + n_valid, dtype=np.int32)
  return {"w": out["w"][mask], "r": out["r"][mask], "logits": out["logits"][mask],
          "z": out["z"][mask], "draw_idx": draws[mask],
          "class_idx": np.full(int(mask.sum()), c, np.int32), "n_drawn": np.int64(n_valid)}


def load(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads `out_dir/pairs.npz`.

  Args:
    out_dir: a directory written by `generate_pairs`.
  Returns:
    {'w': [N, w_dim] float32, 'r': [N, R] float32, 'class_idx': [N] int32, 'z': [N, z_dim] float32,
     'logits': [N, C] float32, 'draw_idx': [N] int32}, ordered by class then draw index.
  Raises:
    PairsError: the directory, or its final file, is missing (e.g. an unfinished run), damaged
      or inconsistent.
  """
  out_dir = pathlib.Path(out_dir)
  path = out_dir / PAIRS_FILE
  if not path.exists():
    if (out_dir / jobs.RUN_FILE).exists():
      raise PairsError(f"{out_dir} holds an unfinished pair run ({PAIRS_FILE} is missing); rerun "
                       "the same make_pairs command to resume it")
    raise PairsError(f"no pairs at {out_dir}: {path} does not exist")
  try:
    arrays = files.read_npz(path)
  except files.FileError as e:
    raise PairsError(f"{e}; rerun make_pairs with --overwrite to recompute it") from e
  missing = [k for k in PAIR_KEYS if k not in arrays]
  if missing:
    raise PairsError(f"{path} is incomplete: missing arrays {missing}")
  n = {k: len(arrays[k]) for k in PAIR_KEYS}
  if len(set(n.values())) != 1:
    raise PairsError(f"{path} is inconsistent: row counts {n}")
  for k in ("w", "r"):
    if arrays[k].ndim != 2 or not np.issubdtype(arrays[k].dtype, np.floating):
      raise PairsError(f"{path}: {k} must be a 2-D float array, got {arrays[k].dtype} "
                       f"{arrays[k].shape}")
  return {k: arrays[k] for k in PAIR_KEYS}


def load_summary(out_dir: str | os.PathLike) -> dict[str, Any]:
  """The summary.json of a finished pair run (per-class acceptance)."""
  return files.read_json(pathlib.Path(out_dir) / SUMMARY_FILE)
