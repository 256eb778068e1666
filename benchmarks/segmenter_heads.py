r"""Segmenter heads on the built-in miniworld: XLA FLOPs, ms/image and held-out mIoU, side by side.

  python -m benchmarks.segmenter_heads \
      --segmenters=shipped=linkjax/miniworld/weights/segmenter,other=/path/to/segmenter

For every segmenter checkpoint (each trained on the shipped generator's features):
  GFLOP/img  XLA's cost analysis of `predict_masks` on the generator's feature maps at --batch
             images, divided by --batch;
  ms/img     median wall time per image of the same jitted call at --batch images, all heads
             timed interleaved in this process after a compiling call (the cores may be shared:
             compare rows of one run, not across runs), process CPU time alongside;
  mIoU       (--eval) against the renderer's masks of held-out generated images at psi 1
             (`train_segmenter.evaluate`, i.e. `ModelBundle.segment`): the trainer's 200 images
             (key fold_in(key(seed), 2)) and 1000 others (fold_in(key(seed), 3)), per part.
"""

from __future__ import annotations

import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from linkjax import checkpoint
from linkjax.miniworld import train_segmenter
from linkjax.models import segmenter as seg_lib

WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "linkjax" / "miniworld" / "weights"

_SEGMENTERS = flags.DEFINE_list("segmenters", [f"shipped={WEIGHTS / 'segmenter'}"],
                                "name=checkpoint directory, comma-separated.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per head (median reported).")
_EVAL = flags.DEFINE_bool("eval", True, "Also measure mIoU on the two held-out sets.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the timing latents and of the held-out keys.")


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan")))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  gen = checkpoint.load(WEIGHTS / "generator", role="generator")
  heads = {}
  for item in _SEGMENTERS.value:
    name, _, path = item.partition("=")
    heads[name] = checkpoint.load(path, role="segmenter")
  b = _BATCH.value
  rng = np.random.default_rng(_SEED.value)
  z = jnp.asarray(rng.normal(size=(b, gen.config.z_dim)), jnp.float32)
  cls = jnp.asarray(rng.integers(0, gen.config.c_dim, b), jnp.int32)
  _, feats = jax.jit(lambda z, c: gen.synthesis(gen.mapping(z, c, psi=0.7),
                                                return_features=True))(z, cls)
  fns, flops = {}, {}
  for name, model in heads.items():
    gd, state = nnx.split(model)
    maps = seg_lib.select_features(feats, model.config.feature_layers)
    f = lambda s, m, gd=gd: seg_lib.predict_masks(nnx.merge(gd, s), m)
    flops[name] = _flops(f, state, maps) / b
    jf = jax.jit(f)
    jax.block_until_ready(jf(state, maps))
    fns[name] = lambda jf=jf, s=state, m=maps: jf(s, m)
  samples = {k: [] for k in fns}
  for _ in range(_REPEATS.value):
    for k, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      samples[k].append((time.perf_counter() - t0, time.process_time() - c0))
  print(f"batch {b}, {_REPEATS.value} repeats (median), {jax.device_count()} x "
        f"{jax.devices()[0].platform}; ratios against {next(iter(heads))!r}")
  key = jax.random.key(_SEED.value)
  base = next(iter(heads))
  wall = {k: statistics.median(s[0] for s in v) / b * 1e3 for k, v in samples.items()}
  cpu = {k: statistics.median(s[1] for s in v) / b * 1e3 for k, v in samples.items()}
  for name, model in heads.items():
    c = model.config
    desc = (f"{c.head} proj {c.proj_channels[0] if len(set(c.proj_channels)) == 1 else c.proj_channels} "
            if c.head == "projected" else f"{c.head} ") + f"dil {c.stack[0]} widths {c.stack[1]}"
    line = (f"{name:16s} {flops[name] / 1e9:6.3f} GFLOP/img ({flops[base] / flops[name]:5.2f}x "
            f"fewer)  {wall[name]:7.2f} ms/img ({wall[base] / wall[name]:5.2f}x faster)  "
            f"{cpu[name]:7.2f} cpu-ms/img  {desc}")
    if _EVAL.value:
      for n, k in ((200, 2), (1000, 3)):
        m = train_segmenter.evaluate(gen, model, jax.random.fold_in(key, k), n)
        parts = " ".join(f"{p}={v:.3f}" for p, v in m["iou"].items() if p != "background")
        line += (f"\n{'':16s} {n:4d}: mIoU {m['miou']:.4f} (parts {m['miou_parts']:.4f}) "
                 f"bg={m['iou']['background']:.3f} {parts}")
    print(line, flush=True)


if __name__ == "__main__":
  app.run(main)
