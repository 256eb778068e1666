"""Trains the miniworld's few-shot part segmenter on 5 labelled generated images per class.

  python -m experiments.train_miniworld_segmenter \
      --generator=linkjax/miniworld/weights/generator --out=linkjax/miniworld/weights/segmenter

Labels are the renderer's masks of the same (z, class) at psi 1 (see
linkjax.miniworld.train_segmenter). Writes a `linkjax.checkpoint` directory (load with
`linkjax.checkpoint.load(out, 'segmenter')`) with `metrics.json` (held-out mean IoU against the
true masks, per-label IoU, loss per epoch, config, seed) beside it.
"""

from absl import flags, logging

from linkjax import cli
from linkjax.miniworld import train_segmenter
from linkjax.models import segmenter


_DEFAULTS = train_segmenter.SegmenterTrainConfig()
_GENERATOR = flags.DEFINE_string("generator", "linkjax/miniworld/weights/generator",
                                 "Miniworld generator checkpoint directory.")
_OUT = flags.DEFINE_string("out", "linkjax/miniworld/weights/segmenter",
                           "Checkpoint directory to write (replaced if it exists).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed: jax.random.key(seed) drives the labelled "
                             "latents, head init / shuffling and the held-out set (disjoint "
                             "fold_in streams).")
_N_PER_CLASS = flags.DEFINE_integer("n_per_class", _DEFAULTS.n_per_class,
                                    "Labelled generated images per class.")
_SIZE = flags.DEFINE_enum("size", _DEFAULTS.size, sorted(segmenter.SIZES),
                          "Head size: S (5 convs), M (7), L (9).")
_RESOLUTION = flags.DEFINE_integer("resolution", _DEFAULTS.resolution,
                                   "Side of the feature maps and predicted masks, pixels (the "
                                   "world is 64x64).")
_EPOCHS = flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Passes over the labelled images "
                               "(one Adam step per image).")
_STEP_EPOCHS = flags.DEFINE_integer("step_epochs", _DEFAULTS.step_epochs,
                                    "Epochs between learning-rate decays (x0.1).")
_LR = flags.DEFINE_float("lr", _DEFAULTS.lr, "Initial Adam learning rate.")
_WD = flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay,
                         "L2 coefficient added to the gradients (torch Adam weight_decay).")
_CROP = flags.DEFINE_bool("crop_margins", _DEFAULTS.crop_margins, "Crop the feature layers' "
                          "StyleGAN3 margins before the resize (aligned with the image); "
                          "False: the reference's whole-map resize.")
_LAYERS = flags.DEFINE_enum("feature_layers", _DEFAULTS.feature_layers,
                            sorted(train_segmenter.FEATURE_LAYER_RULES),
                            "Generator layers the features come from: all synthesis layers but "
                            "ToRGB, or the reference's every second layer.")
_HEAD = flags.DEFINE_enum("head", _DEFAULTS.head, segmenter.HEADS,
                          "dense: the reference's head of --size (the first 3x3 convolution "
                          "reads every feature channel); projected: each feature layer first "
                          "goes through its own 1x1 projection to --proj_channels channels at "
                          "its own resolution, then the 3x3 stack of --dilations / --widths.")
_PROJ = flags.DEFINE_integer("proj_channels", _DEFAULTS.proj_channels,
                             "Projected head: output channels of each feature layer's 1x1 "
                             "projection.")
_DILATIONS = flags.DEFINE_list("dilations", [str(d) for d in _DEFAULTS.dilations],
                               "Projected head: dilation of each 3x3 convolution, "
                               "comma-separated.")
_WIDTHS = flags.DEFINE_list("widths", [str(w) for w in _DEFAULTS.widths],
                            "Projected head: output channels of every 3x3 convolution but the "
                            "last (one fewer than --dilations), comma-separated.")
_EVAL = flags.DEFINE_integer("eval_images", _DEFAULTS.eval_images,
                             "Held-out generated images (psi 1) for the mean IoU.")


def main(argv):
  del argv
  config = train_segmenter.SegmenterTrainConfig(
      n_per_class=_N_PER_CLASS.value, size=_SIZE.value, resolution=_RESOLUTION.value,
      epochs=_EPOCHS.value, step_epochs=_STEP_EPOCHS.value, lr=_LR.value,
      weight_decay=_WD.value, eval_images=_EVAL.value, crop_margins=_CROP.value,
      feature_layers=_LAYERS.value, head=_HEAD.value, proj_channels=_PROJ.value,
      dilations=tuple(int(d) for d in _DILATIONS.value),
      widths=tuple(int(w) for w in _WIDTHS.value))
  logging.info("generator=%s out=%s seed=%d config=%s", _GENERATOR.value, _OUT.value,
               _SEED.value, config)
  train_segmenter.train_and_save(_GENERATOR.value, _OUT.value, config, seed=_SEED.value,
                                 log_fn=logging.info)


if __name__ == "__main__":
  cli.run(main)
