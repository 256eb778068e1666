"""torchvision VGG (11/13/16/19, with or without BatchNorm) in Flax NNX, NHWC, eval mode.

`features` and `classifier` are `nnx.List`s mirroring torchvision's `nn.Sequential`s index by
index (stateless ReLU/MaxPool/Dropout entries hold their places), so `features.N.weight` maps to
`features[N].kernel` and the converter (`ports/torchvision.py`) is an identity key table.

Layout as `torchvision.models.vgg.make_layers`: 3×3 convs with padding 1 and bias, each followed
by [BatchNorm2d and] ReLU; 'M' = MaxPool2d(2, 2) (floor sizes); then AdaptiveAvgPool2d((7, 7))
with PyTorch's bins, torch.flatten in NCHW order, and Linear(512·7·7, 4096), ReLU, Dropout,
Linear(4096, 4096), ReLU, Dropout, Linear(4096, num_classes). Dropout is inactive (eval).
R and `to_r`/`head`: see `torch_layers.ConvPoolMLP`.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from linkjax import models
from linkjax.models import torch_layers as tl

# torchvision's cfgs 'A', 'B', 'D', 'E': conv widths, "M" = 2×2/2 max pool.
LAYERS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512,
         512, 512, "M"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class VGGConfig(models.ClassifierConfig):
  """VGG architecture (defaults: torchvision's vgg16).

  Attributes:
    layers: torchvision's `make_layers` cfg: conv output widths (ints) and "M" for a 2×2/2 max
      pool. `LAYERS[d]` for VGG-d; small widths give tiny test models.
    batch_norm: BatchNorm2d after every conv (torchvision's vggNN_bn).
    hidden: width of the two hidden linear layers (4096).
    pool_size: side of the adaptive average pooling output (7).
    num_classes: outputs of the final linear layer.
    resize, crop: the eval transform (shorter-side resize, centre crop; None: skip).
    r_layer: 'original' (the reference's R: flattened pooled map, 512·7·7 = 25 088) or
      'penultimate' (the last linear layer's input, `hidden` = 4096).
  """
  layers: tuple[int | str, ...] = LAYERS[16]
  batch_norm: bool = False
  hidden: int = 4096
  pool_size: int = 7

  def __post_init__(self):
    super().__post_init__()
    bad = [v for v in self.layers if v != "M" and not (isinstance(v, int) and v > 0)]
    if bad or not self.convs:
      raise ValueError(f"layers must hold positive conv widths and 'M', at least one conv; "
                       f"got {self.layers}")

  @property
  def convs(self) -> tuple[int, ...]:
    return tuple(v for v in self.layers if v != "M")

  @property
  def depth(self) -> int:
    """Weight layers: convs + 3 linear (16 for VGG-16)."""
    return len(self.convs) + 3

  @property
  def r_dim(self) -> int:
    """Dimension of R."""
    if self.r_layer == "original":
      return self.convs[-1] * self.pool_size**2
    return self.hidden


class VGG(tl.ConvPoolMLP):
  """torchvision VGG; `model(x)` returns logits and named activations (see ConvPoolMLP)."""

  def __init__(self, config: VGGConfig, *, rngs: nnx.Rngs):
    self.config = config
    layers, cin = [], 3
    for v in config.layers:
      if v == "M":
        layers.append(tl.MaxPool2d(2, 2))
        continue
      layers.append(tl.conv(cin, v, 3, padding=1, rngs=rngs))
      if config.batch_norm:
        layers.append(tl.batch_norm(v, rngs))
      layers.append(tl.ReLU())
      cin = v
    self.features = nnx.List(layers)
    h = config.hidden
    self.classifier = nnx.List([
        nnx.Linear(cin * config.pool_size**2, h, rngs=rngs), tl.ReLU(), tl.Dropout(),
        nnx.Linear(h, h, rngs=rngs), tl.ReLU(), tl.Dropout(),
        nnx.Linear(h, config.num_classes, rngs=rngs)])
