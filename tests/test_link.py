"""Tests of linkjax.link against scikit-learn and of the fit_link binary."""

import json
import os
import subprocess
import sys
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge

from linkjax import link

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _linear_data(n, dim_r, dim_w, seed, n_test=32):
  rng = np.random.default_rng(seed)
  # Non-negative, offset, unevenly scaled inputs like pooled ReLU activations.
  scale = rng.uniform(0.5, 2.0, dim_r)
  r = (np.abs(rng.standard_normal((n + n_test, dim_r))) * scale + 1.0).astype(np.float32)
  true_kernel = rng.standard_normal((dim_r, dim_w)) / np.sqrt(dim_r)
  w = (r @ true_kernel + 0.3 + 0.1 * rng.standard_normal((n + n_test, dim_w))).astype(np.float32)
  return r[:n], w[:n], r[n:]


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("n,dim_r", [(300, 40), (30, 40), (40, 40)],
                         ids=["overdetermined", "underdetermined", "square"])
@pytest.mark.parametrize("precision", ["auto", "float32", "float64"])
def test_ols_matches_sklearn(n, dim_r, precision):
  r, w, r_test = _linear_data(n, dim_r, 8, seed=n + dim_r)
  params = link.fit_ols(r, w, precision=precision)
  ref = LinearRegression().fit(r.astype(np.float64), w.astype(np.float64))
  # Train and fresh inputs: the latter checks the minimum-norm choice in the underdetermined case.
  for x in (r, r_test):
    assert _rel_err(link.predict(params, x), ref.predict(x.astype(np.float64))) < 1e-4
  assert params["kernel"].dtype == jnp.float32 and params["kernel"].shape == (dim_r, 8)


def test_ols_rank_deficient_matches_sklearn():
  r, w, r_test = _linear_data(200, 20, 4, seed=3)
  r = np.concatenate([r, r[:, :5] * np.float32(2.0)], axis=1)  # 5 duplicated directions
  r_test = np.concatenate([r_test, r_test[:, :5] * np.float32(2.0)], axis=1)
  params = link.fit_ols(r, w)
  ref = LinearRegression().fit(r.astype(np.float64), w.astype(np.float64))
  assert _rel_err(link.predict(params, r_test), ref.predict(r_test.astype(np.float64))) < 1e-4
  # Minimum norm: the kernel equals sklearn's (lstsq) coefficients.
  assert _rel_err(params["kernel"], ref.coef_.T) < 1e-3


@pytest.mark.parametrize("n", [300, 30])
def test_ridge_matches_sklearn(n):
  r, w, r_test = _linear_data(n, 40, 8, seed=7)
  params = link.fit_ridge(r, w, alpha=5.0)
  ref = Ridge(alpha=5.0).fit(r.astype(np.float64), w.astype(np.float64))
  assert _rel_err(link.predict(params, r_test), ref.predict(r_test.astype(np.float64))) < 1e-4
  # The penalty must act: ridge differs from OLS.
  ols = LinearRegression().fit(r.astype(np.float64), w.astype(np.float64))
  assert _rel_err(link.predict(params, r_test), ols.predict(r_test.astype(np.float64))) > 1e-3


def test_mlp_beats_ols_on_nonlinear_toy():
  rng = np.random.default_rng(0)
  r = rng.uniform(-2, 2, (1200, 4)).astype(np.float32)
  w = np.stack([np.sin(2 * r[:, 0]) * r[:, 1], np.abs(r[:, 2]) - r[:, 3] ** 2],
               axis=1).astype(np.float32)
  train, test = link.split_holdout(len(r), 0.25, seed=0)
  ols = link.fit(r[train], w[train], "ols")
  mlp = link.fit(r[train], w[train], "mlp", key=jax.random.key(0), hidden=(64, 64), steps=1500,
                 lr=3e-3, batch=128)
  mse_ols = link.evaluate(ols, r[test], w[test])["mse"]
  mse_mlp = link.evaluate(mlp, r[test], w[test])["mse"]
  assert mse_mlp < 0.3 * mse_ols, (mse_mlp, mse_ols)


def test_mlp_needs_key():
  with pytest.raises(ValueError, match="PRNG key"):
    link.fit(np.zeros((4, 2), np.float32), np.zeros((4, 1), np.float32), "mlp")


def test_evaluate_matches_sklearn_metrics():
  from sklearn.metrics import mean_squared_error, r2_score
  r, w, _ = _linear_data(100, 10, 3, seed=1)
  params = link.fit_ridge(r, w, alpha=50.0)
  pred = np.asarray(link.predict(params, r), np.float64)
  got = link.evaluate(params, r, w)
  assert got["mse"] == pytest.approx(mean_squared_error(w, pred), rel=1e-4)
  assert got["r2"] == pytest.approx(r2_score(w, pred), rel=1e-4)
  # A random pairing is much worse than the fit.
  assert link.shuffled_baseline_mse(params, r, w, seed=0) > 3 * got["mse"]


def test_split_holdout_deterministic_and_disjoint():
  a_train, a_test = link.split_holdout(101, 0.2, seed=5)
  b_train, b_test = link.split_holdout(101, 0.2, seed=5)
  c_train, c_test = link.split_holdout(101, 0.2, seed=6)
  np.testing.assert_array_equal(a_test, b_test)
  np.testing.assert_array_equal(a_train, b_train)
  assert not np.array_equal(a_test, c_test)
  assert a_test.size == 20 and np.intersect1d(a_train, a_test).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([a_train, a_test])), np.arange(101))
  assert link.split_holdout(10, 0.0, seed=0)[1].size == 0


