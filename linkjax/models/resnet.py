"""torchvision ResNet (v1.5) in Flax NNX, NHWC, inference-mode BatchNorm.

The classifier whose penultimate layer R the linking network reads. Submodules carry
torchvision's names (`conv1`, `bn1`, `layer1`..`layer4` holding blocks `0..n-1` with
`conv1/bn1/conv2/bn2[/conv3/bn3]` and `downsample` = [conv, bn], `fc`), so the converter in
`ports/torchvision.py` is a near-identity key table.

Numerics follow PyTorch exactly where it matters for parity: explicit symmetric padding
(7×7/2 conv pad 3, 3×3 convs pad 1, 3×3/2 max-pool pad 1 with -inf padding, never 'SAME',
whose asymmetric padding differs for even inputs), stride on the 3×3 conv of the bottleneck
(v1.5), BatchNorm with running statistics and eps 1e-5.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from linkjax import models

# depth -> (block type, blocks per stage), as torchvision's resnet18 ... resnet152.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetConfig(models.ClassifierConfig):
  """ResNet architecture.

  Attributes:
    depth: 18, 34, 50, 101 or 152 (torchvision's variants); selects block type and stage sizes
      unless both `stage_sizes` and `block` are given (then depth is informational only).
    width: channels of the stem and of stage 1's 3×3 convs (64 in torchvision); stage i uses
      width·2^i, so small values give tiny test models.
    num_classes: outputs of the final linear layer.
    stage_sizes: blocks per stage (4 stages), overriding the depth table.
    block: 'basic' or 'bottleneck', overriding the depth table.
    resize: shorter-side resize of the classifier's input transform (None: no resize).
    crop: centre crop size of the input transform (None: no crop).
    r_layer: the representation layer R: 'original' (the reference's: the output of all
      children but `fc`) or 'penultimate' (the input of the last linear layer). For a ResNet
      both are the globally average-pooled last stage.
  """
  depth: int = 50
  width: int = 64
  stage_sizes: tuple[int, ...] | None = None
  block: str | None = None

  def __post_init__(self):
    super().__post_init__()
    if (self.stage_sizes is None or self.block is None) and self.depth not in DEPTHS:
      raise ValueError(f"depth {self.depth} is not one of {sorted(DEPTHS)}; give stage_sizes "
                       "and block for other layouts")
    if self.block is not None and self.block not in EXPANSION:
      raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
    if self.stage_sizes is not None and (len(self.stage_sizes) != 4
                                         or min(self.stage_sizes) < 1):
      raise ValueError(f"stage_sizes must be 4 positive ints, got {self.stage_sizes}")

  @property
  def block_type(self) -> str:
    return self.block if self.block is not None else DEPTHS[self.depth][0]

  @property
  def stages(self) -> tuple[int, ...]:
    return tuple(self.stage_sizes) if self.stage_sizes is not None else DEPTHS[self.depth][1]

  @property
  def num_features(self) -> int:
    """Dimension of R (2048 for ResNet-50)."""
    return self.width * 8 * EXPANSION[self.block_type]


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  # PyTorch pads k//2 on both sides; 'SAME' would pad (0, 1) for stride 2 on even inputs.
  pad = k // 2
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  use_bias=False, kernel_init=nnx.initializers.variance_scaling(
                      2.0, "fan_out", "normal"), rngs=rngs)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(c, use_running_average=True, epsilon=BN_EPS, momentum=0.9, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3×3 convs (stride on the first) plus identity or 1×1 downsample shortcut."""

  def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, planes, 3, stride, rngs)
    self.bn1 = _bn(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, 1, rngs)
    self.bn2 = _bn(planes, rngs)
    if stride != 1 or cin != planes:
      self.downsample = nnx.List([_conv(cin, planes, 1, stride, rngs), _bn(planes, rngs)])
    else:
      self.downsample = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
  """1×1 reduce, 3×3 (carrying the stride: v1.5), 1×1 expand ×4, plus shortcut."""

  def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
    cout = planes * EXPANSION["bottleneck"]
    self.conv1 = _conv(cin, planes, 1, 1, rngs)
    self.bn1 = _bn(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, stride, rngs)
    self.bn2 = _bn(planes, rngs)
    self.conv3 = _conv(planes, cout, 1, 1, rngs)
    self.bn3 = _bn(cout, rngs)
    if stride != 1 or cin != cout:
      self.downsample = nnx.List([_conv(cin, cout, 1, stride, rngs), _bn(cout, rngs)])
    else:
      self.downsample = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return jax.nn.relu(y + shortcut)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch's MaxPool2d(3, stride=2, padding=1): padding never wins (-inf). x: [B, H, W, C]."""
  # A Python-scalar init lets JAX pick its differentiable max-pool primitive; a jnp array
  # init falls back to a generic reduction that reverse-mode autodiff cannot linearise.
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet(nnx.Module):
  """torchvision ResNet; `model(x)` returns logits and named activations."""

  def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    block_cls = BasicBlock if config.block_type == "basic" else Bottleneck
    expansion = EXPANSION[config.block_type]
    self.conv1 = nnx.Conv(3, config.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                          use_bias=False, rngs=rngs)
    self.bn1 = _bn(config.width, rngs)
    cin = config.width
    for i, n in enumerate(config.stages):
      planes = config.width * 2**i
      blocks = []
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(cin, planes, stride, rngs=rngs))
        cin = planes * expansion
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
    self.fc = nnx.Linear(cin, config.num_classes, rngs=rngs)

  def to_r(self, r_2d: jax.Array) -> jax.Array:
    """R from the last stage's map: global average pooling. r_2d: [B, h, w, C] -> [B, C]."""
    return jnp.mean(r_2d, axis=(1, 2))

  def head(self, r: jax.Array) -> jax.Array:
    """Final linear layer. r: [B, C] -> logits [B, num_classes]."""
    return self.fc(r)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Forward pass.

    Args:
      x: [B, H, W, 3] float32, normalised (see `linkjax.preprocess.classifier_input`).

    Returns:
      logits [B, num_classes] and acts: 'stem' [B, H/4, W/4, width], 'layer1'..'layer4'
      (NHWC), 'r_2d' (= 'layer4'), 'r' [B, num_features] (global average pool of layer4,
      non-negative).
    """
    acts = {}
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = max_pool_3x3_s2(y)
    acts["stem"] = y
    for i in range(1, 5):
      for block in getattr(self, f"layer{i}"):
        y = block(y)
      acts[f"layer{i}"] = y
    acts["r_2d"] = y
    r = self.to_r(y)
    acts["r"] = r
    return self.head(r), acts
