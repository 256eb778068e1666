"""Generated images with their true parameters, for training and checking the miniworld classifier.

At psi 1 the miniworld generator reproduces render(theta(z, c)) (`groundtruth`), so every
generated image G(z, c) comes with the renderer parameters it is meant to show. A classifier
trained on renders alone reads parameters off details the generator draws differently (the
first within-breed planted classifier tracked tail length at r 0.83 on renders but 0.34 on
generated images); training on a mix of renders and a pool of generated images lets its planted
units read what the generator actually draws (`train_classifier.TrainConfig.generated_fraction`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linkjax import bundle as bundle_lib
from linkjax import miniworld as world
from linkjax.miniworld import groundtruth


class Pool(NamedTuple):
  """N generated images and their truth."""
  images: np.ndarray  # [N, 64, 64, 3] uint8, G(mapping(z, c), psi 1) quantised
  labels: np.ndarray  # [N] int32, the class c
  theta: np.ndarray   # [N, THETA_DIM] float32, theta(z, c): the parameters G(z, c) reproduces


def build(generator: nnx.Module, key: jax.Array, n: int, batch: int = 128) -> Pool:
  """Generates a class-balanced pool (class i % NUM_CLASSES, z ~ N(0, I) from `key`).

  Args:
    generator: the miniworld generator (any whose theta_from_noise truth holds).
    key: PRNG key of the latents.
    n: images (> 0).
    batch: images per compiled call.
  Returns:
    the `Pool`.
  """
  if n <= 0:
    raise ValueError(f"a generated pool needs n > 0 images, got {n}")
  z, c = groundtruth.heldout_latents(key, n, generator.config.z_dim)
  models, params = bundle_lib.ModelBundle.from_models(generator=generator)
  data = groundtruth.generate_and_segment(models, params, z, c, psi=1.0, batch=batch,
                                          with_truth=False)
  if data["images"].shape[1:] != (world.SIZE, world.SIZE, 3):
    raise ValueError(f"the generator makes {data['images'].shape[1:]} images; the miniworld "
                     f"classifier takes {world.SIZE}x{world.SIZE}x3")
  return Pool(images=np.asarray(data["images"], np.uint8), labels=np.asarray(c, np.int32),
              theta=np.asarray(groundtruth.true_theta(z, c), np.float32))


def draw(key: jax.Array, images: jax.Array, labels: jax.Array, theta: jax.Array,
         n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """n pool entries drawn uniformly with replacement (jit-compatible).

  Args:
    key: PRNG key.
    images, labels, theta: the pool's arrays (device arrays inside a jitted step).
    n: entries to draw.
  Returns:
    (images [n, 64, 64, 3] float32 in [0, 1] (uint8 level centres, so `floor(255 x)` gives
     the stored uint8 back), labels [n], theta [n, THETA_DIM]).
  """
  idx = jax.random.randint(key, (n,), 0, labels.shape[0])
  x = (images[idx].astype(jnp.float32) + 0.5) / 255.0
  return x, labels[idx], theta[idx]
