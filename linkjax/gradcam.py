"""Grad-CAM (Selvaraju et al.): which regions of the classifier's spatial map drive a class logit.

Under the classifier contract (`linkjax.models`) the explained map is `acts['r_2d']` and the
logits are `head(to_r(r_2d))`, so the gradient of a logit with respect to the map is exact for
every classifier family (ResNet: global average pooling then the linear layer; VGG / DenseNet
with R = the flattened map: the rest of the network).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def grad_cam(logits_of_map: Callable[[jax.Array], jax.Array], features: jax.Array,
             class_idx: jax.Array, out_size: tuple[int, int] | None = None,
             normalize: bool = False) -> jax.Array:
  """Grad-CAM on a spatial feature map, with gradients from `jax.grad`.

  Channel weights are the spatial means of the gradients of the class logit with respect to the
  map, and `cam = relu(sum_k w_k A_k)`.

  Args:
    logits_of_map: features [B, h, w, C] -> logits [B, K] (e.g. `lambda a: head(to_r(a))`);
      row i of the logits must depend only on row i of the map.
    features: [B, h, w, C] NHWC map (acts['r_2d']).
    class_idx: [B] int32 class whose logit is explained.
    out_size: (H, W) to upsample to (bilinear), or None for the feature resolution.
    normalize: divide each map by its maximum (maps that are all zero stay zero).
  Returns:
    [B, H, W] float32 class activation maps.
  """
  features = features.astype(jnp.float32)
  class_idx = class_idx.astype(jnp.int32)

  def logit_sum(a):
    logits = logits_of_map(a)
    return jnp.sum(jnp.take_along_axis(logits, class_idx[:, None], axis=1))

  grads = jax.grad(logit_sum)(features)  # per-sample logits are independent, so the sum splits
  weights = jnp.mean(grads, axis=(1, 2))  # [B, C]
  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features, weights))
  if out_size is not None:
    cam = jax.image.resize(cam, (cam.shape[0],) + tuple(out_size), method="bilinear")
  if normalize:
    m = jnp.max(cam, axis=(1, 2), keepdims=True)
    cam = jnp.where(m > 0, cam / jnp.where(m > 0, m, 1.0), 0.0)
  return cam
