"""Classifiers under the registry's contract: the exact input path, evaluation in batches.

Any 'classifier' model (see `linkjax.models`) takes the torchvision eval transform from its own
config (`config.resize`, `config.crop`) and returns `(logits, acts)` with `acts['r']`; nothing
here names an architecture.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linkjax import preprocess


def geometry(config: Any) -> tuple[int | None, int | None]:
  """(resize, crop) of a classifier config; raises if the config does not carry them."""
  missing = [k for k in ("resize", "crop") if not hasattr(config, k)]
  if missing:
    raise TypeError(f"{type(config).__name__} lacks {missing}: not a classifier config")
  return config.resize, config.crop


def model_input(config: Any, images_uint8: jax.Array) -> jax.Array:
  """The exact input path (`preprocess.classifier_input`) with the config's geometry.

  Args:
    config: a classifier config.
    images_uint8: [B, H, W, 3] uint8.
  Returns:
    [B, crop, crop, 3] float32, normalised.
  """
  resize, crop = geometry(config)
  return preprocess.classifier_input(images_uint8, resize=resize, crop=crop)


def model_input_float(config: Any, images: jax.Array) -> jax.Array:
  """The differentiable input path (`preprocess.classifier_input_float`); images NCHW [-1, 1]."""
  resize, crop = geometry(config)
  return preprocess.classifier_input_float(images, resize=resize, crop=crop)


@functools.partial(jax.jit, static_argnums=0)
def classify(graphdef: nnx.GraphDef, state: nnx.State,
             images_uint8: jax.Array) -> dict[str, jax.Array]:
  """The exact input path plus forward pass, jit-compiled.

  Args:
    graphdef, state: `nnx.split(classifier)`.
    images_uint8: [B, H, W, 3] uint8 images.
  Returns:
    {'r': [B, R], 'logits': [B, K], 'probs': [B, K] (softmax), 'pred': [B] int32}.
  """
  model = nnx.merge(graphdef, state)
  logits, acts = model(model_input(model.config, images_uint8))
  return {"r": acts["r"], "logits": logits, "probs": jax.nn.softmax(logits, axis=-1),
          "pred": jnp.argmax(logits, axis=-1).astype(jnp.int32)}


def classify_batches(model: nnx.Module, images_uint8: Any, batch: int = 32,
                     log_fn: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
  """Runs `classify` over a large uint8 array in fixed-size batches (one compilation).

  The last batch is zero-padded to `batch` rows (or N, if smaller).

  Args:
    model: a classifier.
    images_uint8: [N, H, W, 3] uint8 (numpy).
    batch: rows per call.
    log_fn: optional callable(done, total) for progress reporting.
  Returns:
    numpy 'r' [N, R], 'logits' [N, K], 'probs' [N, K], 'pred' [N] int32.
  """
  images_uint8 = np.asarray(images_uint8)
  preprocess.check_uint8_images(images_uint8)
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  n = images_uint8.shape[0]
  if n == 0:
    raise ValueError("no images to classify")
  batch = min(batch, n)
  graphdef, state = nnx.split(model)
  outs: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch):
    chunk = images_uint8[start:start + batch]
    m = chunk.shape[0]
    if m < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - m,) + chunk.shape[1:], np.uint8)])
    for k, v in classify(graphdef, state, jnp.asarray(chunk)).items():
      outs.setdefault(k, []).append(np.asarray(v)[:m])
    if log_fn is not None:
      log_fn(start + m, n)
  return {k: np.concatenate(v) for k, v in outs.items()}
