"""Trains the miniworld generator (tiny Flax StyleGAN-XL) by regression onto the renderer.

  python -m experiments.train_miniworld_generator --out=linkjax/miniworld/weights/generator \
      --work_dir=/tmp/miniworld_generator_train --resume

Writes a `linkjax.checkpoint` directory (load with `linkjax.checkpoint.load(out, 'stylegan_xl')`)
with `metrics.json` (held-out fidelity at psi 1.0 and 0.7 on 500 samples) inside it.
"""

from absl import flags, logging
import jax

from linkjax import cli
from linkjax.miniworld import train_generator


_OUT = flags.DEFINE_string("out", "linkjax/miniworld/weights/generator",
                           "Checkpoint directory to write (replaced if it exists).")
_WORK = flags.DEFINE_string("work_dir", None,
                            "Directory for resumable training state and the best model so far "
                            "(keep it outside the package); unset: no intermediate checkpoints.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue from --work_dir's training state.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed: jax.random.key(seed) drives init, batches, "
                             "w_avg and the held-out set (disjoint fold_in streams).")
_STEPS = flags.DEFINE_integer("steps", 1400, "Optimiser steps (length of the lr schedule).")
_BATCH = flags.DEFINE_integer("batch", 16, "Rendered images per step.")
_LR = flags.DEFINE_float("lr", 2e-3, "Peak Adam learning rate (warm-up, cosine decay to 2%).")
_WARMUP = flags.DEFINE_integer("warmup", 100, "Warm-up steps.")
_EDGE = flags.DEFINE_float("edge_weight", 0.0, "Weight of the image-gradient MSE term.")
_TIME = flags.DEFINE_float("time_limit_s", None, "Stop (after checkpointing) after this many "
                           "seconds of training wall time; unset: run all steps.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 200, "Steps between held-out checks (best/).")
_CKPT_EVERY = flags.DEFINE_integer("ckpt_every", 200, "Steps between training-state saves.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 20, "Steps between log lines.")
_W_DIM = flags.DEFINE_integer("w_dim", 64, "Width of W.")
_CHANNEL_BASE = flags.DEFINE_integer("channel_base", 1024, "Channels = channel_base/2/cutoff...")
_CHANNEL_MAX = flags.DEFINE_integer("channel_max", 32, "...capped at channel_max.")
_STEM = flags.DEFINE_integer("stem_layers", 4, "Layers of the 16x16 stem.")
_HEAD = flags.DEFINE_integer("head_layers", 4, "Layers per x2 super-resolution head (>= 4).")
_MARGIN = flags.DEFINE_integer("margin_size", 2, "Feature-map margin in pixels.")


def main(argv):
  del argv
  config = train_generator.generator_config(
      w_dim=_W_DIM.value, channel_base=_CHANNEL_BASE.value, channel_max=_CHANNEL_MAX.value,
      stem_layers=_STEM.value, head_layers=_HEAD.value, margin_size=_MARGIN.value)
  logging.info("flags: out=%s work_dir=%s resume=%s seed=%d steps=%d batch=%d lr=%g warmup=%d "
               "edge_weight=%g time_limit_s=%s", _OUT.value, _WORK.value, _RESUME.value,
               _SEED.value, _STEPS.value, _BATCH.value, _LR.value, _WARMUP.value, _EDGE.value,
               _TIME.value)
  train_generator.train_and_save(
      jax.random.key(_SEED.value), _OUT.value, steps=_STEPS.value, batch=_BATCH.value,
      lr=_LR.value, config=config, warmup=_WARMUP.value, edge_weight=_EDGE.value,
      work_dir=_WORK.value, resume=_RESUME.value, ckpt_every=_CKPT_EVERY.value,
      eval_every=_EVAL_EVERY.value, log_every=_LOG_EVERY.value, time_limit_s=_TIME.value,
      log=logging.info)


if __name__ == "__main__":
  cli.run(main)
