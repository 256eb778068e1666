"""Many processes (JAX's multi-controller runtime, localhost coordinator, CPU devices): pairs and
a sweep split over 2 processes equal a 1-process run bit for bit, and a killed job resumes."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from linkjax import files, pairs, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIR_ARGS = ["--toy_world", "--toy_dims=8,6,5,10", "--classes=3,1,7,4", "--n_per_class=9",
             "--seed=2", "--batch=4", "--keep=correct"]
SWEEP_ARGS = ["--toy_world", "--units=all", "--samples_per_class=2", "--steps=3", "--chunk=4",
              "--shard_size=8"]


def _env(cache_dir, kill_at=None):
  env = {k: v for k, v in os.environ.items() if k != files.KILL_ENV}
  # Every process has the same 2 local CPU devices as the 1-process reference.
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if kill_at:
    env[files.KILL_ENV] = kill_at
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(module, args, n, tmp, kill_at=None):
  """Starts n processes of a binary (n == 1: no coordinator); returns the Popen objects."""
  port = _free_port()
  procs = []
  for i in range(n):
    extra = [] if n == 1 else [f"--coordinator_address=localhost:{port}", f"--num_processes={n}",
                               f"--process_id={i}"]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", module, *args, *extra], cwd=ROOT,
        env=_env(tmp / "jax_cache", kill_at if i == 1 else None),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=240):
  for p in procs:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_two_processes_equal_one_for_pairs_and_sweep(tmp_path):
  ref_pairs, ref_sweep = tmp_path / "ref_pairs", tmp_path / "ref_sweep"
  _finish(_launch("experiments.make_pairs", [*PAIR_ARGS, f"--out={ref_pairs}"], 1, tmp_path))
  _finish(_launch("experiments.sweep_units", [*SWEEP_ARGS, f"--pairs={ref_pairs}",
                                              f"--out={ref_sweep}"], 1, tmp_path))
  out_pairs, out_sweep = tmp_path / "pairs2", tmp_path / "sweep2"
  _finish(_launch("experiments.make_pairs", [*PAIR_ARGS, f"--out={out_pairs}"], 2, tmp_path))
  _same(pairs.load(out_pairs), pairs.load(ref_pairs))
  # Process 1 computed classes 1 and 4 (positions 1 and 3), process 0 the others.
  assert {p.name[:6] for p in (out_pairs / "shards").iterdir()} == {"c00001", "c00003", "c00004",
                                                                   "c00007"}
  _finish(_launch("experiments.sweep_units", [*SWEEP_ARGS, f"--pairs={out_pairs}",
                                              f"--out={out_sweep}"], 2, tmp_path))
  _same(sweep.load(out_sweep), sweep.load(ref_sweep))
  assert (out_sweep / ".lock.0").exists() and (out_sweep / ".lock.1").exists()


@pytest.mark.slow
def test_a_killed_process_resumes_its_shards(tmp_path):
  ref = tmp_path / "ref"
  _finish(_launch("experiments.make_pairs", [*PAIR_ARGS, f"--out={ref}"], 1, tmp_path))
  out = tmp_path / "out"
  # Process 1 is killed between writing its 3rd file (run.json is process 0's) and publishing it.
  procs = _launch("experiments.make_pairs", [*PAIR_ARGS, f"--out={out}"], 2, tmp_path,
                  kill_at="3:before")
  assert procs[1].wait(120) == -signal.SIGKILL
  procs[0].send_signal(signal.SIGKILL)  # the job is down: restart it as a whole
  procs[0].wait(60)
  shards_before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("c*.npz")}
  assert shards_before and not (out / pairs.PAIRS_FILE).exists()
  time.sleep(0.01)
  _finish(_launch("experiments.make_pairs", [*PAIR_ARGS, f"--out={out}"], 2, tmp_path))
  _same(pairs.load(out), pairs.load(ref))
  for name, mtime in shards_before.items():  # finished shards were reused, not recomputed
    assert (out / "shards" / name).stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_checkpoints_load_in_every_process(tmp_path):
  """Real checkpoints (the built-in world's) in a 2-process job: every process restores its own
  copy (orbax would otherwise sync the processes and place the arrays on process 0's device:
  'Topology mismatch' in process 1), and the pairs equal a 1-process run."""
  weights = ROOT / "linkjax" / "miniworld" / "weights"
  args = [f"--generator={weights / 'generator'}", f"--classifier={weights / 'classifier'}",
          "--classes=0,3", "--n_per_class=3", "--seed=1", "--batch=4", "--keep=all"]
  _finish(_launch("experiments.make_pairs", [*args, f"--out={tmp_path / 'one'}"], 1, tmp_path))
  _finish(_launch("experiments.make_pairs", [*args, f"--out={tmp_path / 'two'}"], 2, tmp_path))
  _same(pairs.load(tmp_path / "two"), pairs.load(tmp_path / "one"))
