"""Writes a PNG grid of miniworld samples: per breed one row of images and one row of masks.

  python -m experiments.miniworld_preview --out=/tmp/miniworld.png --per_class=8 --seed=0
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from linkjax import cli, figures, miniworld

_OUT = flags.DEFINE_string("out", "miniworld_preview.png", "Output PNG path.")
_PER_CLASS = flags.DEFINE_integer("per_class", 8, "Samples per breed (columns).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for theta (jax.random.key(seed)).")
_SCALE = flags.DEFINE_integer("scale", 3, "Nearest-neighbour upscaling factor of each 64x64 tile.")

# Colour of each mask label (background, leg, body, tail, tongue, eye, nose, snout, ear, head).
MASK_COLOURS = np.array([[0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44],
                         [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194],
                         [188, 189, 34], [23, 190, 207]], np.uint8)


def preview_grid(key: jax.Array, per_class: int, scale: int) -> np.ndarray:
  """Returns a uint8 [2 * 5 * 64 * scale, per_class * 64 * scale, 3] grid (image row, mask row)."""
  classes = jnp.repeat(jnp.arange(miniworld.NUM_CLASSES, dtype=jnp.int32), per_class)
  images, masks = miniworld.render(miniworld.sample_theta(key, classes))
  images = np.asarray(np.round(np.asarray(images) * 255.0), np.uint8)
  masks = MASK_COLOURS[np.asarray(masks)]
  rows = []
  for c in range(miniworld.NUM_CLASSES):
    sl = slice(c * per_class, (c + 1) * per_class)
    rows.append(np.concatenate(list(images[sl]), axis=1))
    rows.append(np.concatenate(list(masks[sl]), axis=1))
  grid = np.concatenate(rows, axis=0)
  return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def main(argv):
  del argv
  logging.info("flags: out=%s per_class=%d seed=%d scale=%d", _OUT.value, _PER_CLASS.value,
               _SEED.value, _SCALE.value)
  grid = preview_grid(jax.random.key(_SEED.value), _PER_CLASS.value, _SCALE.value)
  h, w = grid.shape[:2]
  fig = figures.figure(figsize=(w / 100 + 1.6, h / 100))
  ax = fig.add_axes((1.6 / (w / 100 + 1.6), 0, w / 100 / (w / 100 + 1.6), 1))
  ax.imshow(grid, interpolation="nearest")
  ax.set_xticks([])
  tile = 64 * _SCALE.value
  ax.set_yticks([(2 * c + 0.5) * tile for c in range(miniworld.NUM_CLASSES)])
  ax.set_yticklabels(miniworld.CLASS_NAMES)
  figures.save(fig, _OUT.value)
  logging.info("wrote %s", _OUT.value)


if __name__ == "__main__":
  cli.run(main)
