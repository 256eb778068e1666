"""(w, r) pair generation: z -> w -> image -> classifier -> (r, logits), resumable and sharded.

The core (`generate_pairs`) knows nothing about models. It drives a pure *pipeline*
`(z [B, z_dim], class_idx [B]) -> {'w': [B, w_dim], 'r': [B, R], 'logits': [B, C]}`, given either as
a plain JAX-traceable callable (tests, toys) or as a `Pipeline` that carries its parameters
separately so that they enter the compiled step as arguments, never as baked-in constants
(`model_pipeline` builds one from a StyleGAN-XL generator and a ResNet classifier).

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
  run.json           the arguments of the run; a rerun with other arguments is refused unless
                     `overwrite=True` (then everything of the old run is deleted).
  shards/c{class}_b{block}.npz
                     the accepted rows of one finished block (plus `n_drawn`), written atomically
                     (temporary file, fsync, `os.replace`). A rerun reuses finished shards and
                     computes only the missing ones: killing the process at any moment and rerunning
                     yields bit-identical final arrays.
  pairs.npz          the final arrays (written atomically once every class is finished):
                     w [N, w_dim], r [N, R], class_idx [N] int32, z [N, z_dim], logits [N, C],
                     draw_idx [N] int32; ordered by class (in the order given), then draw index.
  summary.json       per class: accepted, drawn, acceptance rate, whether the draw limit was hit.

One process per output directory at a time (a starting run deletes stray temporary files).

Sharding: the batch axis of every block is split over a 1-D device mesh with axis 'data'
(`jax.make_mesh((n,), ('data',))`); blocks are padded to a multiple of the device count and the
padding is dropped after the step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linkjax import rundir

PAIR_KEYS = ("w", "r", "class_idx", "z", "logits", "draw_idx")
KEEP_MODES = ("correct", "all")
RUN_FILE = "run.json"
PAIRS_FILE = "pairs.npz"
SUMMARY_FILE = "summary.json"
SHARD_DIR = "shards"
FORMAT_VERSION = 1

# Test hook: "N:before" / "N:after" sends SIGKILL to this process around the N-th atomic file
# write (1-based, counting run.json, shards, pairs.npz, summary.json), before or after os.replace.
# Lets the resume test kill a run at precise points, including between writing and publishing.
_KILL_ENV = "LINKJAX_PAIRS_TEST_KILL_AT"


class PairsError(RuntimeError):
  """Missing, incomplete or conflicting pair-generation output."""


PipelineFn = Callable[[jax.Array, jax.Array], Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ill-defined
class Pipeline:
  """A pure pair pipeline whose parameters travel as a jit argument.

  Attributes:
    apply: `(params, z [B, z_dim] float32, class_idx [B] int32) -> {'w': [B, w_dim],
      'r': [B, R], 'logits': [B, C]}`; must be JAX-traceable and per-sample (row i of the
      outputs depends only on row i of the inputs).
    params: pytree of arrays passed to `apply` (e.g. NNX states); replicated on every device.
    z_dim: latent size.
  """

  apply: Callable[[Any, jax.Array, jax.Array], Mapping[str, jax.Array]]
  params: Any
  z_dim: int

  @functools.cached_property
  def _jitted(self):
    return jax.jit(self.apply)

  def __call__(self, z: jax.Array, class_idx: jax.Array) -> dict[str, jax.Array]:
    """Runs the pipeline on one batch (jit-compiled, parameters as arguments)."""
    return dict(self._jitted(self.params, z, class_idx))


def as_pipeline(pipeline: Pipeline | PipelineFn, z_dim: int | None = None) -> Pipeline:
  """Wraps a plain `(z, class_idx) -> dict` callable as a parameter-free `Pipeline`."""
  if isinstance(pipeline, Pipeline):
    if z_dim is not None and z_dim != pipeline.z_dim:
      raise ValueError(f"z_dim={z_dim} disagrees with the pipeline's z_dim={pipeline.z_dim}")
    return pipeline
  if z_dim is None:
    raise ValueError("a plain pipeline callable needs z_dim")
  fn = pipeline
  return Pipeline(apply=lambda params, z, c: fn(z, c), params=(), z_dim=int(z_dim))


def model_pipeline(generator: nnx.Module, classifier: nnx.Module, psi: float) -> Pipeline:
  """The paper's pipeline: z -> ws (per-class truncation) -> image -> uint8 -> classifier -> r.

  `ws = G.mapping(z, class_idx, psi=psi)`, `w = ws[:, 0]`, `img = G.synthesis(ws)`, then the exact
  classifier input path `preprocess.classifier_input(preprocess.to_uint8(img), resize, crop)` with
  the classifier config's `resize`/`crop`, and `logits, acts = classifier(x)`, `r = acts['r']`.

  Args:
    generator: a `linkjax.models.stylegan_xl.StyleGANXL`.
    classifier: a `linkjax.models.resnet.ResNet` (evaluation mode).
    psi: truncation psi (towards the class's w_avg).

  Returns:
    A `Pipeline` whose params are `{'generator': state, 'classifier': state}` (nnx.split), merged
    back inside the compiled function.
  """
  from linkjax import preprocess  # imported lazily so that toys need no model code

  g_def, g_state = nnx.split(generator)
  c_def, c_state = nnx.split(classifier)
  cfg = classifier.config
  resize = getattr(cfg, "resize", 256)
  crop = getattr(cfg, "crop", 224)
  psi = float(psi)

  def apply(params, z, class_idx):
    g = nnx.merge(g_def, params["generator"])
    c = nnx.merge(c_def, params["classifier"])
    ws = g.mapping(z, class_idx, psi=psi)
    img = g.synthesis(ws)
    x = preprocess.classifier_input(preprocess.to_uint8(img), resize=resize, crop=crop)
    logits, acts = c(x)
    return {"w": ws[:, 0], "r": acts["r"], "logits": logits}

  return Pipeline(apply=apply, params={"generator": g_state, "classifier": c_state},
                  z_dim=int(generator.config.z_dim))


def toy_pipeline(*, z_dim: int = 8, w_dim: int = 6, r_dim: int = 5, num_classes: int = 10,
                 seed: int = 0, acceptance: float = 0.5) -> Pipeline:
  """A tiny stand-in for generator + classifier (tests, benchmarks, `--toy_world`).

  w = tanh(z A) + 0.1 b[class], r = w B, logits = (r C) / |r| + bias * onehot(class). Given r the
  unbiased logits are independent standard normals across classes and, r being nearly symmetric,
  each class's own logit is centred near 0; the class bias is the median of the maximum of
  num_classes - 1 standard normals, so argmax(logits) == class for roughly `acceptance` of the
  draws of every class.

  Args:
    z_dim, w_dim, r_dim, num_classes: sizes.
    seed: seed of the fixed random weights.
    acceptance: approximate fraction of draws classified as their own class, in (0, 1).

  Returns:
    A `Pipeline` with the weights as params.
  """
  # numpy weights: no XLA compilation (threefry compiles for about a second per shape on CPU).
  rng = np.random.default_rng(seed)
  params = {
      "a": (rng.standard_normal((z_dim, w_dim)) / np.sqrt(z_dim)).astype(np.float32),
      "b": rng.standard_normal((num_classes, w_dim)).astype(np.float32),
      "bm": rng.standard_normal((w_dim, r_dim)).astype(np.float32),
      "c": rng.standard_normal((r_dim, num_classes)).astype(np.float32),
  }
  params = {k: jnp.asarray(v) for k, v in params.items()}
  m = num_classes - 1
  bias = jnp.float32(statistics.NormalDist().inv_cdf((1.0 - acceptance) ** (1.0 / m))
                     if m >= 1 else 0.0)

  def apply(p, z, class_idx):
    w = jnp.tanh(z @ p["a"]) + jnp.float32(0.1) * p["b"][class_idx]
    r = w @ p["bm"]
    norm = jnp.sqrt(jnp.sum(r * r, axis=-1, keepdims=True)) + jnp.float32(1e-6)
    logits = (r @ p["c"]) / norm + bias * jax.nn.one_hot(class_idx, num_classes, dtype=jnp.float32)
    return {"w": w, "r": r, "logits": logits}

  return Pipeline(apply=apply, params=params, z_dim=z_dim)


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


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices).

  Auto axis types: the pipelines (embedding gathers, convolutions) are written without sharding
  annotations, and GSPMD propagates the batch split through them.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def make_step(pipeline: Pipeline, mesh: jax.sharding.Mesh):
  """The compiled block step `(params, seed, class_idx [B], draw_idx [B]) -> dict` for `mesh`.

  B must be a multiple of the mesh size. Returns w, r, logits and z, sharded on 'data'. Cached per
  (pipeline.apply, z_dim, mesh), so repeated runs with one pipeline compile once per batch shape.
  """
  return _make_step(pipeline.apply, pipeline.z_dim, mesh)


@functools.lru_cache(maxsize=16)
def _make_step(apply, z_dim: int, mesh: jax.sharding.Mesh):
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())

  @functools.partial(jax.jit, in_shardings=(repl, repl, data, data), out_shardings=data)
  def step(params, seed, class_idx, draw_idx):
    z = derive_z(seed, class_idx, draw_idx, z_dim)
    out = apply(params, z, class_idx)
    return {"w": out["w"], "r": out["r"], "logits": out["logits"], "z": z}

  return step


# ----------------------------------------------------------------------------------------- files


def _kill_hook(count: int, phase: str) -> None:
  spec = os.environ.get(_KILL_ENV)
  if spec and spec == f"{count}:{phase}":
    os.kill(os.getpid(), signal.SIGKILL)


class _Writer:
  """Atomic file writes (temporary file, fsync, os.replace), counted for the test kill hook."""

  def __init__(self):
    self.count = 0

  def write_bytes(self, path: pathlib.Path, writer: Callable[[Any], None]) -> None:
    self.count += 1
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
      writer(f)
      f.flush()
      os.fsync(f.fileno())
    _kill_hook(self.count, "before")
    os.replace(tmp, path)
    _kill_hook(self.count, "after")

  def write_npz(self, path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    self.write_bytes(path, lambda f: np.savez(f, **arrays))

  def write_json(self, path: pathlib.Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    self.write_bytes(path, lambda f: f.write(data))


def _shard_path(out_dir: pathlib.Path, class_idx: int, block: int) -> pathlib.Path:
  return out_dir / SHARD_DIR / f"c{class_idx:05d}_b{block:07d}.npz"


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/npy errors: a damaged file, not a bug of ours
    raise PairsError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it to recompute "
                     "it or rerun with overwrite") from e


def _remove_tmp_files(out_dir: pathlib.Path) -> None:
  for d in (out_dir, out_dir / SHARD_DIR):
    if d.is_dir():
      for p in d.glob(".*.tmp*"):
        p.unlink(missing_ok=True)


def _prepare_dir(out_dir: pathlib.Path, run: dict[str, Any], overwrite: bool,
                 writer: _Writer) -> None:
  run_file = out_dir / RUN_FILE
  if run_file.exists():
    if rundir.must_overwrite(run_file, run, overwrite=overwrite, what="a pair run",
                             error=PairsError):
      logging.warning("overwriting the previous pair run in %s", out_dir)
      _clear(out_dir)
  elif out_dir.exists() and any(
      (out_dir / n).exists() for n in (SHARD_DIR, PAIRS_FILE, SUMMARY_FILE)):
    if not overwrite:
      raise PairsError(f"{out_dir} holds pair files but no {RUN_FILE}; use overwrite=True "
                       "(--overwrite) or another directory")
    _clear(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  _remove_tmp_files(out_dir)
  if not run_file.exists():
    writer.write_json(run_file, run)
  (out_dir / SHARD_DIR).mkdir(exist_ok=True)


def _clear(out_dir: pathlib.Path) -> None:
  for n in (PAIRS_FILE, SUMMARY_FILE, RUN_FILE):
    (out_dir / n).unlink(missing_ok=True)
  shutil.rmtree(out_dir / SHARD_DIR, ignore_errors=True)


# ------------------------------------------------------------------------------------ generation


def _validate(classes, n_per_class, seed, batch, keep, max_draws_per_class):
  classes = [int(c) for c in classes]
  if not classes:
    raise ValueError("no classes given")
  if len(set(classes)) != len(classes):
    raise ValueError(f"duplicate classes in {classes}")
  if any(c < 0 for c in classes):
    raise ValueError(f"negative class index in {classes}")
  if n_per_class < 1:
    raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
  if not 0 <= seed < 2**31:
    raise ValueError(f"seed must be in [0, 2**31), got {seed}")
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  if keep not in KEEP_MODES:
    raise ValueError(f"keep must be one of {KEEP_MODES}, got {keep!r}")
  if max_draws_per_class < 1 or max_draws_per_class >= 2**31:
    raise ValueError(f"max_draws_per_class must be in [1, 2**31), got {max_draws_per_class}")
  return classes


def generate_pairs(
    pipeline: Pipeline | PipelineFn,
    out_dir: str | os.PathLike,
    *,
    classes: Sequence[int],
    n_per_class: int,
    seed: int,
    batch: int,
    keep: str = "correct",
    max_draws_per_class: int | None = None,
    z_dim: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    overwrite: bool = False,
    run_info: Mapping[str, Any] | None = None,
    log_every_s: float = 10.0,
) -> dict[str, np.ndarray]:
  """Generates (w, r) pairs into `out_dir`, resuming a previous identical run; see module doc.

  Args:
    pipeline: a `Pipeline`, or a pure traceable `(z [B, z_dim], class_idx [B]) -> dict(w, r,
      logits)` callable (then `z_dim` is required).
    out_dir: output directory (created).
    classes: class indices, in output order; no duplicates.
    n_per_class: number of pairs to keep per class.
    seed: non-negative seed of the latents (see `derive_z`).
    batch: draw indices per block (before padding to a multiple of the device count).
    keep: 'correct' keeps a draw iff argmax(logits) == class; 'all' keeps every draw.
    max_draws_per_class: draw indices >= this are never used (default: 10 * n_per_class).
    z_dim: latent size for a plain callable pipeline.
    mesh: 1-D mesh with axis 'data' (default: `make_data_mesh()`, all devices).
    overwrite: delete a previous run in `out_dir` with other arguments instead of failing.
    run_info: extra JSON-serialisable identification of the pipeline (e.g. checkpoint paths,
      psi), stored in run.json and compared on resume.
    log_every_s: seconds between progress log lines.

  Returns:
    The arrays of pairs.npz (see `load`).
  """
  pipe = as_pipeline(pipeline, z_dim)
  if max_draws_per_class is None:
    max_draws_per_class = 10 * n_per_class
  classes = _validate(classes, n_per_class, seed, batch, keep, max_draws_per_class)
  out_dir = pathlib.Path(out_dir)
  run = {
      "format": FORMAT_VERSION,
      "classes": classes,
      "n_per_class": int(n_per_class),
      "seed": int(seed),
      "batch": int(batch),
      "keep": keep,
      "max_draws_per_class": int(max_draws_per_class),
      "z_dim": int(pipe.z_dim),
      "pipeline": json.loads(json.dumps(dict(run_info or {}))),
  }
  writer = _Writer()
  _prepare_dir(out_dir, run, overwrite, writer)
  if (out_dir / PAIRS_FILE).exists() and (out_dir / SUMMARY_FILE).exists():
    logging.info("%s is already complete; loading it", out_dir / PAIRS_FILE)
    return load(out_dir)

  mesh = mesh if mesh is not None else make_data_mesh()
  n_dev = mesh.devices.size
  padded = -(-batch // n_dev) * n_dev
  step = make_step(pipe, mesh)
  params = jax.device_put(pipe.params, NamedSharding(mesh, P()))
  seed_arr = np.int32(seed)
  logging.info("pair generation: %d classes x %d, batch %d (padded to %d over %d devices), keep=%s,"
               " max %d draws per class -> %s", len(classes), n_per_class, batch, padded, n_dev,
               keep, max_draws_per_class, out_dir)

  compiled = []  # compiled ahead of the first computed block, so images/s excludes compilation

  def submit(c: int, block: int):
    start = block * batch
    draws = np.arange(start, start + padded, dtype=np.int64)
    # Padding rows repeat the block's last draw (their outputs are dropped).
    draws[batch:] = start + batch - 1
    args = (params, seed_arr, np.full(padded, c, np.int32), draws.astype(np.int32))
    if not compiled:
      t0 = time.perf_counter()
      compiled.append(step.lower(*args).compile())
      stats["t_compile"] = time.perf_counter() - t0
      stats["t_compute"] -= stats["t_compile"]  # this call runs inside a timed block
      logging.info("compiled the pair step in %.1f s", stats["t_compile"])
    return compiled[0](*args)

  per_class = {}
  summary = {}
  stats = {"computed": 0, "t_compute": 0.0, "t_compile": 0.0}
  last_log = [time.monotonic()]
  for c in classes:
    parts = []
    accepted = drawn = 0
    block = 0
    inflight: dict[int, Any] = {}
    n_blocks_max = -(-max_draws_per_class // batch)
    while accepted < n_per_class and block < n_blocks_max:
      path = _shard_path(out_dir, c, block)
      if path.exists():
        inflight.pop(block, None)
        shard = _read_npz(path)
        computed = False
      else:
        t0 = time.perf_counter()
        out = inflight.pop(block, None)
        if out is None:
          out = submit(c, block)
        # Block `block` can accept at most this many; if that cannot finish the class the next
        # block is certainly needed, so dispatch it now and overlap it with this block's I/O.
        n_valid = min(batch, max_draws_per_class - block * batch)
        nxt = block + 1
        if (n_per_class - accepted > n_valid and nxt < n_blocks_max and nxt not in inflight
            and not _shard_path(out_dir, c, nxt).exists()):
          inflight[nxt] = submit(c, nxt)
        out = jax.device_get(out)
        shard = _block_rows(out, c, block * batch, n_valid, keep)
        writer.write_npz(path, shard)
        computed = True
        stats["computed"] += n_valid
        stats["t_compute"] += time.perf_counter() - t0
      n_drawn = int(shard["n_drawn"])
      drawn += n_drawn
      accepted += len(shard["draw_idx"])
      parts.append(shard)
      block += 1
      now = time.monotonic()
      if computed and now - last_log[0] >= log_every_s:
        last_log[0] = now
        _log_progress(c, accepted, n_per_class, drawn, stats)
    hit_limit = accepted < n_per_class
    rows = {k: np.concatenate([p[k] for p in parts]) for k in PAIR_KEYS}
    rows = {k: v[:n_per_class] for k, v in rows.items()}
    per_class[c] = rows
    _log_progress(c, accepted, n_per_class, drawn, stats)
    if hit_limit:
      logging.warning(
          "class %d: only %d of %d pairs accepted after max_draws_per_class=%d draws "
          "(acceptance %.2f%%); keeping what was found", c, accepted, n_per_class,
          max_draws_per_class, 100.0 * accepted / max(drawn, 1))
    summary[str(c)] = {"accepted": int(min(accepted, n_per_class)), "drawn": drawn,
                       "acceptance_rate": accepted / max(drawn, 1), "hit_draw_limit": hit_limit}

  result = {k: np.concatenate([per_class[c][k] for c in classes]) for k in PAIR_KEYS}
  writer.write_npz(out_dir / PAIRS_FILE, result)
  images_per_s = stats["computed"] / stats["t_compute"] if stats["t_compute"] else None
  writer.write_json(out_dir / SUMMARY_FILE, {
      "classes": summary, "n_pairs": int(len(result["draw_idx"])),
      "images_per_s_this_process": images_per_s, "compile_s_this_process": stats["t_compile"],
      "devices": int(n_dev)})
  logging.info("wrote %d pairs to %s", len(result["draw_idx"]), out_dir / PAIRS_FILE)
  return result


def _block_rows(out: Mapping[str, np.ndarray], c: int, start: int, n_valid: int,
                keep: str) -> dict[str, np.ndarray]:
  """The kept rows of one block's outputs (numpy), with the block's number of valid draws."""
  out = {k: np.asarray(v)[:n_valid] for k, v in out.items()}
  if keep == "correct":
    mask = np.argmax(out["logits"], axis=-1) == c
  else:
    mask = np.ones(n_valid, bool)
  draws = np.arange(start, start + n_valid, dtype=np.int32)
  return {
      "w": out["w"][mask], "r": out["r"][mask], "logits": out["logits"][mask],
      "z": out["z"][mask], "draw_idx": draws[mask],
      "class_idx": np.full(int(mask.sum()), c, np.int32), "n_drawn": np.int64(n_valid),
  }


def _log_progress(c, accepted, target, drawn, stats):
  rate = stats["computed"] / stats["t_compute"] if stats["t_compute"] else float("nan")
  logging.info("class %d: accepted %d/%d, drawn %d (acceptance %.1f%%), %.1f images/s",
               c, min(accepted, target), target, drawn, 100.0 * accepted / max(drawn, 1), rate)


def load(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads `out_dir/pairs.npz`.

  Args:
    out_dir: a directory written by `generate_pairs`.

  Returns:
    {'w': [N, w_dim] float32, 'r': [N, R] float32, 'class_idx': [N] int32, 'z': [N, z_dim] float32,
     'logits': [N, C] float32, 'draw_idx': [N] int32}, ordered by class then draw index.

  Raises:
    PairsError: the directory, or its final file, is missing (e.g. an unfinished run) or damaged.
  """
  out_dir = pathlib.Path(out_dir)
  path = out_dir / PAIRS_FILE
  if not path.exists():
    if (out_dir / RUN_FILE).exists():
      raise PairsError(f"{out_dir} holds an unfinished pair run ({PAIRS_FILE} is missing); rerun "
                       "the same make_pairs command to resume it")
    raise PairsError(f"no pairs at {out_dir}: {path} does not exist")
  arrays = _read_npz(path)
  missing = [k for k in PAIR_KEYS if k not in arrays]
  if missing:
    raise PairsError(f"{path} is incomplete: missing arrays {missing}")
  n = {k: len(arrays[k]) for k in PAIR_KEYS}
  if len(set(n.values())) != 1:
    raise PairsError(f"{path} is inconsistent: row counts {n}")
  return {k: arrays[k] for k in PAIR_KEYS}


def read_run(out_dir: str | os.PathLike) -> dict[str, Any]:
  """The arguments (run.json) of a pair run, e.g. its classes, seed and pipeline info."""
  path = pathlib.Path(out_dir) / RUN_FILE
  if not path.exists():
    raise PairsError(f"no pair run at {out_dir}: {path} does not exist")
  return json.loads(path.read_text())
