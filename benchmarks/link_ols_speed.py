"""OLS fit time of linkjax.link.fit_ols vs scikit-learn LinearRegression on the same data.

  python -m benchmarks.link_ols_speed --n=25000 --dim_r=2048 --dim_w=512 --repeats=2

Random data with a linear ground truth plus noise, float32 (as stored pairs are); both fits in
the same process; reports wall times (best of --repeats, after one untimed jax warm-up on the
same shapes) and the agreement of the predictions.
"""

import time

from absl import app, flags, logging
import jax
import numpy as np
from sklearn.linear_model import LinearRegression

from linkjax import link

_N = flags.DEFINE_integer("n", 25000, "Number of (r, w) pairs.")
_DIM_R = flags.DEFINE_integer("dim_r", 2048, "Input dimension (classifier units).")
_DIM_W = flags.DEFINE_integer("dim_w", 512, "Output dimension (w).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions per method (best is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "numpy seed of the synthetic data.")


def make_data(n: int, dim_r: int, dim_w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-negative r [n, dim_r] and w = r @ K + b + noise [n, dim_w], float32."""
  rng = np.random.default_rng(seed)
  r = np.abs(rng.standard_normal((n, dim_r), dtype=np.float32))
  kernel = rng.standard_normal((dim_r, dim_w), dtype=np.float32) / np.float32(np.sqrt(dim_r))
  w = r @ kernel + np.float32(0.5) + np.float32(0.1) * rng.standard_normal((n, dim_w),
                                                                           dtype=np.float32)
  return r, w


def _best_time(fn, repeats: int):
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return min(times), out


def main(argv):
  del argv
  logging.info("flags: n=%d dim_r=%d dim_w=%d repeats=%d seed=%d; devices %s", _N.value,
               _DIM_R.value, _DIM_W.value, _REPEATS.value, _SEED.value, jax.devices())
  r, w = make_data(_N.value, _DIM_R.value, _DIM_W.value, _SEED.value)
  jax.block_until_ready(link.fit_ols(r, w))  # compile

  def ours():
    return jax.block_until_ready(link.fit_ols(r, w))

  t_ours, params = _best_time(ours, _REPEATS.value)
  t_sk, ref = _best_time(lambda: LinearRegression().fit(r, w), _REPEATS.value)
  pred, pred_ref = np.asarray(link.predict(params, r[:1000])), ref.predict(r[:1000])
  rel = np.max(np.abs(pred - pred_ref)) / np.max(np.abs(pred_ref))
  print(f"OLS {_N.value} x {_DIM_R.value} -> {_DIM_W.value} (float32, best of {_REPEATS.value})")
  print(f"  linkjax fit_ols:              {t_ours:8.3f} s")
  print(f"  sklearn LinearRegression:     {t_sk:8.3f} s")
  print(f"  ratio linkjax / sklearn:      {t_ours / t_sk:8.3f}")
  print(f"  max rel. prediction diff:     {rel:.2e}")


if __name__ == "__main__":
  app.run(main)
