"""The job engine: resumable run directories, shards, a data mesh and batched device calls.

Long jobs (pair generation, unit sweeps, the demo) are thin clients of this module:

* `RunDir`: an output directory with a run record (`run.json`: the job's kind and arguments)
  that a rerun must match, an exclusive lock held for the whole run (a second process writing
  to the same directory is refused), and shard files stamped with the run's identity (a SHA-256
  of the record), so that a shard of another run is never assembled. Every file is written
  atomically (`linkjax.files`): killing the process at any moment and rerunning resumes from
  the finished shards. An existing directory is taken over only when it is empty or holds a run
  of the same kind; `overwrite` replaces a run of the same kind with other arguments.
* `data_mesh`, `pad_rows`, `padded_size`: a 1-D 'data' mesh over the devices and fixed batch
  shapes (one compilation per job).
* `map_batches`: a jitted function over the rows of some arrays in fixed-size batches, sharded
  over the mesh, dispatch of batch k+1 overlapping the host copy of batch k.
* `Progress`: images done, images/s and ETA on one line.

Several processes (JAX's multi-controller runtime, `initialize_distributed`): every process
opens the same shared `RunDir`; process 0 prepares it (run record, overwrite) and the others
wait for its record. Work is split by shard: `Processes.owns(i)` (i modulo the process count);
each process computes its own shards on its local devices and writes them, stamped, to the
shared directory; process 0 assembles the final files once every shard is there
(`RunDir.wait_shard`) and the other processes wait for them. Nothing crosses processes but
files, so a killed job restarted with the same arguments resumes each process's shards, and the
result is bit-identical to a single-process run whose process has the same local devices.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linkjax import files

RUN_FILE = "run.json"
SHARD_DIR = "shards"
LOCK_FILE = ".lock"
RUN_ID_KEY = "_run_id"


class JobError(RuntimeError):
  """A run directory is busy, conflicting, foreign or incomplete."""


@dataclasses.dataclass(frozen=True)
class Processes:
  """This process's place among the processes of a job (one process: index 0 of 1)."""
  index: int = 0
  count: int = 1

  @classmethod
  def current(cls) -> Processes:
    """From JAX's runtime (`jax.process_index`, `jax.process_count`)."""
    return cls(jax.process_index(), jax.process_count())

  def owns(self, i: int) -> bool:
    """Whether work item i (a shard, a class) is this process's."""
    return i % self.count == self.index

  @property
  def main(self) -> bool:
    """Process 0 prepares run directories and assembles final outputs."""
    return self.index == 0


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           auto: bool = False) -> Processes:
  """Starts JAX's multi-controller runtime when asked; returns this process's place.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator; with num_processes and
      process_id, an explicit launch (several processes on one host, or one per host).
    num_processes, process_id: this job's process count and this process's index.
    auto: let JAX detect the cluster (SLURM, Cloud TPU, ...) when no address is given.
  Returns:
    the `Processes` of this job (index 0 of 1 when nothing was asked).
  Raises:
    ValueError: an incomplete explicit launch (some of the three given, not all).
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together")
  if all(given):
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id {process_id} outside [0, {num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto:
    jax.distributed.initialize()
  return Processes.current()


def wait_until(ready: Callable[[], bool], what: str, *, poll_s: float = 0.5,
               log_every_s: float = 60.0) -> None:
  """Blocks until `ready()` (something another process of the job writes), logging the wait."""
  t0 = last = time.monotonic()
  while not ready():
    now = time.monotonic()
    if now - last >= log_every_s:
      last = now
      logging.info("process %d: waiting %.0f s for %s", jax.process_index(), now - t0, what)
    time.sleep(poll_s)


def wait_for(path: pathlib.Path, what: str, *, poll_s: float = 0.5,
             log_every_s: float = 60.0) -> None:
  """Blocks until `path` exists (written by another process of the job)."""
  wait_until(path.exists, f"{what} ({path})", poll_s=poll_s, log_every_s=log_every_s)


def array_hash(*arrays: Any) -> str:
  """SHA-256 of arrays (dtype, shape and bytes): part of a run's identity."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _canonical(record: Mapping[str, Any]) -> dict[str, Any]:
  return json.loads(files.dumps(files.json_safe(record)))


