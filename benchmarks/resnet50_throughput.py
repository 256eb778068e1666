r"""ResNet-50 forward throughput on CPU: linkjax (Flax NNX, jit) vs PyTorch, same process.

    python benchmarks/resnet50_throughput.py [--batch=8] [--size=224] [--iters=10] [--single_thread]

Random weights (timing only). Flax runs NHWC under `jax.jit` with the state passed as an
argument; torch (if importable) runs a hand-built torchvision-equivalent ResNet-50 in NCHW,
eval mode, under `torch.no_grad()`. Both are warmed up first, then timed alternately call by
call (so background load hits both alike); the median of `--iters` passes is reported as
images/s with the Flax/torch ratio.
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

from linkjax.models import resnet  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 8, "images per forward pass.")
_SIZE = flags.DEFINE_integer("size", 224, "input height and width in pixels.")
_ITERS = flags.DEFINE_integer("iters", 10, "timed forward passes per framework (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed forward passes after compilation.")
_SINGLE_THREAD = flags.DEFINE_bool(
    "single_thread", False, "run both frameworks on one thread (XLA without its Eigen pool, "
    "torch.set_num_threads(1)); less sensitive to other load on the machine.")


def _forward(graphdef, state, x):
  logits, _ = nnx.merge(graphdef, state)(x)
  return logits


def flax_runner(batch: int, size: int):
  """A zero-argument callable running one jit-compiled Flax ResNet-50 forward pass."""
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: resnet.ResNet(resnet.ResNetConfig(depth=50), rngs=nnx.Rngs(0))))
  # He-scaled numpy weights, unit BatchNorm: keeps activations finite (denormals/NaNs would
  # distort timings) and avoids compiling one initializer per parameter shape.
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in))
    return jnp.ones(leaf.shape, leaf.dtype) if name in ("scale", "var") else jnp.zeros(
        leaf.shape, leaf.dtype)

  state = jax.tree_util.tree_map_with_path(fill, state)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  fwd = jax.jit(_forward, static_argnums=0)
  t0 = time.perf_counter()
  fwd(graphdef, state, x).block_until_ready()
  print(f"flax: compile + first call {time.perf_counter() - t0:.1f} s")
  return lambda: fwd(graphdef, state, x).block_until_ready()


def _torch_resnet50():
  import torch
  from torch import nn

  class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = None
      if stride != 1 or cin != planes * 4:
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * 4))

    def forward(self, x):
      idt = x if self.downsample is None else self.downsample(x)
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      return self.relu(self.bn3(self.conv3(y)) + idt)

  layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)]
  cin = 64
  for i, n in enumerate((3, 4, 6, 3)):
    for j in range(n):
      layers.append(Bottleneck(cin, 64 * 2**i, 2 if (i > 0 and j == 0) else 1))
      cin = 64 * 2**i * 4
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
  return nn.Sequential(*layers).eval(), torch


def torch_runner(batch: int, size: int):
  """A zero-argument callable running one torch ResNet-50 forward pass, or None without torch."""
  try:
    model, torch = _torch_resnet50()
  except ImportError:
    print("torch: not importable, skipped")
    return None
  if _SINGLE_THREAD.value:
    torch.set_num_threads(1)
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  x = torch.randn(batch, 3, size, size)

  def run():
    with torch.no_grad():
      model(x)

  return run


def _interleaved_medians(runners: dict, iters: int, warmup: int) -> dict:
  # Alternating the frameworks call by call gives both the same background load.
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
    # Read when the CPU backend starts, i.e. at the first computation below.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               "false intra_op_parallelism_threads=1").strip()
  b, s, it, wu = _BATCH.value, _SIZE.value, _ITERS.value, _WARMUP.value
  print(f"jax {jax.__version__} on {jax.devices()}, batch {b}, {s}x{s}, {os.cpu_count()} cpus, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  runners = {"flax": flax_runner(b, s)}
  torch_run = torch_runner(b, s)
  if torch_run is not None:
    runners["torch"] = torch_run
  med = _interleaved_medians(runners, it, wu)
  ips = {name: b / t for name, t in med.items()}
  for name, v in ips.items():
    print(f"{name:5s} ResNet-50: {v:7.2f} images/s (median of {it})")
  if "torch" in ips:
    print(f"ratio flax/torch: {ips['flax'] / ips['torch']:.2f}x")


if __name__ == "__main__":
  app.run(main)
