"""Predicts part masks for generated samples with a trained segmenter.

  python -m experiments.segment --generator=DIR --segmenter=DIR --samples=FILE.npz --out=DIR

Writes DIR/masks.npz (`masks` [N, R, R] uint8, `label_names`) and DIR/overlay.png (image | mask
overlay pairs).
"""

import pathlib

import numpy as np
from absl import app, flags, logging
from PIL import Image

from linkjax import checkpoint
from linkjax.models import segmenter

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
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(
      __name__)})
  generator = checkpoint.load(_GENERATOR.value, role="generator")
  seg = checkpoint.load(_SEGMENTER.value, role="segmenter")
  with np.load(_SAMPLES.value) as f:
    ws = np.asarray(f["ws"], np.float32)
  masks, images = segmenter.segment_ws(generator, seg, ws, batch_size=_BATCH.value)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  np.savez(out / "masks.npz", masks=masks.astype(np.uint8),
           label_names=np.asarray(seg.config.label_names, dtype=str))
  k = min(_GRID_MAX.value, masks.shape[0])
  grid = segmenter.overlay_grid(images[:k], masks[:k],
                                seg.config.n_labels, cols=_GRID_COLS.value)
  Image.fromarray(grid).save(out / "overlay.png")
  counts = np.bincount(masks.ravel(), minlength=seg.config.n_labels)
  logging.info("pixels per label: %s", dict(zip(seg.config.label_names or range(len(counts)),
                                                 counts.tolist())))
  logging.info("wrote %s", out)


if __name__ == "__main__":
  app.run(main)