class RunDir:
  """A resumable, locked output directory of one job (see the module docstring).

  Use as a context manager: `with RunDir(path, kind, record, outputs, overwrite=...) as run:`.
  On entry the lock is taken, the directory is checked against the record (refused or, with
  `overwrite`, cleared) and stray temporary files of killed writers are removed.

  Attributes:
    path: the directory.
    kind: the job kind ('pairs', 'sweep', 'demo', ...), stored in run.json.
    record: the job's arguments; a rerun with another record is a conflict.
    run_id: SHA-256 of (kind, record); stamped into every shard.
  """

  def __init__(self, path: str | os.PathLike, kind: str, record: Mapping[str, Any],
               outputs: Sequence[str] = (), *, overwrite: bool = False,
               error: type[Exception] = JobError, processes: Processes | None = None):
    self.path = pathlib.Path(path)
    self.processes = processes if processes is not None else Processes.current()
    self.kind = kind
    self.record = {"kind": kind, **_canonical(record)}
    self.run_id = hashlib.sha256(files.dumps(self.record).encode()).hexdigest()[:32]
    self._outputs = tuple(outputs)
    self._overwrite = overwrite
    self._error = error
    self._lock_fd: int | None = None

  # --- lifecycle -------------------------------------------------------------------------------

  def __enter__(self) -> RunDir:
    if not self.processes.main:
      self._wait_for_record()
    else:
      self._check_takeover()
      self.path.mkdir(parents=True, exist_ok=True)
    lock = LOCK_FILE if self.processes.count == 1 else f"{LOCK_FILE}.{self.processes.index}"
    fd = os.open(self.path / lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      raise self._error(f"{self.path} is in use by another running job (its lock is held); wait "
                        "for it to finish or use another output directory") from None
    self._lock_fd = fd
    try:
      if self.processes.main:
        self._prepare()
    except BaseException:
      self.__exit__(None, None, None)
      raise
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._lock_fd is not None:
      fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
      os.close(self._lock_fd)
      self._lock_fd = None

  def _ours(self, name: str) -> bool:
    return name in (RUN_FILE, SHARD_DIR, *self._outputs) or name.startswith(".")

  def _wait_for_record(self) -> None:
    """A non-main process waits until process 0 has written this run's record."""
    def prepared() -> bool:
      try:
        return (files.read_json(self.path / RUN_FILE) == self.record
                and (self.path / SHARD_DIR).is_dir())
      except files.FileError:
        return False

    wait_until(prepared, f"process 0 to prepare {self.path}", poll_s=0.2)

  def _check_takeover(self) -> None:
    p = self.path
    if p.exists() and not p.is_dir():
      raise self._error(f"{p} exists and is not a directory")
    if not p.is_dir() or (p / RUN_FILE).exists():
      return
    foreign = sorted(q.name for q in p.iterdir() if not self._ours(q.name))
    if foreign:
      raise self._error(f"refusing to use {p}: it holds files that are not a linkjax {self.kind} "
                        f"run ({foreign[:5]}); choose an empty or new output directory")
    if any(p.iterdir()) and not self._overwrite:
      raise self._error(f"{p} holds {self.kind} outputs but no {RUN_FILE}; use overwrite "
                        "(--overwrite) or another directory")

  def _prepare(self) -> None:
    run_file = self.path / RUN_FILE
    if run_file.exists():
      try:
        old = files.read_json(run_file)
      except files.FileError:
        old = None
      if isinstance(old, dict) and old.get("kind", self.kind) != self.kind:
        raise self._error(f"refusing to use {self.path}: it holds a {old.get('kind')} run, not "
                          f"a {self.kind} run")
      if old != self.record:
        if not self._overwrite:
          diff = ({k: (old.get(k), self.record.get(k))
                   for k in sorted(set(old) | set(self.record))
                   if old.get(k) != self.record.get(k)} if isinstance(old, dict)
                  else f"unreadable {RUN_FILE}")
          raise self._error(
              f"{self.path} holds a {self.kind} run with other arguments (old, new): {diff}. "
              "Use another output directory, or overwrite (--overwrite) to delete it and start "
              "again.")
        logging.warning("overwriting the previous %s run in %s", self.kind, self.path)
        self._clear()
    elif self._overwrite:
      self._clear()
    files.remove_tmp_files(self.path)
    files.remove_tmp_files(self.path / SHARD_DIR)
    if not run_file.exists():
      files.write_json(run_file, self.record)
    (self.path / SHARD_DIR).mkdir(exist_ok=True)

  def _clear(self) -> None:
    for name in (RUN_FILE, SHARD_DIR, *self._outputs):
      p = self.path / name
      if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
      elif p.exists() or p.is_symlink():
        p.unlink()

  # --- shards and outputs ----------------------------------------------------------------------

  def shard_path(self, name: str) -> pathlib.Path:
    return self.path / SHARD_DIR / f"{name}.npz"

  def write_shard(self, name: str, arrays: Mapping[str, Any]) -> None:
    """Writes a shard atomically, stamped with this run's identity."""
    files.write_npz(self.shard_path(name), {**arrays, RUN_ID_KEY: np.asarray(self.run_id)})

  def read_shard(self, name: str) -> dict[str, np.ndarray] | None:
    """A finished shard's arrays, or None when it is absent or damaged (then it is recomputed).

    Raises:
      the run's error type for a shard stamped by another run: it is never assembled.
    """
    path = self.shard_path(name)
    if not path.exists():
      return None
    try:
      arrays = files.read_npz(path)
    except files.FileError as e:
      logging.warning("recomputing damaged shard: %s", e)
      path.unlink(missing_ok=True)
      return None
    stamp = arrays.pop(RUN_ID_KEY, None)
    if stamp is None or str(stamp) != self.run_id:
      raise self._error(f"{path} belongs to another run (its identity stamp differs); a second "
                        "job wrote into this directory. Delete the directory and start again.")
    return arrays

  def wait_shard(self, name: str) -> dict[str, np.ndarray]:
    """A shard of another process of the job, waiting until it is written."""
    wait_for(self.shard_path(name), f"shard {name} of another process")
    shard = self.read_shard(name)
    if shard is None:  # deleted as damaged: its process recomputes it on its next run
      raise self._error(f"shard {name} in {self.path} is damaged; rerun the job to recompute it")
    return shard

  def wait_output(self, name: str) -> None:
    """Waits until process 0 has written a final output."""
    wait_for(self.path / name, f"{name} from process 0")

  def write_output(self, name: str, arrays: Mapping[str, Any]) -> None:
    files.write_npz(self.path / name, arrays)

  def write_json(self, name: str, obj: Any) -> None:
    files.write_json(self.path / name, obj)


# --- devices -------------------------------------------------------------------------------------

def data_mesh(devices: Sequence[jax.Device] | int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'data' over `devices` (a list, the first n local devices, or all
  local devices: with several processes each computes its own shards on its own devices).

  Auto axis types: the models carry no sharding annotations and GSPMD propagates the batch
  split through them.
  """
  if devices is None:
    devs = jax.local_devices()
  elif isinstance(devices, int):
    devs = jax.local_devices()[:devices]
  else:
    devs = list(devices)
  return jax.make_mesh((len(devs),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devs)


def padded_size(batch: int, mesh: jax.sharding.Mesh) -> int:
  """`batch` rounded up to a multiple of the mesh's device count."""
  n = mesh.devices.size
  return -(-int(batch) // n) * n


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
  """x with its last row repeated up to n rows (valid inputs whose results are dropped)."""
  x = np.asarray(x)
  if x.shape[0] == n:
    return x
  return np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)])


