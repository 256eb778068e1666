r"""One accelerator check: generator, classifier, a sweep chunk and a counterfactual batch.

  python -m benchmarks.gpu_suite --out=gpu_suite.json            # accelerator sizes
  python -m benchmarks.gpu_suite --small --out=cpu_suite.json    # CPU / CI sizes (seconds)

Random weights (timing does not depend on them), built on the device. For each item: images/s
(median of --repeats timed calls after a compiling call), compile time, peak device memory
(`memory_stats()`, where the backend reports it), XLA FLOPs per call and the achieved fraction
of the device's dense bf16 peak (a table of known accelerators; null where unknown, e.g. CPUs).
Items: the StyleGAN-XL generator at the ImageNet-256 geometry in float32 and bfloat16 (tiny
geometry with --small), ResNet-50 forward at 224 (a small ResNet with --small), one sweep chunk
(link -> generator -> classifier + segmenter -> part metrics) and one counterfactual search
batch. Writes a JSON with one record per item; `benchmarks/gpu_suite.sh` wraps it with a time
limit.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from linkjax import bundle, files, sweep, testing
from linkjax import counterfactual as cf
from linkjax.models import resnet, segmenter, stylegan_xl

_SMALL = flags.DEFINE_bool("small", False, "Tiny sizes (CPU, CI).")
_BATCH = flags.DEFINE_integer("batch", None, "Images per call (default: 32, --small 4).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per item (median reported).")
_OUT = flags.DEFINE_string("out", None, "JSON file for the results.", required=True)

# Dense bf16 peak FLOP/s of known accelerators (device_kind substring -> FLOP/s).
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v5": 197e12,
             "TPU v4": 275e12}


def _peak(device: jax.Device) -> float | None:
  return next((v for k, v in BF16_PEAK.items() if k in device.device_kind), None)


def _peak_memory(device: jax.Device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _measure(name: str, fn: Callable[..., Any], args: tuple, images: int) -> dict[str, Any]:
  jitted = jax.jit(fn)
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  t = statistics.median(times)
  device = jax.devices()[0]
  peak = _peak(device)
  rec = {"item": name, "images_per_s": images / t, "seconds_per_call": t, "compile_s": compile_s,
         "flops_per_call": flops, "achieved_tflops": flops / t / 1e12,
         "bf16_roofline_fraction": (flops / t / peak) if peak else None,
         "peak_memory_bytes": _peak_memory(device)}
  print(f"{name:28s} {rec['images_per_s']:9.2f} images/s  compile {compile_s:6.1f} s  "
        f"{rec['achieved_tflops']:8.3f} TFLOP/s", flush=True)
  return rec


def main(argv):
  del argv
  small = _SMALL.value
  b = _BATCH.value or (4 if small else 32)
  rngs = nnx.Rngs(0)
  records = [{"device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
              "backend": jax.default_backend(), "batch": b, "small": small}]
  rng = np.random.default_rng(0)

  gens = {}
  for dtype in ("float32", "bfloat16"):
    cfg = (stylegan_xl.tiny_config(32, dtype=dtype) if small
           else stylegan_xl.imagenet_config(256, dtype=dtype))
    gen = stylegan_xl.StyleGANXL(cfg, rngs=rngs)
    gens[dtype] = gen
    g_def, g_state = nnx.split(gen)
    ws = jnp.asarray(rng.normal(size=(b, cfg.num_ws, cfg.w_dim)), jnp.float32)
    records.append(_measure(f"generator {cfg.img_resolution}px {dtype}",
                            lambda s, w, d=g_def: nnx.merge(d, s).synthesis(w), (g_state, ws), b))

  c_cfg = (testing.tiny_resnet_config(1000) if small else resnet.ResNetConfig(depth=50))
  clf = testing.random_module(resnet.ResNet, c_cfg, 1)
  c_def, c_state = nnx.split(clf)
  size = 64 if small else 224
  x = jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32)
  records.append(_measure(f"classifier {size}px", lambda s, x: nnx.merge(c_def, s)(x)[0],
                          (c_state, x), b))

  gen = gens["float32"]
  layers = segmenter.reference_feature_layers(gen.layer_names)
  _, feats = jax.eval_shape(lambda w: gen.synthesis(w, return_features=True),
                            jnp.zeros((1, gen.config.num_ws, gen.config.w_dim), jnp.float32))
  seg = testing.random_module(segmenter.FewShotSegmenter, segmenter.SegmenterConfig(
      in_channels=sum(feats[n].shape[1] for n in layers), n_labels=10, feature_layers=layers,
      resolution=min(128, gen.config.img_resolution)), 2)
  r_dim = c_cfg.num_features
  link = {"kernel": (rng.normal(size=(r_dim, gen.config.w_dim)) / np.sqrt(r_dim)).astype(
      np.float32), "bias": np.zeros(gen.config.w_dim, np.float32)}
  models, params = bundle.ModelBundle.from_models(generator=gen, classifier=clf, segmenter=seg,
                                                  link=link)
  r = jnp.asarray(rng.gamma(1.0, 1.0, (b, r_dim)), jnp.float32)
  values = jnp.asarray(sweep.sweep_values(np.zeros(r_dim), np.ones(r_dim), 3))
  idx = [jnp.asarray(rng.integers(0, hi, b), jnp.int32) for hi in (b, r_dim, 3)]
  chunk = functools.partial(sweep.sweep_chunk, models, classes=(0,))
  records.append(_measure("sweep chunk", chunk, (params, r, values, *idx), b))

  config = cf.SearchConfig(max_steps=20, check_every=5)
  target = jnp.full((b,), 1, jnp.int32)
  orig = jnp.zeros((b,), jnp.int32)
  shift0 = jnp.float32(0.1) * cf.initial_shift(jax.random.key(0), b, r_dim)
  search = lambda p, rr: cf.search(models, p, rr, orig, target, shift0, config=config).steps
  records.append(_measure("counterfactual batch (20 steps)", search, (params, r), b))
  files.write_json(_OUT.value, files.json_safe(records))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
