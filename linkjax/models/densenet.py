"""torchvision DenseNet (121/161/169/201) in Flax NNX, NHWC, eval mode.

Submodules carry torchvision's names, so the converter's key table is the identity:
`features` holds `conv0` (7×7/2, pad 3, no bias), `norm0` (then ReLU and MaxPool2d(3, 2, 1)),
`denseblock1`..`denseblockN` of `denselayer1`..`denselayerM` (`norm1`, ReLU, `conv1` 1×1 to
bn_size·growth, `norm2`, ReLU, `conv2` 3×3 pad 1 to growth; the block concatenates every
layer's output to its input, channels in torch's order), `transition1`..`transition{N-1}`
(`norm`, ReLU, `conv` 1×1 halving the channels (floor), AvgPool2d(2, 2) with floor sizes) and
`norm5`; then `classifier` (Linear). torchvision's forward adds ReLU, global average pooling and
flatten after `features`. BatchNorm uses running statistics, eps 1e-5; drop_rate is 0.

R ('original', the reference's: the output of all children but the last): the `features`
output (after norm5, before the final ReLU and pooling) flattened in NCHW order, C·h·w
(1920·7·7 = 94 080 for DenseNet-201 at 224²); `to_r` is the flatten and `head` reshapes r to
[B, C, h·w], applies ReLU, the spatial mean and the linear layer. R ('penultimate'): the linear
layer's input, ReLU then global mean of the features, [B, C]; `head` is the linear layer. In
both cases `r_2d` is the `features` output [B, h, w, C].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from linkjax import models
from linkjax.models import torch_layers as tl

# depth -> (growth_rate, block_config, num_init_features), as torchvision's densenetNNN.
DEPTHS: dict[int, tuple[int, tuple[int, ...], int]] = {
    121: (32, (6, 12, 24, 16), 64),
    161: (48, (6, 12, 36, 24), 96),
    169: (32, (6, 12, 32, 32), 64),
    201: (32, (6, 12, 48, 32), 64),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseNetConfig(models.ClassifierConfig):
  """DenseNet-BC architecture (defaults: torchvision's DenseNet class = densenet121).

  Attributes:
    growth_rate: channels each dense layer adds (k; 32, 48 for DenseNet-161).
    block_config: dense layers per block.
    num_init_features: channels of the stem conv.
    bn_size: bottleneck width factor (the 1×1 conv outputs bn_size·growth_rate).
    num_classes: outputs of the linear classifier.
    resize, crop: the eval transform (shorter-side resize, centre crop; None: skip).
    r_layer: 'original' (flattened `features` output, C·h·w) or 'penultimate' ([B, C], after
      ReLU and global average pooling).
  """
  growth_rate: int = 32
  block_config: tuple[int, ...] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4

  def __post_init__(self):
    super().__post_init__()
    if not self.block_config or min(self.block_config) < 1:
      raise ValueError(f"block_config must be positive ints, got {self.block_config}")
    if min(self.growth_rate, self.num_init_features, self.bn_size) < 1:
      raise ValueError("growth_rate, num_init_features and bn_size must be positive")

  @property
  def depth(self) -> int:
    """Weight layers: stem conv, two per dense layer, transitions, classifier (121, ...)."""
    return 2 * sum(self.block_config) + len(self.block_config) + 1

  @property
  def channels(self) -> tuple[int, ...]:
    """Channels after each dense block (after its transition for all but the last)."""
    c, out = self.num_init_features, []
    for i, n in enumerate(self.block_config):
      c += n * self.growth_rate
      if i < len(self.block_config) - 1:
        c //= 2
      out.append(c)
    return tuple(out)

  @property
  def num_features(self) -> int:
    """Channels of the `features` output (1920 for DenseNet-201)."""
    return self.channels[-1]


class DenseLayer(nnx.Module):
  """BN-ReLU-1×1 conv-BN-ReLU-3×3 conv; returns the `growth_rate` new channels."""

  def __init__(self, cin: int, growth_rate: int, bn_size: int, *, rngs: nnx.Rngs):
    mid = bn_size * growth_rate
    self.norm1 = tl.batch_norm(cin, rngs)
    self.conv1 = tl.conv(cin, mid, 1, bias=False, rngs=rngs)
    self.norm2 = tl.batch_norm(mid, rngs)
    self.conv2 = tl.conv(mid, growth_rate, 3, padding=1, bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv1(jax.nn.relu(self.norm1(x)))
    return self.conv2(jax.nn.relu(self.norm2(y)))


class DenseBlock(nnx.Module):
  """`denselayer1`..`denselayerM`, each reading the concatenation of all previous outputs."""

  def __init__(self, n: int, cin: int, growth_rate: int, bn_size: int, *, rngs: nnx.Rngs):
    self.n = n
    for j in range(n):
      setattr(self, f"denselayer{j + 1}",
              DenseLayer(cin + j * growth_rate, growth_rate, bn_size, rngs=rngs))

  def __call__(self, x: jax.Array) -> jax.Array:
    feats = [x]
    for j in range(self.n):
      feats.append(getattr(self, f"denselayer{j + 1}")(jnp.concatenate(feats, axis=-1)))
    return jnp.concatenate(feats, axis=-1)


class Transition(nnx.Module):
  """BN-ReLU-1×1 conv, then AvgPool2d(2, 2)."""

  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    self.norm = tl.batch_norm(cin, rngs)
    self.conv = tl.conv(cin, cout, 1, bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return tl.avg_pool2d(self.conv(jax.nn.relu(self.norm(x))), 2, 2)


class Features(nnx.Module):
  """torchvision's `features` Sequential (conv0 ... norm5); called by DenseNet step by step."""

  def __init__(self, config: DenseNetConfig, *, rngs: nnx.Rngs):
    self.n_blocks = len(config.block_config)
    c = config.num_init_features
    self.conv0 = tl.conv(3, c, 7, stride=2, padding=3, bias=False, rngs=rngs)
    self.norm0 = tl.batch_norm(c, rngs)
    for i, n in enumerate(config.block_config):
      setattr(self, f"denseblock{i + 1}",
              DenseBlock(n, c, config.growth_rate, config.bn_size, rngs=rngs))
      c += n * config.growth_rate
      if i < self.n_blocks - 1:
        setattr(self, f"transition{i + 1}", Transition(c, c // 2, rngs=rngs))
        c //= 2
    self.norm5 = tl.batch_norm(c, rngs)


class DenseNet(nnx.Module):
  """torchvision DenseNet; `model(x)` returns logits and named activations."""

  def __init__(self, config: DenseNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.features = Features(config, rngs=rngs)
    self.classifier = nnx.Linear(config.num_features, config.num_classes, rngs=rngs)

  def to_r(self, r_2d: jax.Array) -> jax.Array:
    """R from the features map. r_2d: [B, h, w, C] -> [B, C·h·w] (original) or [B, C]."""
    if self.config.r_layer == "original":
      return tl.flatten_nchw(r_2d)
    return jnp.mean(jax.nn.relu(r_2d), axis=(1, 2))

  def head(self, r: jax.Array) -> jax.Array:
    """Logits from R. r: [B, C·h·w] (original, NCHW order) or [B, C] -> [B, num_classes]."""
    if self.config.r_layer == "original":
      # Spatial arrangement is irrelevant to a global mean: [B, C, h·w] suffices.
      r = jnp.mean(jax.nn.relu(r.reshape(r.shape[0], self.config.num_features, -1)), axis=-1)
    return self.classifier(r)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Forward pass.

    Args:
      x: [B, H, W, 3] float32, normalised.

    Returns:
      logits [B, num_classes] and acts (NHWC maps): 'stem' (after pool0), 'denseblock1'..,
      'transition1'.., 'features' = 'r_2d' (after norm5, before the final ReLU), 'r'.
    """
    f = self.features
    acts = {}
    y = jax.nn.relu(f.norm0(f.conv0(x)))
    y = tl.max_pool2d(y, 3, 2, 1)
    acts["stem"] = y
    for i in range(1, f.n_blocks + 1):
      y = getattr(f, f"denseblock{i}")(y)
      acts[f"denseblock{i}"] = y
      if i < f.n_blocks:
        y = getattr(f, f"transition{i}")(y)
        acts[f"transition{i}"] = y
    y = f.norm5(y)
    acts["features"] = acts["r_2d"] = y
    r = self.to_r(y)
    acts["r"] = r
    return self.head(r), acts
