"""The job engine: run records, locks, stamped shards, takeover rules, batching; strict files."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linkjax import files, jobs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_record_resume_conflict_and_overwrite(tmp_path):
  out = tmp_path / "run"
  with jobs.RunDir(out, "toy", {"seed": 0}, ("final.npz",)) as run:
    run.write_shard("a", {"x": np.arange(3)})
    run.write_output("final.npz", {"y": np.ones(2)})
  assert json.loads((out / "run.json").read_text()) == {"kind": "toy", "seed": 0}
  with jobs.RunDir(out, "toy", {"seed": 0}, ("final.npz",)) as run:  # same arguments: resume
    np.testing.assert_array_equal(run.read_shard("a")["x"], np.arange(3))
    assert run.read_shard("b") is None
  with pytest.raises(jobs.JobError, match=r"other arguments .*'seed': \(0, 1\)"):
    jobs.RunDir(out, "toy", {"seed": 1}, ("final.npz",)).__enter__()
  with jobs.RunDir(out, "toy", {"seed": 1}, ("final.npz",), overwrite=True) as run:
    assert run.read_shard("a") is None and not (out / "final.npz").exists()
  with pytest.raises(jobs.JobError, match="holds a toy run, not a other run"):
    jobs.RunDir(out, "other", {"seed": 1}, overwrite=True).__enter__()


def test_foreign_directories_are_never_taken_over(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "thesis.txt").write_text("years of work")
  for overwrite in (False, True):
    with pytest.raises(jobs.JobError, match="not a linkjax toy run"):
      jobs.RunDir(mine, "toy", {"seed": 0}, overwrite=overwrite).__enter__()
  assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
  with pytest.raises(jobs.JobError, match="not a directory"):
    jobs.RunDir(mine / "thesis.txt", "toy", {}).__enter__()


_HOLD = """
import pathlib, sys, time
from linkjax import jobs
out, release = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with jobs.RunDir(out, "toy", {"seed": 5}, processes=jobs.Processes()):
  print("locked", flush=True)
  deadline = time.time() + 60
  while not release.exists() and time.time() < deadline:
    time.sleep(0.05)
"""


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
  out, release = tmp_path / "run", tmp_path / "release"
  first = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), str(release)], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
  try:
    assert first.stdout.readline().strip() == "locked"
    # Even with overwrite (the reported case: --seed=6 --overwrite while --seed=5 runs).
    with pytest.raises(jobs.JobError, match="in use by another running job"):
      jobs.RunDir(out, "toy", {"seed": 6}, overwrite=True).__enter__()
    assert json.loads((out / "run.json").read_text())["seed"] == 5
  finally:
    release.touch()
    first.wait(60)
  with jobs.RunDir(out, "toy", {"seed": 6}, overwrite=True):  # free again
    pass


def test_shards_of_another_run_are_never_assembled(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  with jobs.RunDir(a, "toy", {"seed": 0}) as run:
    run.write_shard("s", {"x": np.zeros(2)})
  with jobs.RunDir(b, "toy", {"seed": 1}) as run:
    run.shard_path("s").write_bytes((a / "shards" / "s.npz").read_bytes())
    with pytest.raises(jobs.JobError, match="belongs to another run"):
      run.read_shard("s")
    # A damaged shard (not a stamp mismatch) is deleted and recomputed.
    run.shard_path("t").write_bytes(b"PK\x03\x04garbage")
    assert run.read_shard("t") is None and not run.shard_path("t").exists()


def test_map_batches_pads_shards_and_keeps_one_compilation():
  @jax.jit
  def fn(params, x, y):
    return {"s": x * params + y[:, None], "n": jnp.sum(x, axis=1)}

  x = np.arange(30, dtype=np.float32).reshape(10, 3)
  y = np.arange(10, dtype=np.float32)
  progress = jobs.Progress(10, every_s=0.0)
  out = jobs.map_batches(fn, np.float32(2.0), x, y, batch=4, mesh=jobs.data_mesh(4),
                         progress=progress)
  np.testing.assert_array_equal(out["s"], x * 2 + y[:, None])
  np.testing.assert_array_equal(out["n"], x.sum(1))
  assert progress.done == 10
  n = fn._cache_size()
  jobs.map_batches(fn, np.float32(1.0), x[:3], y[:3], batch=4, mesh=jobs.data_mesh(4))
  assert fn._cache_size() == n  # fixed shape: a short input reuses the compilation
  small = jobs.map_batches(fn, np.float32(1.0), x[:3], y[:3], batch=4, mesh=jobs.data_mesh(1),
                           fixed_shape=False)
  np.testing.assert_array_equal(small["n"], x[:3].sum(1))
  np.testing.assert_array_equal(jobs.pad_rows(np.arange(2), 4), [0, 1, 1, 1])
  assert jobs.padded_size(5, jobs.data_mesh(4)) == 8


def test_strict_json_and_atomic_writes(tmp_path):
  with pytest.raises(ValueError, match="non-finite"):
    files.write_json(tmp_path / "x.json", {"a": float("nan")})
  assert not list(tmp_path.iterdir())  # nothing written, no temporary left
  files.write_json(tmp_path / "x.json", files.json_safe({"a": np.float32(np.nan), "b": np.int64(3),
                                                        "c": [np.inf, 1.5]}))
  assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": 3, "c": [None, 1.5]}
  (tmp_path / "y.json").write_text('{"a": NaN}')
  with pytest.raises(files.FileError, match="not valid JSON"):
    files.read_json(tmp_path / "y.json")
  with pytest.raises(files.FileError, match="unreadable"):
    (tmp_path / "z.npz").write_bytes(b"not a zip")
    files.read_npz(tmp_path / "z.npz")
  files.write_csv(tmp_path / "t.csv", ["a", "b"], [[1, math.nan], [2, 0.5]])
  assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b", "1,", "2,0.5"]


def test_replace_dir_swaps_only_what_is_ours(tmp_path):
  target = tmp_path / "d"

  def build(content):
    return lambda p: (p / "f.txt").write_text(content)

  files.replace_dir(target, build("one"), is_ours=lambda p: None)
  files.replace_dir(target, build("two"), is_ours=lambda p: None)
  assert (target / "f.txt").read_text() == "two"
  with pytest.raises(files.FileError, match="refusing to replace .*: not mine"):
    files.replace_dir(target, build("three"), is_ours=lambda p: "not mine")
  assert (target / "f.txt").read_text() == "two"

  def failing(p):
    (p / "half.txt").write_text("x")
    raise RuntimeError("crash while building")

  with pytest.raises(RuntimeError):
    files.replace_dir(target, failing, is_ours=lambda p: None)
  assert sorted(q.name for q in tmp_path.iterdir()) == ["d"]  # old kept, temporary removed
  assert (target / "f.txt").read_text() == "two"
  assert pathlib.Path(target).is_dir()
