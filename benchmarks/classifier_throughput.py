r"""Forward throughput of every classifier family on CPU: linkjax (Flax NNX, jit) vs torchvision.

    python benchmarks/classifier_throughput.py [--models=resnet50,vgg16,alexnet,densenet201]
        [--batch=8] [--size=224] [--iters=3] [--warmup=1] [--single_thread]

Random weights (timing only): He-scaled normal kernels, unit BatchNorm, zero biases, filled
into the abstract model (no initializer compiles). Flax runs NHWC under `jax.jit` with the state
passed as an argument; torchvision (if importable) runs the same architectures in NCHW, eval
mode, under `torch.no_grad()`. After compilation and warm-up, all runners are timed call by
call in turn, so background load hits them alike; the median of `--iters` passes is reported as
images/s, with ratios against the first model's Flax row (the baseline, measured in this run)
and Flax/torch per model.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from linkjax import models  # noqa: E402
from ports import torchvision_tables as tables  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["resnet50", "vgg16", "alexnet", "densenet201"],
                            "torchvision model names (see ports.torchvision.ARCHS); the first "
                            "is the baseline of the ratios.")
_BATCH = flags.DEFINE_integer("batch", 8, "images per forward pass.")
_SIZE = flags.DEFINE_integer("size", 224, "input height and width in pixels.")
_ITERS = flags.DEFINE_integer("iters", 3, "timed forward passes per runner (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed forward passes after compilation.")
_SINGLE_THREAD = flags.DEFINE_bool(
    "single_thread", False, "run both frameworks on one thread (XLA without its Eigen pool, "
    "torch.set_num_threads(1)); less sensitive to other load on the machine.")


def _forward(graphdef, state, x):
  logits, _ = nnx.merge(graphdef, state)(x)
  return logits


def flax_runner(name: str, batch: int, size: int):
  """A zero-argument callable running one jit-compiled Flax forward pass of `name`."""
  config = tables.config_for_arch(name, {})
  model_cls, _ = models.ARCHITECTURES[tables.ARCHS[name]].classes()
  t0 = time.perf_counter()
  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0))))
  t_build = time.perf_counter() - t0
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    key = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    if key == "kernel":  # conv [kh, kw, in, out] or linear [in, out]: fan-in is all but last
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in))
    return jnp.ones(leaf.shape, leaf.dtype) if key in ("scale", "var") else jnp.zeros(
        leaf.shape, leaf.dtype)

  state = jax.tree_util.tree_map_with_path(fill, state)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  fwd = jax.jit(_forward, static_argnums=0)
  t0 = time.perf_counter()
  fwd(graphdef, state, x).block_until_ready()
  print(f"flax  {name}: abstract build {t_build:.1f} s, compile + first call "
        f"{time.perf_counter() - t0:.1f} s")
  return lambda: fwd(graphdef, state, x).block_until_ready()


def torch_runner(name: str, batch: int, size: int):
  """A zero-argument callable running torchvision's `name`, or None without torch."""
  try:
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415
  except ImportError:
    return None
  if _SINGLE_THREAD.value:
    torch.set_num_threads(1)
  model = getattr(torchvision.models, name)().eval()
  x = torch.randn(batch, 3, size, size)

  def run():
    with torch.no_grad():
      model(x)

  return run


def _interleaved_medians(runners: dict, iters: int, warmup: int) -> dict:
  for _ in range(warmup):
    for fn in runners.values():
      fn()
  times = {name: [] for name in runners}
  for _ in range(iters):
    for name, fn in runners.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  if _SINGLE_THREAD.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               "false intra_op_parallelism_threads=1").strip()
  b, s, it, wu = _BATCH.value, _SIZE.value, _ITERS.value, _WARMUP.value
  print(f"jax {jax.__version__} on {jax.devices()}, batch {b}, {s}x{s}, {os.cpu_count()} cpus, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  runners = {}
  for name in _MODELS.value:
    runners[("flax", name)] = flax_runner(name, b, s)
    torch_run = torch_runner(name, b, s)
    if torch_run is not None:
      runners[("torch", name)] = torch_run
  med = _interleaved_medians(runners, it, wu)
  ips = {k: b / t for k, t in med.items()}
  base = ips[("flax", _MODELS.value[0])]
  print(f"\n{'model':12s} {'flax img/s':>10s} {'vs ' + _MODELS.value[0]:>14s} "
        f"{'torch img/s':>11s} {'flax/torch':>10s}   (median of {it})")
  for name in _MODELS.value:
    f = ips[("flax", name)]
    t = ips.get(("torch", name))
    print(f"{name:12s} {f:10.2f} {f / base:13.2f}x "
          + (f"{t:11.2f} {f / t:9.2f}x" if t else f"{'n/a':>11s} {'n/a':>10s}"))


if __name__ == "__main__":
  app.run(main)
