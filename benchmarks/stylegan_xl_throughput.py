r"""StyleGAN-XL synthesis throughput, jit compile time and peak memory (random weights).

  python -m benchmarks.stylegan_xl_throughput --configs=tiny,imagenet256 --batch=1 \
      --iters_tiny=20 --iters_large=3

Configs: 'tiny' = the parity fixture's geometry (`stylegan_xl.tiny_config(32)`), 'imagenetR' =
the ImageNet StyleGAN-XL geometry at resolution R (`stylegan_xl.imagenet_config(R)`, e.g.
imagenet256: 31 layers + input, ~233 M parameters). Weights are random (the timing does not
depend on them). For each config: model construction time, `jax.jit(...).lower(...).compile()`
time, XLA's FLOP estimate per image, images/s over the timed iterations (after one warm-up
call), and the process's peak resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`,
cumulative over the run, so configs are listed small to large).
"""

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from linkjax.models import stylegan_xl as sx

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "imagenet256"],
                             "Configs to run: 'tiny' or 'imagenet<resolution>'.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per synthesis call.")
_ITERS_TINY = flags.DEFINE_integer("iters_tiny", 20, "Timed calls for the tiny config.")
_ITERS_LARGE = flags.DEFINE_integer("iters_large", 3, "Timed calls for imagenet configs.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Synthesis compute dtype.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the random weights and ws.")


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def bench(name: str, batch: int, iters: int, dtype: str, seed: int) -> dict:
  """Builds one random-weight generator and times its jitted synthesis."""
  cfg = sx.tiny_config(32) if name == "tiny" else sx.imagenet_config(int(name[len("imagenet"):]))
  cfg = cfg.replace(dtype=dtype)
  t0 = time.perf_counter()
  model = sx.StyleGANXL(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  jax.block_until_ready(state)
  t_build = time.perf_counter() - t0
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  del model

  def synth(state, ws):
    return nnx.merge(graphdef, state).synthesis(ws)

  ws = jax.random.normal(jax.random.key(seed), (batch, cfg.num_ws, cfg.w_dim), jnp.float32)
  t0 = time.perf_counter()
  compiled = jax.jit(synth).lower(state, ws).compile()
  t_compile = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) / batch if cost else float("nan")
  jax.block_until_ready(compiled(state, ws))  # warm-up
  t0 = time.perf_counter()
  for i in range(iters):
    out = compiled(state, ws + jnp.float32(i))
  jax.block_until_ready(out)
  dt = time.perf_counter() - t0
  return {"config": name, "resolution": cfg.img_resolution, "num_ws": cfg.num_ws,
          "params_M": n_params / 1e6, "build_s": t_build, "compile_s": t_compile,
          "gflop_per_image": flops / 1e9, "images_per_s": batch * iters / dt,
          "s_per_image": dt / (batch * iters), "peak_rss_gib": _peak_rss_gib()}


def main(argv):
  del argv
  logging.info("configs=%s batch=%d iters_tiny=%d iters_large=%d dtype=%s devices=%s",
               _CONFIGS.value, _BATCH.value, _ITERS_TINY.value, _ITERS_LARGE.value,
               _DTYPE.value, jax.devices())
  for name in _CONFIGS.value:
    iters = _ITERS_TINY.value if name == "tiny" else _ITERS_LARGE.value
    r = bench(name, _BATCH.value, iters, _DTYPE.value, _SEED.value)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
          flush=True)


if __name__ == "__main__":
  app.run(main)