def map_batches(fn: Callable[..., Any], params: Any, *arrays: Any, batch: int,
                mesh: jax.sharding.Mesh | None = None, progress: Progress | None = None,
                fixed_shape: bool = True) -> Any:
  """`fn(params, *rows)` over the rows of `arrays` in fixed-size batches, sharded on 'data'.

  Args:
    fn: a jitted function returning a pytree of arrays with a leading batch axis.
    params: its parameters (replicated on every device once).
    *arrays: [N, ...] inputs (numpy or jax), split along the first axis.
    batch: rows per call, rounded up to a multiple of the device count; the last batch is
      padded by repeating its last row (one compilation).
    mesh: 1-D 'data' mesh (default: all devices).
    progress: optional progress line, advanced by the rows of each batch.
    fixed_shape: always call with `batch` rows (one compilation however many rows later calls
      bring); False shrinks the batch to N when N < batch (a one-off call on few rows computes
      no padding).
  Returns:
    the pytree of outputs as numpy arrays with N rows.
  """
  mesh = mesh if mesh is not None else data_mesh()
  n = len(arrays[0])
  if n == 0:
    raise ValueError("map_batches needs at least one row")
  size = padded_size(batch if fixed_shape else min(batch, n), mesh)
  data = NamedSharding(mesh, P("data"))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  arrays = [np.asarray(a) for a in arrays]
  outs: list[Any] = []
  pending = None
  for start in range(0, n, size):
    rows = [jax.device_put(pad_rows(a[start:start + size], size), data) for a in arrays]
    out = fn(params, *rows)  # dispatched asynchronously
    if pending is not None:
      outs.append(_fetch(*pending, progress))
    pending = (out, min(size, n - start))
  outs.append(_fetch(*pending, progress))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def _fetch(out: Any, m: int, progress: Progress | None) -> Any:
  res = jax.tree.map(lambda x: np.asarray(x)[:m], out)
  if progress is not None:
    progress.update(m)
  return res


