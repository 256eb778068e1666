"""Predicts part masks for generated samples with a trained segmenter.

  python -m experiments.segment --generator=DIR --segmenter=DIR --samples=FILE.npz --out=DIR

Writes DIR/masks.npz (`masks` [N, R, R] uint8, `label_names`) and DIR/overlay.png (image | mask
overlay pairs).
"""

import pathlib

import numpy as np
from absl import flags, logging
from PIL import Image

from linkjax import bundle, cli, files, masks, sampling

_GENERATOR = flags.DEFINE_string("generator", None, "Converted StyleGAN-XL checkpoint directory.",
                                 required=True)
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Segmenter checkpoint from "
                                 "experiments.train_segmenter.", required=True)
_SAMPLES = flags.DEFINE_string("samples", None, "samples.npz with `ws` [N, num_ws, w_dim].",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (created if missing).", required=True)
_BATCH = flags.DEFINE_integer("batch", 4, "Images per generator + segmenter call.")
_GRID_COLS = flags.DEFINE_integer("grid_cols", 4, "Image/overlay pairs per row of overlay.png.")
_GRID_MAX = flags.DEFINE_integer("grid_max", 32, "At most this many samples in overlay.png.")


def main(argv):
  del argv
  cli.log_flags(__name__)
  models, params = bundle.ModelBundle.load(generator=_GENERATOR.value, segmenter=_SEGMENTER.value)
  g = models.generator_config
  ws = sampling.read_ws(_SAMPLES.value, g.num_ws, g.w_dim)
  mask_arr, images = masks.segment_ws(models, params, ws, batch_size=_BATCH.value)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  files.write_npz(out / "masks.npz", {"masks": mask_arr.astype(np.uint8),
                                      "label_names": np.asarray(models.label_names, dtype=str)})
  k = min(_GRID_MAX.value, mask_arr.shape[0])
  grid = masks.overlay_grid(images[:k], mask_arr[:k], models.n_labels, cols=_GRID_COLS.value)
  files.write_atomic(out / "overlay.png", lambda f: Image.fromarray(grid).save(f, format="PNG"))
  counts = np.bincount(mask_arr.ravel(), minlength=models.n_labels)
  logging.info("pixels per label: %s", dict(zip(models.label_names, counts.tolist())))
  logging.info("wrote %s", out)


if __name__ == "__main__":
  cli.run(main)
