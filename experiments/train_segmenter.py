"""Trains the few-shot part segmenter on a handful of labelled generated images.

  python -m experiments.train_segmenter --generator=DIR --samples=FILE.npz --masks=DIR \
      --labels=background,leg,body,tail,tongue,eye,nose,snout,ear,head --out=DIR

--samples is an experiments.generate file (key `ws` [N, num_ws, w_dim]); --masks holds one PNG per
labelled sample, `<index>.png` with one label index per pixel (index into --samples), or a
masks.npz with `masks` [M, H, W] (and optionally `indices` [M]; default 0..M-1). Writes the
segmenter checkpoint (linkjax.checkpoint) to --out and the per-epoch loss to --out/metrics.json.
"""

import pathlib

import jax
from absl import flags, logging

from linkjax import checkpoint, cli, files, masks, sampling, segmenter_train
from linkjax.models import segmenter

_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory.",
                                 required=True)
_SAMPLES = flags.DEFINE_string("samples", None, "samples.npz with `ws` [N, num_ws, w_dim] "
                               "(written by experiments.generate).", required=True)
_MASKS = flags.DEFINE_string("masks", None, "Directory of <index>.png label masks (one label index "
                             "per pixel), or a masks.npz / directory holding one.", required=True)
_LABELS = flags.DEFINE_list("labels", None, "Label names, background first; mask value i is "
                            "label i.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output checkpoint directory (replaced if it exists).",
                           required=True)
_SIZE = flags.DEFINE_enum("size", "S", sorted(segmenter.SIZES), "Head size: S (5 convs), M (7), "
                          "L (9).")
_EPOCHS = flags.DEFINE_integer("epochs", 100, "Passes over the labelled images (one image per "
                               "Adam step).")
_LR = flags.DEFINE_float("lr", 1e-3, "Initial Adam learning rate.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 1e-3, "L2 coefficient added to the gradients "
                                   "(torch Adam weight_decay).")
_STEP_EPOCHS = flags.DEFINE_integer("step_epochs", 50, "Epochs between learning-rate decays "
                                    "(x0.1).")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "Side of the feature maps and masks, pixels.")
_BATCH = flags.DEFINE_integer("batch", 4, "Images per synthesis call while extracting features.")
_SEED = flags.DEFINE_integer("seed", 0, "jax.random.key seed (head init and shuffling).")
_CROP = flags.DEFINE_bool("crop_margins", False, "Crop each feature layer's StyleGAN3 margins "
                          "before the resize, aligning all layers with the image (the "
                          "reference resizes whole maps; keep False to match it).")


def main(argv):
  del argv
  cli.log_flags(__name__)
  generator = checkpoint.load(_GENERATOR.value, role="generator")
  ws = sampling.read_ws(_SAMPLES.value, generator.config.num_ws, generator.config.w_dim)
  indices, mask_arr = masks.load_masks(_MASKS.value, n=ws.shape[0])
  logging.info("%d labelled samples: %s", len(indices), indices.tolist())
  model, losses = segmenter_train.train_on_generator(
      jax.random.key(_SEED.value), generator, ws[indices], mask_arr, _LABELS.value,
      size=_SIZE.value, epochs=_EPOCHS.value, resolution=_RESOLUTION.value,
      batch_size=_BATCH.value, crop_margins=_CROP.value, lr=_LR.value,
      weight_decay=_WEIGHT_DECAY.value, step_epochs=_STEP_EPOCHS.value)
  out = pathlib.Path(_OUT.value)
  checkpoint.save(out, model)
  files.write_json(out / "metrics.json", {
      "loss_per_epoch": [float(x) for x in losses], "indices": indices.tolist(),
      "samples": str(pathlib.Path(_SAMPLES.value).absolute()),
      "generator": str(pathlib.Path(_GENERATOR.value).absolute())})
  logging.info("final loss %.4f; wrote %s", float(losses[-1]), out)


if __name__ == "__main__":
  cli.run(main)
