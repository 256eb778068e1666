"""The linking network f: r -> w (paper Sec. 4.1): OLS, ridge and a small MLP.

All models are plain pytrees of float32 arrays so they can be saved with
`linkjax.checkpoint.save_tree` and passed into jitted code:

  * linear (OLS, ridge): `{'kernel': [R, D], 'bias': [D]}`; w = r @ kernel + bias.
  * MLP: `{'r_mean': [R], 'r_std': [R], 'w_mean': [D], 'w_std': [D],
    'layers': {'layer_0': {'kernel', 'bias'}, ...}}`; ReLU between layers, inputs and
    targets standardised with the stored statistics.

`predict` dispatches on that structure at trace time, so it is jit-compatible.

OLS / ridge numerics. scikit-learn's `LinearRegression()` (the paper's default) centres r and w and
solves the least-squares problem with an SVD-based LAPACK solver (gelsd), which is accurate but
slow on 25 000 x 2048. We use the normal equations instead, on the smaller side: the Gram matrix
G = Rc^T Rc [R, R] when N > R, or the kernel K = Rc Rc^T [N, N] (dual form, which gives the
minimum-norm solution that gelsd returns) when N <= R.
  * The heavy product Rc^T Rc is a float32 jitted matmul. The small R x R solve runs in float64
    numpy/scipy (Cholesky), because float32 factorisations of G lose ~cond(G) * 1e-7 relative
    accuracy; jax_enable_x64 stays off.
  * Forming G in float32 squares the conditioning, so with `precision='auto'` the float32 Gram is
    used only when cond(G) <= `_MAX_COND_FLOAT32` (estimated by power / inverse iteration on the
    Cholesky factor); otherwise G is recomputed in float64 numpy (about 1.5x the float32 time).
  * If G is (numerically) singular, cond > `_MAX_COND_CHOLESKY`, the float64 eigendecomposition
    gives the pseudo-inverse (minimum-norm) solution, eigenvalues below `_EIG_RCOND` * s_max
    counting as zero, like gelsd's cutoff on singular values. The dual form always uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from linkjax import checkpoint, files
from linkjax import pairs as pairs_lib

Params = dict[str, Any]
Precision = Literal["auto", "float32", "float64"]

CHECKPOINT_KIND = "link"
# float32 Gram entries carry relative errors ~1e-7; with cond(G) <= 100 the solution error along
# the worst direction stays ~1e-5, inside the 1e-4 agreement with scikit-learn we promise.
_MAX_COND_FLOAT32 = 100.0
# A float64 Cholesky solve is accurate to ~cond * 1e-16; beyond this the problem is treated as
# rank deficient and solved by the eigendecomposition's pseudo-inverse (minimum norm).
_MAX_COND_CHOLESKY = 1e10
_COND_ITERS = 30
# Relative eigenvalue cutoff of the float64 solve (the pseudo-inverse's null space). eigh's
# absolute error is ~n * eps64 * s_max, so smaller eigenvalues are numerically zero.
_EIG_RCOND = 1e-12


# --- linear models ------------------------------------------------------------------------------

@jax.jit
def _centre(r: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  r_mean, w_mean = jnp.mean(r, axis=0), jnp.mean(w, axis=0)
  return r - r_mean, w - w_mean, r_mean, w_mean


@jax.jit
def _primal_products_f32(rc: jax.Array, wc: jax.Array) -> tuple[jax.Array, jax.Array]:
  return rc.T @ rc, rc.T @ wc


def _cholesky_solve(a: np.ndarray, b: np.ndarray, ridge: float
                    ) -> tuple[np.ndarray, float] | None:
  """Solves (a + ridge I) x = b by float64 Cholesky; returns (x, cond estimate) or None.

  None when the matrix is not numerically positive definite. The 2-norm condition number is
  estimated with power iteration (largest eigenvalue) and inverse iteration through the Cholesky
  factor (smallest): O(n^2) per step, far cheaper than an eigendecomposition.
  """
  a = a.astype(np.float64)
  a[np.diag_indices_from(a)] += ridge
  try:
    factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
  except np.linalg.LinAlgError:
    return None
  x = scipy.linalg.cho_solve(factor, b.astype(np.float64), check_finite=False)
  start = np.linspace(1.0, 2.0, a.shape[0])  # deterministic, not orthogonal to any eigenvector
  v, u = start / np.linalg.norm(start), start / np.linalg.norm(start)
  for _ in range(_COND_ITERS):
    v = a @ v
    v /= np.linalg.norm(v)
    u = scipy.linalg.cho_solve(factor, u, check_finite=False)
    u /= np.linalg.norm(u)
  lam_max, lam_min = float(v @ a @ v), float(u @ a @ u)
  if not (np.all(np.isfinite(x)) and np.isfinite(lam_max) and lam_min > 0):
    return None
  return x, lam_max / lam_min


def _eigh_solve(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
  """Minimum-norm solution of (a + ridge I) x = b for symmetric PSD `a` (float64 pseudo-inverse)."""
  s, v = np.linalg.eigh(a.astype(np.float64))
  s = s + ridge
  s_max = max(float(s[-1]), 0.0)
  keep = s > _EIG_RCOND * s_max if s_max > 0 else np.zeros_like(s, dtype=bool)
  inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
  return v @ (inv[:, None] * (v.T @ b.astype(np.float64)))


def _solve_gram(gram: np.ndarray, rhs: np.ndarray, ridge: float, max_cond: float
                ) -> np.ndarray | None:
  """Cholesky solve if the Gram matrix is conditioned well enough (cond <= max_cond), else None."""
  result = _cholesky_solve(gram, rhs, ridge)
  if result is None or result[1] > max_cond:
    return None
  return result[0]


def _fit_linear(r: Any, w: Any, ridge: float, precision: Precision) -> Params:
  r = jnp.asarray(r, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  if r.ndim != 2 or w.ndim != 2 or r.shape[0] != w.shape[0]:
    raise ValueError(f"expected r [N, R] and w [N, D] with equal N, got {r.shape} and {w.shape}")
  if precision not in ("auto", "float32", "float64"):
    raise ValueError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}")
  n, dim_r = r.shape
  rc, wc, r_mean, w_mean = _centre(r, w)
  if n > dim_r:
    kernel = None
    if precision in ("auto", "float32"):
      gram, rhs = (np.asarray(x) for x in _primal_products_f32(rc, wc))
      kernel = _solve_gram(gram, rhs, ridge,
                           _MAX_COND_FLOAT32 if precision == "auto" else _MAX_COND_CHOLESKY)
      if kernel is None and precision == "float32":
        kernel = _eigh_solve(gram, rhs, ridge)
    if kernel is None:
      rc64, wc64 = np.asarray(rc, np.float64), np.asarray(wc, np.float64)
      gram, rhs = rc64.T @ rc64, rc64.T @ wc64
      kernel = _solve_gram(gram, rhs, ridge, _MAX_COND_CHOLESKY)
      if kernel is None:  # (nearly) rank deficient: minimum-norm least squares, as gelsd
        kernel = _eigh_solve(gram, rhs, ridge)
  else:
    # Dual form: kernel = Rc^T (Rc Rc^T + ridge I)^+ Wc is the minimum-norm solution. N is small
    # here, so the float64 products are cheap; centring leaves K singular (the ones vector), which
    # the pseudo-inverse handles.
    rc64, wc64 = np.asarray(rc, np.float64), np.asarray(wc, np.float64)
    gram_n = rc64 @ rc64.T
    # Ridge makes the n x n system positive definite: Cholesky, ~10x cheaper than eigh.
    solved = _cholesky_solve(gram_n, wc64, ridge) if ridge > 0 else None
    dual = solved[0] if solved is not None else _eigh_solve(gram_n, wc64, ridge)
    kernel = rc64.T @ dual
  kernel = jnp.asarray(kernel, jnp.float32)
  bias = w_mean - r_mean @ kernel
  return {"kernel": kernel, "bias": bias}


def normal_equations(n: int, dim_r: int) -> str:
  """Which normal equations a linear fit of n samples of R (dim_r) solves: the smaller side.

  'primal' (the dim_r x dim_r Gram matrix, when n > dim_r) or 'dual' (the n x n kernel matrix,
  when n <= dim_r, e.g. VGG16's 25 088-d or DenseNet-201's 94 080-d R with fewer pairs; the dual
  costs O(n^3) and n x n float64 memory, ridge solves it by Cholesky, OLS by an
  eigendecomposition for the minimum-norm solution).
  """
  return "primal" if n > dim_r else "dual"


def fit_ols(r: Any, w: Any, *, precision: Precision = "auto") -> Params:
  """Ordinary least squares with intercept (scikit-learn `LinearRegression()` semantics).

  Underdetermined problems (N <= R) get the minimum-norm solution, as scikit-learn returns.

  Args:
    r: [N, R] inputs (classifier activations).
    w: [N, D] targets (generator latents).
    precision: 'float32' Gram matrix, 'float64' Gram matrix, or 'auto' (float32 unless the
      problem is too ill-conditioned for it; see the module docstring).

  Returns:
    {'kernel': [R, D], 'bias': [D]} float32.
  """
  return _fit_linear(r, w, 0.0, precision)


def fit_ridge(r: Any, w: Any, alpha: float = 1.0, *, precision: Precision = "auto") -> Params:
  """Ridge regression with an unpenalised intercept (scikit-learn `Ridge(alpha)` semantics).

  Args:
    r: [N, R] inputs.
    w: [N, D] targets.
    alpha: L2 penalty on the kernel (sum of squared residuals + alpha * ||kernel||^2).
    precision: as in `fit_ols`.

  Returns:
    {'kernel': [R, D], 'bias': [D]} float32.
  """
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}")
  return _fit_linear(r, w, float(alpha), precision)


# --- MLP ----------------------------------------------------------------------------------------

def _mlp_apply(layers: Params, x: jax.Array) -> jax.Array:
  names = sorted(layers, key=lambda s: int(s.split("_")[1]))
  for i, name in enumerate(names):
    x = x @ layers[name]["kernel"] + layers[name]["bias"]
    if i < len(names) - 1:
      x = jax.nn.relu(x)
  return x


def _mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> Params:
  layers = {}
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    key, sub = jax.random.split(key)
    # He initialisation for ReLU layers.
    std = jnp.float32(np.sqrt(2.0 / fan_in))
    layers[f"layer_{i}"] = {
        "kernel": jax.random.normal(sub, (fan_in, fan_out), jnp.float32) * std,
        "bias": jnp.zeros((fan_out,), jnp.float32),
    }
  return layers


@functools.partial(jax.jit, static_argnames=("steps", "batch"))
def _mlp_train(layers: Params, x: jax.Array, y: jax.Array, key: jax.Array, lr: jax.Array,
               weight_decay: jax.Array, *, steps: int, batch: int) -> tuple[Params, jax.Array]:
  """Trains on standardised x [N, R], y [N, D] for `steps` Adam steps; returns (layers, losses)."""
  n = x.shape[0]
  # lr and weight decay are traced, so new values do not recompile; adamw with decay 0 is Adam.
  optimizer = optax.adamw(lr, weight_decay=weight_decay)

  def loss_fn(p: Params, xb: jax.Array, yb: jax.Array) -> jax.Array:
    return jnp.mean((_mlp_apply(p, xb) - yb) ** 2)

  def step(carry, step_key):
    p, opt_state = carry
    idx = jax.random.randint(step_key, (batch,), 0, n)
    loss, grads = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  (layers, _), losses = jax.lax.scan(step, (layers, optimizer.init(layers)),
                                     jax.random.split(key, steps))
  return layers, losses


def fit_mlp(key: jax.Array, r: Any, w: Any, *, hidden: tuple[int, ...] = (1024,),
            steps: int = 2000, lr: float = 1e-3, batch: int = 256,
            weight_decay: float = 0.0) -> Params:
  """A ReLU MLP r -> w trained with Adam(W) on mean squared error (one jitted lax.scan).

  Inputs and targets are standardised with training statistics stored in the params (units with
  zero variance, e.g. dead ReLUs, get std 1).

  Args:
    key: PRNG key for initialisation and minibatch sampling (with replacement).
    r: [N, R] inputs.
    w: [N, D] targets.
    hidden: hidden layer widths.
    steps: optimiser steps.
    lr: Adam learning rate.
    batch: minibatch size.
    weight_decay: decoupled weight decay (optax.adamw); 0 is plain Adam.

  Returns:
    {'r_mean', 'r_std', 'w_mean', 'w_std', 'layers': {'layer_i': {'kernel', 'bias'}}}.
  """
  r = jnp.asarray(r, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  r_mean, r_std = jnp.mean(r, 0), jnp.std(r, 0)
  w_mean, w_std = jnp.mean(w, 0), jnp.std(w, 0)
  r_std = jnp.where(r_std > 1e-6, r_std, jnp.float32(1.0))
  w_std = jnp.where(w_std > 1e-6, w_std, jnp.float32(1.0))
  init_key, train_key = jax.random.split(key)
  layers = _mlp_init(init_key, (r.shape[1], *hidden, w.shape[1]))
  # optax's Adam bias correction mixes a Python float with its int32 step count, which strict
  # dtype promotion rejects; our own code is strict-clean.
  with jax.numpy_dtype_promotion("standard"):
    layers, _ = _mlp_train(layers, (r - r_mean) / r_std, (w - w_mean) / w_std, train_key,
                           jnp.float32(lr), jnp.float32(weight_decay), steps=int(steps),
                           batch=int(min(batch, r.shape[0])))
  return {"r_mean": r_mean, "r_std": r_std, "w_mean": w_mean, "w_std": w_std, "layers": layers}


# --- common API ---------------------------------------------------------------------------------

def check_finite(r: Any, w: Any) -> None:
  """Raises ValueError naming the rows of r [N, R] / w [N, D] that hold NaN or inf."""
  for name, x in (("r", r), ("w", w)):
    x = np.asarray(x)
    if x.ndim != 2:
      raise ValueError(f"{name} must be 2-D [N, dim], got shape {x.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
      raise ValueError(f"{name} has non-finite values (NaN or inf) in {bad.size} of {x.shape[0]} "
                       f"rows, e.g. rows {bad[:5].tolist()}; fix or drop them before fitting")


def fit(r: Any, w: Any, model: str = "ols", *, alpha: float = 1.0, key: jax.Array | None = None,
        **mlp_kwargs: Any) -> Params:
  """Fits a linking network r -> w.

  Args:
    r: [N, R] classifier activations.
    w: [N, D] generator latents.
    model: 'ols', 'ridge' or 'mlp'.
    alpha: ridge penalty (model='ridge' only).
    key: PRNG key, required for model='mlp'.
    **mlp_kwargs: forwarded to `fit_mlp` (hidden, steps, lr, batch, weight_decay).

  Returns:
    params pytree for `predict`.

  Raises:
    ValueError: for mismatched shapes or non-finite values in r or w (naming the bad rows).
  """
  check_finite(r, w)
  if model == "ols":
    return fit_ols(r, w)
  if model == "ridge":
    return fit_ridge(r, w, alpha)
  if model == "mlp":
    if key is None:
      raise ValueError("model='mlp' needs an explicit PRNG key")
    return fit_mlp(key, r, w, **mlp_kwargs)
  raise ValueError(f"unknown link model {model!r}; expected 'ols', 'ridge' or 'mlp'")


@jax.jit
def predict(params: Params, r: jax.Array) -> jax.Array:
  """Maps activations to latents.

  Args:
    params: a linear ({'kernel', 'bias'}) or MLP params pytree.
    r: [N, R] activations.

  Returns:
    w: [N, D] float32.
  """
  r = jnp.asarray(r).astype(jnp.float32)
  if "layers" in params:
    x = (r - params["r_mean"]) / params["r_std"]
    return _mlp_apply(params["layers"], x) * params["w_std"] + params["w_mean"]
  return r @ params["kernel"] + params["bias"]


@jax.jit
def _mse_r2(pred: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
  mse = jnp.mean((pred - w) ** 2)
  ss_res = jnp.sum((pred - w) ** 2, axis=0)
  ss_tot = jnp.sum((w - jnp.mean(w, axis=0)) ** 2, axis=0)
  # scikit-learn's r2_score convention for constant targets: 1 if predicted exactly, else 0.
  r2 = jnp.where(ss_tot > 0, 1.0 - ss_res / jnp.where(ss_tot > 0, ss_tot, 1.0),
                 jnp.where(ss_res == 0, 1.0, 0.0))
  return mse, jnp.mean(r2)


def evaluate(params: Params, r: Any, w: Any) -> dict[str, float]:
  """MSE over all entries and R² (mean over output dimensions, as sklearn's r2_score).

  Args:
    params: link params.
    r: [N, R] activations.
    w: [N, D] true latents.

  Returns:
    {'mse': float, 'r2': float}.
  """
  mse, r2 = _mse_r2(predict(params, r), jnp.asarray(w, jnp.float32))
  return {"mse": float(mse), "r2": float(r2)}


def shuffled_baseline_mse(params: Params, r: Any, w: Any, *, seed: int) -> float:
  """MSE between predictions and the latents of randomly re-paired samples (chance level).

  Args:
    params: link params.
    r: [N, R] activations.
    w: [N, D] latents; compared after a seeded permutation of the rows.
    seed: permutation seed (numpy default_rng).

  Returns:
    the mean squared error against w[perm].
  """
  w = np.asarray(w, np.float32)
  perm = np.random.default_rng(seed).permutation(w.shape[0])
  return evaluate(params, r, w[perm])["mse"]


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic random train / held-out split of `n` samples.

  Args:
    n: number of samples.
    holdout: held-out fraction in [0, 1); the test size is round(holdout * n).
    seed: numpy default_rng seed.

  Returns:
    (train_idx, test_idx): sorted, disjoint int64 index arrays covering range(n).
  """
  if not 0.0 <= holdout < 1.0:
    raise ValueError(f"holdout must be in [0, 1), got {holdout}")
  perm = np.random.default_rng(seed).permutation(n)
  n_test = int(round(holdout * n))
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def save(path: str | pathlib.Path, params: Params, meta: dict[str, Any]) -> None:
  """Writes link params and JSON-serialisable `meta` to directory `path` (kind 'link')."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  checkpoint.save_tree(path, params, meta, kind=CHECKPOINT_KIND)


def load(path: str | pathlib.Path) -> tuple[Params, dict[str, Any]]:
  """Reads link params saved by `save`; returns (params, meta) with numpy float32 arrays."""
  return checkpoint.load_tree(path, kind=CHECKPOINT_KIND)


def fit_and_evaluate(r: Any, w: Any, *, model: str = "ols", alpha: float = 1.0,
                     holdout: float = 0.1, seed: int = 0, **mlp_kwargs: Any
                     ) -> tuple[Params, dict[str, Any]]:
  """Splits by seed, fits on the training part and evaluates on both parts.

  Args:
    r: [N, R] activations.
    w: [N, D] latents.
    model: 'ols', 'ridge' or 'mlp'.
    alpha: ridge penalty.
    holdout: held-out fraction (see `split_holdout`).
    seed: seeds the split, the shuffled baseline's permutation and (via jax.random.key(seed))
      the MLP.
    **mlp_kwargs: forwarded to `fit_mlp`.

  Returns:
    (params, metrics) with metrics: model, alpha, seed, holdout, n_train, n_test, train_mse,
    train_r2, test_mse, test_r2, shuffled_mse (held-out baseline; on the training set when
    holdout is 0); test_* are None when there is no held-out set.
  """
  check_finite(r, w)  # every row, held-out ones too: NaN must not reach the metrics
  r = np.asarray(r, np.float32)
  w = np.asarray(w, np.float32)
  if r.shape[0] != w.shape[0]:
    raise ValueError(f"r has {r.shape[0]} rows but w has {w.shape[0]}")
  train_idx, test_idx = split_holdout(r.shape[0], holdout, seed)
  key = jax.random.key(seed) if model == "mlp" else None
  params = fit(r[train_idx], w[train_idx], model, alpha=alpha, key=key, **mlp_kwargs)
  train = evaluate(params, r[train_idx], w[train_idx])
  metrics: dict[str, Any] = {
      "model": model, "alpha": float(alpha) if model == "ridge" else None, "seed": int(seed),
      "holdout": float(holdout), "n_train": int(train_idx.size), "n_test": int(test_idx.size),
      "train_mse": train["mse"], "train_r2": train["r2"], "test_mse": None, "test_r2": None,
      "normal_equations": (normal_equations(int(train_idx.size), int(r.shape[1]))
                           if model != "mlp" else None),
  }
  if model == "mlp":
    metrics["mlp"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in mlp_kwargs.items()}
  base_idx = test_idx if test_idx.size else train_idx
  if test_idx.size:
    test = evaluate(params, r[test_idx], w[test_idx])
    metrics["test_mse"], metrics["test_r2"] = test["mse"], test["r2"]
  metrics["shuffled_mse"] = shuffled_baseline_mse(params, r[base_idx], w[base_idx], seed=seed)
  metrics["shuffled_on"] = "test" if test_idx.size else "train"
  return params, metrics


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinkConfig:
  """How to fit the link (flags of experiments/fit_link.py).

  Attributes:
    model: 'ols' (the paper), 'ridge' or 'mlp'.
    alpha: ridge penalty.
    holdout: held-out fraction of the pairs, in [0, 1).
    seed: seed of the split, the shuffled baseline and the MLP.
    hidden, steps, lr, batch: MLP settings.
  """
  model: str = "ols"
  alpha: float = 1.0
  holdout: float = 0.1
  seed: int = 0
  hidden: tuple[int, ...] = (1024,)
  steps: int = 2000
  lr: float = 1e-3
  batch: int = 256

  def __post_init__(self):
    if self.model not in ("ols", "ridge", "mlp"):
      raise ValueError(f"model must be 'ols', 'ridge' or 'mlp', got {self.model!r}")
    if not 0.0 <= self.holdout < 1.0:
      raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
    if not np.isfinite(self.alpha) or self.alpha < 0:
      raise ValueError(f"alpha must be finite and >= 0, got {self.alpha}")


def fit_from_pairs(pairs_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   config: LinkConfig = LinkConfig()) -> dict[str, Any]:
  """Fits the link on a pair directory, saves it (with metrics.json) to `out_dir`.

  Returns:
    the metrics of `fit_and_evaluate` plus 'pairs' and 'mse_ratio_to_shuffled' (held-out MSE /
    shuffled-pairs MSE; None without a held-out set).
  """
  data = pairs_lib.load(pairs_dir)
  mlp = (dict(hidden=tuple(config.hidden), steps=config.steps, lr=config.lr, batch=config.batch)
         if config.model == "mlp" else {})
  params, metrics = fit_and_evaluate(data["r"], data["w"], model=config.model, alpha=config.alpha,
                                     holdout=config.holdout, seed=config.seed, **mlp)
  metrics["pairs"] = str(pathlib.Path(pairs_dir).absolute())
  metrics["mse_ratio_to_shuffled"] = (metrics["test_mse"] / metrics["shuffled_mse"]
                                      if metrics["test_mse"] is not None else None)
  save(out_dir, params, metrics)
  files.write_json(pathlib.Path(out_dir) / "metrics.json", metrics)
  return metrics
