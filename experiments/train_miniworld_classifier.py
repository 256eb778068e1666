"""Trains the miniworld classifier (reduced-width Flax ResNet) on on-the-fly renders.

  python -m experiments.train_miniworld_classifier --out=linkjax/miniworld/weights/classifier

The classifier with planted units (the planted-truth validation's, `experiments.validate`):

  python -m experiments.train_miniworld_classifier \
      --out=linkjax/miniworld/weights/classifier_planted --steps=2000 --planted_weight=8 \
      --planted_scale=class --planted=40:ear_len,120:tail_len,200:leg_len,280:head_r,360:body_luminance,440:eye_r

Writes a `linkjax.checkpoint` directory (load with `linkjax.checkpoint.load(out, 'resnet')`)
with `metrics.json` (held-out accuracy, training time, config, seed) beside it.
"""

from absl import flags, logging

from linkjax import cli
from linkjax.demo import config as demo_config
from linkjax.miniworld import planted as planted_lib
from linkjax.miniworld import train_classifier


_DEFAULTS = train_classifier.TrainConfig()
_OUT = flags.DEFINE_string("out", "linkjax/miniworld/weights/classifier",
                           "Checkpoint directory to write (an existing classifier checkpoint is "
                           "replaced; any other folder is refused).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed: jax.random.key(seed) drives init, training "
                             "batches and the held-out set (disjoint fold_in streams).")
_FAMILY = flags.DEFINE_enum("family", _DEFAULTS.family, list(train_classifier.FAMILIES),
                            "Classifier family: 'resnet' (the shipped one) or 'vgg' (VGG-16 with "
                            "BatchNorm at widths scaled by --width / 64).")
_R_LAYER = flags.DEFINE_enum("r_layer", _DEFAULTS.r_layer, ["original", "penultimate"],
                             "The representation layer R stored in the config.")
_WIDTH = flags.DEFINE_integer("width", _DEFAULTS.width,
                              "ResNet stem width (channels; stage i has width*2^i, x4 expansion); "
                              "VGG: the first conv's width.")
_STAGES = flags.DEFINE_list("stage_sizes", [str(s) for s in _DEFAULTS.stage_sizes],
                            "Bottleneck blocks per stage (4 comma-separated ints).")
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "Optimiser steps.")
_BATCH = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Rendered images per step.")
_LR = flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate,
                         "Peak AdamW learning rate (linear warm-up, then cosine decay to 0).")
_WARMUP = flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Warm-up steps.")
_WD = flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "AdamW weight decay.")
_EVAL = flags.DEFINE_integer("eval_images", _DEFAULTS.eval_images,
                             "Held-out renders for the final accuracy.")
_LOG_EVERY = flags.DEFINE_integer("log_every", _DEFAULTS.log_every, "Steps between log lines.")
_BLUR = flags.DEFINE_float("blur_sigma_max", _DEFAULTS.blur_sigma_max,
                           "Training renders get a Gaussian blur of sigma ~ U(0, this) pixels.")
_NOISE = flags.DEFINE_float("noise_std", _DEFAULTS.noise_std,
                            "Std of Gaussian pixel noise added to training renders.")
_PLANTED = flags.DEFINE_string(
    "planted", "", "Planted units: comma-separated UNIT:PARAM entries (e.g. "
    "'40:ear_len,360:body_luminance'); each unit of R is trained to encode its parameter (an "
    "extra MSE loss on r[:, UNIT] against the parameter's z-score mapped to mean "
    f"{planted_lib.PLANTED_TARGET_MEAN}, std {planted_lib.PLANTED_TARGET_STD}). PARAM "
    "is a renderer parameter (linkjax.miniworld.PARAM_NAMES) or 'body_luminance'. Empty: a "
    "plain classifier.")
_PLANTED_WEIGHT = flags.DEFINE_float("planted_weight", _DEFAULTS.planted_weight,
                                     "Weight of the planted units' mean squared error in the "
                                     "loss (classification loss has weight 1).")
_GENERATED_FRACTION = flags.DEFINE_float(
    "generated_fraction", _DEFAULTS.generated_fraction,
    "Share of each training batch drawn from a pool of generated images G(z, c) at psi 1 with "
    "their true parameters (the rest are renders); > 0 needs --generator.")
_GENERATED_POOL = flags.DEFINE_integer("generated_pool", _DEFAULTS.generated_pool,
                                       "Generated training images in the pool.")
_GENERATOR = flags.DEFINE_string(
    "generator", None, "Miniworld generator checkpoint: the generated training pool and an "
    "accuracy on held-out generated images (with --generated_fraction > 0 and no value, the "
    "built-in world's).")
_PLANTED_SCALE = flags.DEFINE_enum(
    "planted_scale", _DEFAULTS.planted_scale, list(planted_lib.PLANTED_SCALES),
    "z-score of the planted targets: 'world' (moments over all classes) or 'class' (moments "
    "within the image's class, so that a unit cannot meet its target by encoding the breed).")


def main(argv):
  del argv
  config = train_classifier.TrainConfig(
      family=_FAMILY.value, r_layer=_R_LAYER.value, width=_WIDTH.value,
      stage_sizes=tuple(int(s) for s in _STAGES.value), steps=_STEPS.value,
      batch_size=_BATCH.value, learning_rate=_LR.value, warmup_steps=_WARMUP.value,
      weight_decay=_WD.value, eval_images=_EVAL.value, log_every=_LOG_EVERY.value,
      blur_sigma_max=_BLUR.value, noise_std=_NOISE.value,
      planted=planted_lib.parse_planted(_PLANTED.value),
      planted_weight=_PLANTED_WEIGHT.value, planted_scale=_PLANTED_SCALE.value,
      generated_fraction=_GENERATED_FRACTION.value, generated_pool=_GENERATED_POOL.value)
  generator = _GENERATOR.value
  if generator is None and config.generated_fraction > 0:
    generator = str(demo_config.BUILTIN["generator"])
  logging.info("out=%s seed=%d generator=%s config=%s", _OUT.value, _SEED.value, generator, config)
  train_classifier.train_and_save(config, _OUT.value, seed=_SEED.value, generator_dir=generator,
                                  log_fn=logging.info)


if __name__ == "__main__":
  cli.run(main)
