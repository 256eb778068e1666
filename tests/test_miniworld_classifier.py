"""Tests of the miniworld classifier training path (tiny config, a few steps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import checkpoint, miniworld, preprocess
from linkjax.miniworld import train_classifier as tc


def test_images_to_uint8_is_floor_255():
  x = jax.random.uniform(jax.random.key(0), (2, 5, 4, 3), jnp.float32)
  got = np.asarray(tc.images_to_uint8(x))
  want = np.floor(np.asarray(x, np.float64) * 255.0).astype(np.uint8)
  # float32 rounding of (2x - 1 + 1) * 127.5 may land one level below an exact integer.
  assert got.dtype == np.uint8 and np.abs(got.astype(int) - want.astype(int)).max() <= 1
  assert np.mean(got == want) > 0.99


def test_render_batch_labels_match_class_conditional_renders():
  images, labels = tc.render_batch(jax.random.key(1), 6)
  assert images.shape == (6, 64, 64, 3) and images.dtype == jnp.uint8
  assert labels.dtype == jnp.int32 and int(labels.min()) >= 0 and int(labels.max()) < 5
  # Same key split as render_batch: the images are exactly the renders of those labels.
  _, k_theta, _ = jax.random.split(jax.random.key(1), 3)
  ref, _ = miniworld.render(miniworld.sample_theta(k_theta, labels))
  np.testing.assert_array_equal(np.asarray(images), np.asarray(tc.images_to_uint8(ref)))


def test_augment_blur_matches_scipy_gaussian_filter():
  import scipy.ndimage  # noqa: PLC0415

  images, _ = miniworld.render(miniworld.sample_theta(jax.random.key(2), jnp.arange(3) % 5))
  key = jax.random.key(3)
  got = np.asarray(tc.augment(key, images, 1.5, 0.0))
  # The per-image sigma is the first draw of the same key split as `augment`.
  sigma = np.asarray(jax.random.uniform(jax.random.split(key)[0], (3,), jnp.float32, 1e-3, 1.5))
  for i in range(3):
    ref = scipy.ndimage.gaussian_filter(np.asarray(images[i], np.float64), (sigma[i], sigma[i], 0),
                                        mode="nearest", truncate=3.0 / sigma[i])
    np.testing.assert_allclose(got[i], ref, rtol=0, atol=1e-5)
  assert np.abs(got - np.asarray(images)).max() > 0.05  # it did blur
  noisy = np.asarray(tc.augment(key, images, 0.0, 0.1)) - np.asarray(images)
  inside = (np.asarray(images) > 0.4) & (np.asarray(images) < 0.6)  # away from the clip
  assert 0.08 < noisy[inside].std() < 0.12


@pytest.mark.slow
def test_train_updates_batch_stats_and_saves(tmp_path):
  config = tc.TrainConfig(width=2, steps=3, batch_size=8, warmup_steps=1, eval_images=16,
                          log_every=1)
  lines = []
  metrics = tc.train_and_save(config, tmp_path / "clf", seed=0, log_fn=lines.append)
  assert len(lines) >= 4 and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 16
  model = checkpoint.load(tmp_path / "clf", role="classifier")
  assert model.config.num_classes == 5 and model.config.resize is None
  # Training-mode BatchNorm moved the running statistics away from their init (0, 1).
  assert float(jnp.abs(model.bn1.mean[...]).max()) > 1e-3
  assert float(jnp.abs(model.bn1.var[...] - 1.0).max()) > 1e-3
  # The reloaded model is an inference-mode model: its output does not depend on the batch.
  images, _ = tc.render_batch(jax.random.key(2), 4)
  x = preprocess.classifier_input(images, resize=None, crop=None)
  full, _ = model(x)
  single, _ = model(x[:1])
  np.testing.assert_allclose(np.asarray(single), np.asarray(full[:1]), atol=1e-5)
  graphdef, state = nnx.split(model)
  assert graphdef is not None and len(jax.tree.leaves(state)) > 10
