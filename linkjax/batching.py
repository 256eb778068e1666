"""Micro-batching: a per-sample function over a batch in sequential, cache-sized steps.

On XLA:CPU a generator / segmenter forward pass over 64 images materialises temporaries of
hundreds of MB (a 146 x 146 x 32 filtered-ReLU map is 2.7 MB per image), so every elementwise
pass streams from memory; over 2 images at a time they stay in cache (the miniworld sweep
pipeline: ~1.3x less time, the generator alone ~1.7x). The steps are a `lax.map`, so the batch
must stay shardable: step j takes rows j, j + S, j + 2S, ... (S steps), so that with the batch
split over D devices in contiguous blocks (a 'data' mesh axis) every device keeps computing on
its own rows, micro_batch / D per step, without communication, provided D divides micro_batch.
A loop over contiguous slices of a sharded batch would instead gather the whole batch on every
device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def default_micro_batch(n_devices: int | None = None) -> int | None:
  """2 images per device per step on CPU backends (n_devices: the data mesh's size, default all
  devices); None (no micro-batching) elsewhere."""
  if jax.default_backend() != "cpu":
    return None  # accelerators want the whole batch at once
  return 2 * (n_devices or jax.device_count())


def micro_batched(fn: Callable[[Any, Any], Any], micro_batch: int | None) -> Callable[[Any, Any],
                                                                                        Any]:
  """`fn(params, x)` computed in steps of `micro_batch` rows of x.

  Args:
    fn: `(params, x) -> outputs`, x and every output a pytree of arrays with a leading batch
      axis, row i of the outputs depending on row i of x only.
    micro_batch: rows per step (a multiple of the device count when the batch is sharded).
      None, or a batch that it does not divide into several steps, calls fn once.
  Returns:
    `(params, x) -> outputs`, equal to `fn(params, x)` up to float rounding.
  """

  def apply(params: Any, x: Any) -> Any:
    b = jax.tree.leaves(x)[0].shape[0]
    if micro_batch is None or micro_batch >= b or b % micro_batch:
      return fn(params, x)
    steps = b // micro_batch
    # Row i * steps + j -> step j, position i (a strided split, see the module docstring).
    split = lambda a: jnp.swapaxes(a.reshape(micro_batch, steps, *a.shape[1:]), 0, 1)
    merge = lambda a: jnp.swapaxes(a, 0, 1).reshape(b, *a.shape[2:])
    out = lax.map(lambda xs: fn(params, xs), jax.tree.map(split, x))
    return jax.tree.map(merge, out)

  return apply