def test_predict_no_retrace():
  params = link.fit_ols(*_linear_data(50, 6, 2, seed=0)[:2])
  link.predict(params, np.ones((3, 6), np.float32))
  before = link.predict._cache_size()
  link.predict(params, np.zeros((3, 6), np.float32))
  assert link.predict._cache_size() == before


@pytest.mark.parametrize("model", ["ols", "mlp"])
def test_save_load_round_trip(tmp_path, model):
  r, w, r_test = _linear_data(60, 6, 3, seed=2)
  params = link.fit(r, w, model, key=jax.random.key(1), hidden=(8,), steps=5)
  link.save(tmp_path / "ckpt", params, {"model": model, "note": [1, 2]})
  loaded, meta = link.load(tmp_path / "ckpt")
  assert meta["model"] == model
  assert jax.tree.structure(loaded) == jax.tree.structure(
      jax.tree.map(np.asarray, params))
  np.testing.assert_array_equal(np.asarray(link.predict(loaded, r_test)),
                                np.asarray(link.predict(params, r_test)))


def _write_pairs(path, n_per_class=40, classes=(3, 7), dim_r=24, dim_w=6, seed=0):
  rng = np.random.default_rng(seed)
  n = n_per_class * len(classes)
  r = np.abs(rng.standard_normal((n, dim_r))).astype(np.float32)
  w = (r @ rng.standard_normal((dim_r, dim_w)) + 0.05 * rng.standard_normal((n, dim_w))
       ).astype(np.float32)
  path.mkdir(parents=True)
  np.savez(path / "pairs.npz", w=w, r=r, class_idx=np.repeat(np.int32(classes), n_per_class),
           z=rng.standard_normal((n, 4)).astype(np.float32),
           logits=rng.standard_normal((n, 10)).astype(np.float32),
           draw_idx=np.tile(np.arange(n_per_class, dtype=np.int32), len(classes)))
  return r, w


def test_fit_link_binary(tmp_path):
  r, w = _write_pairs(tmp_path / "pairs")
  out = tmp_path / "link"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.fit_link", f"--pairs={tmp_path / 'pairs'}",
       "--model=ridge", "--alpha=0.5", "--holdout=0.25", "--seed=3", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert (metrics["n_train"], metrics["n_test"]) == (60, 20)
  assert metrics["model"] == "ridge" and metrics["alpha"] == 0.5 and metrics["seed"] == 3
  # Same numbers as the library on the same split.
  train, test = link.split_holdout(80, 0.25, seed=3)
  ref = Ridge(alpha=0.5).fit(r[train].astype(np.float64), w[train].astype(np.float64))
  ref_mse = np.mean((ref.predict(r[test].astype(np.float64)) - w[test]) ** 2)
  assert metrics["test_mse"] == pytest.approx(ref_mse, rel=1e-3)
  assert metrics["test_r2"] > 0.9 and metrics["shuffled_mse"] > 10 * metrics["test_mse"]
  params, meta = link.load(out)
  assert meta["n_test"] == 20
  assert _rel_err(link.predict(params, r[test]), ref.predict(r[test].astype(np.float64))) < 1e-4


def test_ols_ill_conditioned_falls_back_to_float64():
  rng = np.random.default_rng(0)
  n, dim_r = 600, 60
  q, _ = np.linalg.qr(rng.standard_normal((dim_r, dim_r)))
  mixing = (q * np.logspace(0, -5, dim_r)) @ q.T  # cond(R) ~ 1e5, cond(Gram) ~ 1e10
  r = (rng.standard_normal((n + 50, dim_r)) @ mixing + 1.0).astype(np.float32)
  w = (r @ rng.standard_normal((dim_r, 8)) + 0.1 * rng.standard_normal((n + 50, 8))
       ).astype(np.float32)
  ref = LinearRegression().fit(r[:n].astype(np.float64), w[:n].astype(np.float64))
  expected = ref.predict(r[n:].astype(np.float64))
  auto = link.predict(link.fit_ols(r[:n], w[:n]), r[n:])
  forced32 = link.predict(link.fit_ols(r[:n], w[:n], precision="float32"), r[n:])
  assert _rel_err(auto, expected) < 1e-4
  # The float32 Gram alone is not accurate here: the fallback is what makes 'auto' pass.
  assert _rel_err(forced32, expected) > 1e-4


def test_mlp_no_retrace_for_new_data_or_lr():
  r, w, _ = _linear_data(40, 5, 2, seed=4)
  link.fit_mlp(jax.random.key(0), r, w, hidden=(8,), steps=3, lr=1e-3, batch=16)
  before = link._mlp_train._cache_size()
  link.fit_mlp(jax.random.key(1), r + np.float32(1.0), w, hidden=(8,), steps=3, lr=5e-3, batch=16)
  assert link._mlp_train._cache_size() == before


def test_fit_rejects_non_finite_inputs_with_the_bad_rows():
  rng = np.random.default_rng(0)
  r = rng.normal(size=(20, 4)).astype(np.float32)
  w = rng.normal(size=(20, 3)).astype(np.float32)
  r[7, 2] = np.nan
  with pytest.raises(ValueError, match=r"r has non-finite.*1 of 20 rows.*\[7\]"):
    link.fit(r, w)
  r[7, 2] = 0.0
  w[3, 0] = np.inf
  with pytest.raises(ValueError, match=r"w has non-finite.*\[3\]"):
    link.fit(r, w, model="ridge")
