"""PyTorch-exact layers shared by the torchvision classifier ports (VGG, AlexNet, DenseNet).

NHWC throughout. Pooling follows torch's rules, not XLA's conveniences: explicit symmetric
padding, floor output sizes (`ceil_mode=False`), max-pool padding that never wins (-inf), and
`adaptive_avg_pool2d` with PyTorch's bins (start = floor(i·in/out), end = ceil((i+1)·in/out)),
which overlap or repeat when the input is smaller than the output.

The stateless modules (`ReLU`, `MaxPool2d`, `Dropout`) exist so that an `nnx.List` can mirror a
torch `nn.Sequential` index by index: `features.3.weight` in a torchvision state dict is
`features[3].kernel` here, and the converter's key table stays the identity.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BN_EPS = 1e-5


def conv(cin: int, cout: int, k: int, *, stride: int = 1, padding: int = 0, bias: bool = True,
         rngs: nnx.Rngs) -> nnx.Conv:
  """torch `nn.Conv2d(cin, cout, k, stride, padding, bias=bias)`, NHWC, symmetric padding."""
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)), use_bias=bias, rngs=rngs)


def batch_norm(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """torch `nn.BatchNorm2d(c)` in eval mode: running statistics, eps 1e-5."""
  return nnx.BatchNorm(c, use_running_average=True, epsilon=BN_EPS, momentum=0.9, rngs=rngs)


def max_pool2d(x: jax.Array, k: int, stride: int, padding: int = 0) -> jax.Array:
  """torch `F.max_pool2d(x, k, stride, padding)` (ceil_mode False). x: [B, H, W, C].

  Output size floor((H + 2p - k) / s) + 1; the padding is -inf so it never wins.
  """
  # Python-scalar init: JAX's differentiable max-pool primitive (see resnet.max_pool_3x3_s2).
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, stride, stride, 1),
                               ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def avg_pool2d(x: jax.Array, k: int, stride: int) -> jax.Array:
  """torch `F.avg_pool2d(x, k, stride)` without padding (floor sizes). x: [B, H, W, C]."""
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, k, 1), (1, stride, stride, 1), "VALID")
  return s / jnp.asarray(k * k, x.dtype)


@functools.cache
def adaptive_bins(n_in: int, n_out: int) -> tuple[tuple[int, int], ...]:
  """PyTorch's adaptive pooling bins [(start, end), ...] for one axis."""
  if n_in < 1 or n_out < 1:
    raise ValueError(f"adaptive pooling needs positive sizes, got in={n_in}, out={n_out}")
  return tuple(((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)) for i in range(n_out))


def _bin_mask(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  mask = np.zeros((n_out, n_in), np.float32)
  for i, (s, e) in enumerate(adaptive_bins(n_in, n_out)):
    mask[i, s:e] = 1.0
  return mask, mask.sum(1)


def adaptive_avg_pool2d(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """torch `F.adaptive_avg_pool2d(x, out_hw)` for any input size. x: [B, H, W, C] -> [B, oh, ow, C].

  Bins are summed with 0/1 masks and divided by their element counts (sum, then divide, as
  torch does); a bin holding one element is copied exactly. Equal sizes return `x` itself.
  """
  _, h, w, _ = x.shape
  oh, ow = out_hw
  if (h, w) == (oh, ow):
    return x
  mh, ch = _bin_mask(h, oh)
  mw, cw = _bin_mask(w, ow)
  # HIGHEST: accelerators would otherwise sum in reduced precision (TF32/bf16 passes).
  s = jnp.einsum("bhwc,oh,pw->bopc", x, jnp.asarray(mh, x.dtype), jnp.asarray(mw, x.dtype),
                 precision=jax.lax.Precision.HIGHEST)
  return s / jnp.asarray(np.outer(ch, cw)[None, :, :, None], x.dtype)


def flatten_nchw(x: jax.Array) -> jax.Array:
  """torch.flatten(x, 1) of the NCHW tensor: [B, H, W, C] -> [B, C·H·W] in (C, H, W) order."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class ReLU(nnx.Module):
  """torch `nn.ReLU` (stateless; holds a Sequential index)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


class Dropout(nnx.Module):
  """torch `nn.Dropout` in eval mode: the identity (these ports are inference-only)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x


class MaxPool2d(nnx.Module):
  """torch `nn.MaxPool2d(kernel, stride, padding)`, ceil_mode False."""

  def __init__(self, kernel: int, stride: int, padding: int = 0):
    self.kernel, self.stride, self.padding = kernel, stride, padding

  def __call__(self, x: jax.Array) -> jax.Array:
    return max_pool2d(x, self.kernel, self.stride, self.padding)


def _run(layers, x: jax.Array, start: int, stop: int,
         acts: dict[str, jax.Array] | None = None) -> jax.Array:
  # ReLU outputs in a classifier MLP are its hidden layers: 'fc6', 'fc7' (VGG/AlexNet names).
  for i in range(start, stop):
    x = layers[i](x)
    if acts is not None and isinstance(layers[i], ReLU):
      acts[f"fc{6 + sum(k.startswith('fc') for k in acts)}"] = x
  return x


class ConvPoolMLP(nnx.Module):
  """torchvision's VGG/AlexNet scheme: `features` (Sequential), adaptive average pooling to
  `pool_size`², NCHW flatten, `classifier` (Sequential of Linear/ReLU/Dropout).

  Subclasses set `self.config` (with `pool_size`, `r_layer`), `self.features` and
  `self.classifier` as `nnx.List`s mirroring torch's Sequentials index by index.

  R ('original'): the flattened pooled map, [B, C·p·p] in torch's (C, H, W) order; `to_r` is
  the flatten and `head` the whole classifier. R ('penultimate'): the last linear layer's input
  (after the last hidden ReLU); `to_r` is the flatten plus every classifier layer but the last,
  `head` the last linear layer. In both cases `r_2d` is the pooled map [B, p, p, C].
  """

  def to_r(self, r_2d: jax.Array) -> jax.Array:
    """R from the pooled map. r_2d: [B, p, p, C] -> r [B, C·p·p] or [B, hidden]."""
    flat = flatten_nchw(r_2d)
    if self.config.r_layer == "original":
      return flat
    return _run(self.classifier, flat, 0, len(self.classifier) - 1)

  def head(self, r: jax.Array) -> jax.Array:
    """Logits from R. r: [B, R] -> [B, num_classes]."""
    n = len(self.classifier)
    return _run(self.classifier, r, 0 if self.config.r_layer == "original" else n - 1, n)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Forward pass.

    Args:
      x: [B, H, W, 3] float32, normalised.

    Returns:
      logits [B, num_classes] and acts: 'pool1', 'pool2', ... (output of each max-pool of
      `features`, NHWC), 'features' (NHWC), 'avgpool' = 'r_2d' [B, p, p, C], 'fc6', 'fc7'
      (hidden layers after ReLU), 'r'.
    """
    acts = {}
    for layer in self.features:
      x = layer(x)
      if isinstance(layer, MaxPool2d):
        acts[f"pool{1 + sum(k.startswith('pool') for k in acts)}"] = x
    acts["features"] = x
    p = self.config.pool_size
    r_2d = adaptive_avg_pool2d(x, (p, p))
    acts["avgpool"] = acts["r_2d"] = r_2d
    n = len(self.classifier)
    # The same layer calls as head(to_r(r_2d)), split where R is, recording the hidden layers.
    hidden = _run(self.classifier, flatten_nchw(r_2d), 0, n - 1, acts)
    acts["r"] = flatten_nchw(r_2d) if self.config.r_layer == "original" else hidden
    return self.classifier[n - 1](hidden), acts
