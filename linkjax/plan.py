"""Planning a sweep before it runs: images, FLOPs (XLA cost analysis) and the expected time.

The sweep's compiled chunk step is built for the given models and this machine's devices; its
FLOPs per image come from XLA's cost analysis of the step without micro-batching (XLA counts a
loop body once, so the micro-batched step would under-count), and its time per chunk is measured
by running the real (micro-batched) step on a few chunks of random activations after compiling
it. The estimate is chunks x seconds per chunk / processes, plus the compile time.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linkjax import jobs, sweep


@dataclasses.dataclass(frozen=True)
class SweepPlan:
  """What a sweep will cost (see the module docstring)."""
  images: int
  chunks: int
  chunk: int
  devices: int
  processes: int
  gflop_per_image: float
  compile_s: float
  s_per_chunk: float

  @property
  def total_pflop(self) -> float:
    return self.images * self.gflop_per_image / 1e6

  @property
  def estimate_s(self) -> float:
    """Wall time of the whole sweep on this machine's devices, split over the processes."""
    return self.compile_s + self.chunks * self.s_per_chunk / self.processes

  @property
  def gflops(self) -> float:
    """Achieved GFLOP/s of the measured chunks."""
    return self.chunk * self.gflop_per_image / self.s_per_chunk

  def lines(self) -> list[str]:
    return [
        f"images: {self.images} ({self.chunks} chunks of {self.chunk} on {self.devices} "
        f"device(s), {self.processes} process(es))",
        f"FLOPs: {self.gflop_per_image:.3f} GFLOP per image, {self.total_pflop:.4g} PFLOP in all",
        f"measured: {self.s_per_chunk:.3f} s per chunk ({self.gflops:.1f} GFLOP/s), compile "
        f"{self.compile_s:.1f} s",
        f"estimated time: {self.estimate_s:.0f} s ({self.estimate_s / 3600:.2f} h)",
    ]


def plan_sweep(models: Any, params: Any, *, r_dim: int, n_samples: int, n_units: int, steps: int,
               chunk: int = 64, processes: int = 1, timed_chunks: int = 3,
               mesh: jax.sharding.Mesh | None = None, seed: int = 0) -> SweepPlan:
  """Measures the sweep step of `models` and extrapolates to the planned sweep.

  Args:
    models, params: the sweep's models (a bundle with link, generator, classifier, segmenter).
    r_dim: R, the representation's width.
    n_samples: base samples (all classes); n_units: units swept; steps: values per unit.
    chunk: images per compiled call (rounded up to the device count).
    processes: processes the sweep will be split over (identical machines assumed).
    timed_chunks: chunks run to measure the time per chunk.
    mesh: the devices (default: all local devices).
    seed: seed of the random activations the step is timed on.
  Returns:
    the plan (images, FLOPs, measured times, estimate).
  """
  mesh = mesh or jobs.data_mesh()
  chunk = jobs.padded_size(chunk, mesh)
  images = n_samples * n_units * steps + n_samples  # + the unperturbed baseline
  n_chunks = -(-(n_samples * n_units * steps) // chunk) + -(-n_samples // chunk)
  rng = np.random.default_rng(seed)
  r = rng.gamma(1.0, 1.0, (max(n_samples, 1), r_dim)).astype(np.float32)
  values = sweep.sweep_values(r.min(0), r.max(0), steps)
  classes = (0,)
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  args = [jax.device_put(params, repl), jax.device_put(r, repl), jax.device_put(values, repl)]
  idx = [jax.device_put(rng.integers(0, hi, chunk).astype(np.int32), data)
         for hi in (len(r), r_dim, steps)]
  plain = jax.jit(functools.partial(sweep.sweep_chunk, models, classes=classes,
                                    micro_batch=None))
  flops = plain.lower(*args, *idx).compile().cost_analysis()
  flops = flops[0] if isinstance(flops, (list, tuple)) else flops
  gflop = float(flops.get("flops", 0.0)) / chunk / 1e9
  step = sweep.make_step(models, classes, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(*args, *idx).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args, *idx))  # warm-up
  times = []
  for _ in range(max(1, timed_chunks)):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args, *idx))
    times.append(time.perf_counter() - t0)
  return SweepPlan(images=images, chunks=n_chunks, chunk=chunk, devices=mesh.devices.size,
                   processes=processes, gflop_per_image=gflop, compile_s=compile_s,
                   s_per_chunk=float(np.median(times)))


def r_dim_of(models: Any, params: Any) -> int:
  """R's width for a bundle: the classifier's representation of one generated image."""
  w = jax.ShapeDtypeStruct((1, int(models.generator_config.w_dim)), jnp.float32)
  return int(jax.eval_shape(lambda p, x: models.represent(p, models.render(p, x)), params,
                            w).shape[1])


def random_link(r_dim: int, w_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A random linear link r -> w for timing when no fitted link exists yet."""
  rng = np.random.default_rng(seed)
  return {"kernel": (rng.standard_normal((r_dim, w_dim)) / np.sqrt(r_dim)).astype(np.float32),
          "bias": np.zeros(w_dim, np.float32)}