# --- progress ------------------------------------------------------------------------------------

class Progress:
  """Work done / total with rate and ETA: a redrawn bar on a terminal, else a line at most every
  `every_s` seconds (on stderr, whatever the logging verbosity).

  Args:
    total: units of work in all (e.g. images).
    what: the unit's name in the line.
    done: units already done (resumed work), not counted in the rate.
    every_s: seconds between log lines when not on a terminal.
    label: prefix of the line.
  """

  def __init__(self, total: int, what: str = "images", *, done: int = 0, every_s: float = 30.0,
               label: str = "", stream: Any = None):
    self.total, self.what, self.label = int(total), what, label
    self.done = int(done)
    self.every_s = every_s
    self._t0 = time.perf_counter()
    self._last = -float("inf")
    self._new = 0
    self._stream = stream if stream is not None else sys.stderr
    self._tty = bool(getattr(self._stream, "isatty", lambda: False)())

  @property
  def rate(self) -> float:
    """Units per second of this process's work so far."""
    return self._new / max(time.perf_counter() - self._t0, 1e-9)

  def line(self) -> str:
    rate = self.rate
    eta = (self.total - self.done) / rate if rate > 0 else float("nan")
    frac = self.done / max(self.total, 1)
    bar = "#" * int(round(24 * frac))
    return (f"{self.label}[{bar:<24}] {self.done}/{self.total} {self.what}, {rate:.1f} "
            f"{self.what}/s, ETA {eta:.0f} s")

  def update(self, n: int) -> None:
    self.done += int(n)
    self._new += int(n)
    now = time.perf_counter()
    finished = self.done >= self.total
    if self._tty:
      if now - self._last >= 0.2 or finished:
        self._last = now
        self._stream.write("\r" + self.line() + ("\n" if finished else ""))
        self._stream.flush()
    elif now - self._last >= self.every_s or finished:
      self._last = now
      self._stream.write(self.line() + "\n")
      self._stream.flush()


def chunks(n: int, size: int) -> Iterable[tuple[int, int]]:
  """(start, stop) of consecutive chunks of `size` covering range(n)."""
  for start in range(0, n, size):
    yield start, min(start + size, n)
