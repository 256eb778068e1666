"""Tests of linkjax.pairs and experiments.make_pairs on toy models (and tiny real models)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linkjax import files, jobs, pairs, testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = testing.ToyPairs(z_dim=8, w_dim=6, r_dim=5, num_classes=10)
TOY_PARAMS = TOY.params()
CLASSES = [3, 1, 7]


def _gen(models, out, *, params=None, mesh=None, overwrite=False, run_info=None, **config):
  """generate_pairs with the PairConfig given as keywords (psi is ignored by the toys)."""
  params = TOY_PARAMS if params is None else params
  return pairs.generate_pairs(models, params, out, pairs.PairConfig(**config), mesh=mesh,
                              overwrite=overwrite, run_info=run_info)


def _reference(models, params, classes, n, seed, keep, max_draws):
  """Independent implementation of the selection rule: all draws at once, then select in numpy."""
  rows = {k: [] for k in pairs.PAIR_KEYS}
  d = jnp.arange(max_draws, dtype=jnp.int32)
  for c in classes:
    cls = jnp.full(max_draws, c, jnp.int32)
    z = jax.vmap(lambda i, c=c: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), c), i), (models.z_dim,)))(d)
    out = {k: np.asarray(v) for k, v in models.pair_outputs(params, z, cls).items()}
    ok = np.ones(max_draws, bool) if keep == "all" else np.argmax(out["logits"], -1) == c
    idx = np.flatnonzero(ok)[:n]
    for k, v in (("w", out["w"]), ("r", out["r"]), ("logits", out["logits"]),
                 ("z", np.asarray(z)), ("class_idx", np.asarray(cls)),
                 ("draw_idx", np.asarray(d))):
      rows[k].append(v[idx])
  return {k: np.concatenate(v) for k, v in rows.items()}


def _assert_same(a, b, exact=True):
  assert set(a) == set(b)
  for k in pairs.PAIR_KEYS:
    assert a[k].shape == b[k].shape, k
    assert a[k].dtype == b[k].dtype, k
    # z and the selection are exact; XLA's matmul rounding depends on the batch shape (~1 ulp).
    if exact or k in ("draw_idx", "class_idx", "z"):
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_derive_z_is_the_documented_formula_and_batch_independent():
  c = jnp.asarray([3, 3, 7, 0], jnp.int32)
  d = jnp.asarray([0, 5, 5, 123456], jnp.int32)
  z = pairs.derive_z(11, c, d, 4)
  for i in range(4):
    ref = jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(11), int(c[i])), int(d[i])), (4,))
    np.testing.assert_array_equal(np.asarray(z[i]), np.asarray(ref))
  # Reordering the batch reorders the rows and nothing else.
  perm = jnp.asarray([2, 0, 3, 1])
  np.testing.assert_array_equal(np.asarray(pairs.derive_z(11, c[perm], d[perm], 4)),
                                np.asarray(z)[np.asarray(perm)])


def test_keep_correct_matches_independent_reference(tmp_path):
  got = _gen(TOY, tmp_path / "a", classes=CLASSES, n_per_class=12, seed=0, batch=8,
             keep="correct")
  ref = _reference(TOY, TOY_PARAMS, CLASSES, 12, 0, "correct", 120)
  _assert_same(got, ref, exact=False)
  # Acceptance of the toy is roughly one half, so rejections really happened.
  assert got["draw_idx"].max() > 20
  np.testing.assert_array_equal(np.argmax(got["logits"], -1), got["class_idx"])
  # Ordered by class (given order), then draw index; no z used twice.
  np.testing.assert_array_equal(got["class_idx"], np.repeat(CLASSES, 12))
  for c in CLASSES:
    assert np.all(np.diff(got["draw_idx"][got["class_idx"] == c]) > 0)
  assert len(np.unique(got["z"], axis=0)) == len(got["z"])
  _assert_same(pairs.load(tmp_path / "a"), got)
  summary = json.loads((tmp_path / "a" / "summary.json").read_text())
  assert summary["classes"]["3"]["accepted"] == 12
  assert 0.2 < summary["classes"]["3"]["acceptance_rate"] < 0.8


def test_results_independent_of_batch_size_and_device_count(tmp_path):
  kw = dict(classes=CLASSES, n_per_class=10, seed=3, keep="correct")
  base = _gen(TOY, tmp_path / "b8", batch=8, **kw)
  one_dev = jobs.data_mesh(jax.devices()[:1])
  assert jax.device_count() == 4
  for name, batch, mesh in (("b5", 5, None), ("b64", 64, None), ("b8_1dev", 8, one_dev),
                            ("b3_1dev", 3, one_dev)):
    got = _gen(TOY, tmp_path / name, batch=batch, mesh=mesh, **kw)
    _assert_same(got, base, exact=False)


def test_keep_all_and_max_draws_guard(tmp_path, caplog):
  def fn(z, c):  # plain callable: class 5 always wins, class 2 never does
    onehot = jax.nn.one_hot(c, 10, dtype=jnp.float32)
    logits = jnp.where((c == 5)[:, None], onehot, -onehot)
    return {"w": z[:, :3], "r": jnp.abs(z), "logits": logits}

  models = testing.FnPairs(fn, z_dim=4)
  got = _gen(models, tmp_path / "guard", params=(), classes=[5, 2], n_per_class=7, seed=0,
             batch=8, keep="correct", max_draws_per_class=30)
  np.testing.assert_array_equal(got["draw_idx"], np.arange(7))
  np.testing.assert_array_equal(got["class_idx"], np.full(7, 5))
  assert "only 0 of 7 pairs accepted after max_draws_per_class=30" in caplog.text
  summary = json.loads((tmp_path / "guard" / "summary.json").read_text())["classes"]
  assert summary["2"] == {"accepted": 0, "drawn": 30, "acceptance_rate": 0.0,
                          "hit_draw_limit": True}
  assert not summary["5"]["hit_draw_limit"]

  # keep=all keeps every draw, in order; the draw limit (not a multiple of batch) is exact.
  got = _gen(models, tmp_path / "all", params=(), classes=[2, 5], n_per_class=100, seed=0,
             batch=8, keep="all", max_draws_per_class=30)
  np.testing.assert_array_equal(got["draw_idx"], np.tile(np.arange(30), 2))
  np.testing.assert_array_equal(got["class_idx"], np.repeat([2, 5], 30))
  ref = _reference(models, (), [2, 5], 100, 0, "all", 30)
  _assert_same(got, ref, exact=False)


def test_traces_once_and_rerun_reuses_shards(tmp_path):
  traces = []

  def fn(z, c):
    traces.append(1)
    return TOY.pair_outputs(TOY_PARAMS, z, c)

  models = testing.FnPairs(fn, z_dim=8)
  kw = dict(params=(), classes=CLASSES, n_per_class=10, seed=0, batch=4, keep="correct")
  got = _gen(models, tmp_path, **kw)
  assert len(traces) == 1  # one compilation for all classes and blocks
  shards = sorted((tmp_path / "shards").iterdir())
  assert len(shards) > 3 * 3
  # Remove the final files and some shards: the rerun recomputes exactly those.
  (tmp_path / "pairs.npz").unlink()
  (tmp_path / "summary.json").unlink()
  mtimes = {p: p.stat().st_mtime_ns for p in shards}
  for p in shards[::3]:
    p.unlink()
  again = _gen(models, tmp_path, **kw)
  _assert_same(again, got)
  for p in shards[1::3]:
    assert p.stat().st_mtime_ns == mtimes[p]
  # Other arguments are refused; overwrite starts again.
  with pytest.raises(pairs.PairsError, match="other arguments"):
    _gen(models, tmp_path, **{**kw, "seed": 1})
  other = _gen(models, tmp_path, overwrite=True, **{**kw, "seed": 1})
  assert not np.array_equal(other["z"], got["z"])


def test_load_errors(tmp_path):
  with pytest.raises(pairs.PairsError, match="no pairs"):
    pairs.load(tmp_path / "nothing")
  (tmp_path / "run.json").write_text("{}")
  with pytest.raises(pairs.PairsError, match="unfinished"):
    pairs.load(tmp_path)
  np.savez(tmp_path / "pairs.npz", w=np.zeros((2, 3)))
  with pytest.raises(pairs.PairsError, match="missing arrays"):
    pairs.load(tmp_path)


# ------------------------------------------------------------------------------ resume (SIGKILL)

_BIN_ARGS = ["--toy_world", "--toy_dims=8,6,5,10", "--classes=3,1,7", "--n_per_class=9",
             "--seed=2", "--batch=4", "--keep=correct"]


def _bin_env(cache_dir):
  env = {k: v for k, v in os.environ.items() if k != files.KILL_ENV}
  # The subprocesses inherit conftest's 4 CPU devices; share compilations between them.
  env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _run_bin(out, kill_at=None, extra=()):
  env = _bin_env(out.parent / "jax_cache")
  if kill_at:
    env[files.KILL_ENV] = kill_at
  return subprocess.run([sys.executable, "-m", "experiments.make_pairs", f"--out={out}",
                         *_BIN_ARGS, *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def test_sigkill_at_any_write_then_resume_is_bit_identical(tmp_path):
  ref = _gen(testing.ToyPairs(z_dim=8, w_dim=6, r_dim=5, num_classes=10), tmp_path / "ref",
             classes=[3, 1, 7], n_per_class=9, seed=2, batch=4, keep="correct")
  n_shards = len(list((tmp_path / "ref" / "shards").iterdir()))
  out = tmp_path / "out"
  # Each process counts its own writes (1 = run.json in the first process): kill after a shard's
  # temporary file is written but before it is published, after a shard is published, and between
  # writing the final pairs.npz and publishing it.
  for kill_at in ("3:before", "2:after", "final:before"):
    if kill_at == "final:before":  # the write after the remaining shards
      done = len([p for p in (out / "shards").iterdir() if not p.name.startswith(".")])
      assert done == 1 + 2
      kill_at = f"{n_shards - done + 1}:before"
    proc = _run_bin(out, kill_at)
    assert proc.returncode == -signal.SIGKILL, (kill_at, proc.returncode, proc.stderr[-2000:])
    assert not (out / "pairs.npz").exists()
  leftovers = list((out / "shards").glob(".*tmp*")) + list(out.glob(".*tmp*"))
  assert leftovers  # the kills really left half-written files behind
  proc = _run_bin(out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  _assert_same(pairs.load(out), ref)
  assert not list((out / "shards").glob(".*tmp*"))
  # Same command again: nothing to do, same arrays; other arguments: a clear error.
  assert _run_bin(out).returncode == 0
  _assert_same(pairs.load(out), ref)
  proc = _run_bin(out, extra=["--seed=5"])
  assert proc.returncode != 0 and "other arguments" in proc.stderr


def test_asynchronous_sigkill_mid_run_then_resume(tmp_path):
  out = tmp_path / "out"
  args = [sys.executable, "-m", "experiments.make_pairs", f"--out={out}", "--toy_world",
          "--toy_dims=8,6,5,10", "--classes=4,2", "--n_per_class=150", "--seed=1", "--batch=2",
          "--keep=all"]
  env = _bin_env(tmp_path / "jax_cache")
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline and proc.poll() is None:
    shards = out / "shards"
    if shards.is_dir() and len(list(shards.iterdir())) >= 3:
      break
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL, "finished before it could be killed"
  assert not (out / "pairs.npz").exists()
  assert subprocess.run(args, cwd=ROOT, env=env, capture_output=True).returncode == 0
  ref = _gen(TOY, tmp_path / "ref", classes=[4, 2], n_per_class=150, seed=1, batch=2,
             keep="all")
  _assert_same(pairs.load(out), ref)
