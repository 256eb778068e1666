"""torchvision AlexNet in Flax NNX, NHWC, eval mode.

`features` and `classifier` mirror torchvision's `nn.Sequential`s index by index (stateless
ReLU/MaxPool/Dropout entries hold their places), so the converter is an identity key table:

  features: 0 Conv(3, 64, 11, stride 4, pad 2), 1 ReLU, 2 MaxPool(3, 2),
            3 Conv(64, 192, 5, pad 2), 4 ReLU, 5 MaxPool(3, 2),
            6 Conv(192, 384, 3, pad 1), 7 ReLU, 8 Conv(384, 256, 3, pad 1), 9 ReLU,
            10 Conv(256, 256, 3, pad 1), 11 ReLU, 12 MaxPool(3, 2)
  avgpool:  AdaptiveAvgPool2d((6, 6)) with PyTorch's bins; torch.flatten in NCHW order
  classifier: 0 Dropout, 1 Linear(9216, 4096), 2 ReLU, 3 Dropout, 4 Linear(4096, 4096), 5 ReLU,
            6 Linear(4096, num_classes)

Max pools have no padding and floor sizes; Dropout is inactive. R and `to_r`/`head`: see
`torch_layers.ConvPoolMLP` ('original': 256·6·6 = 9 216; 'penultimate': 4 096).
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from linkjax import models
from linkjax.models import torch_layers as tl

WIDTHS = (64, 192, 384, 256, 256)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlexNetConfig(models.ClassifierConfig):
  """AlexNet architecture (defaults: torchvision's alexnet).

  Attributes:
    widths: output channels of the five convs (64, 192, 384, 256, 256); small values give
      tiny test models.
    hidden: width of the two hidden linear layers (4096).
    pool_size: side of the adaptive average pooling output (6).
    num_classes: outputs of the final linear layer.
    resize, crop: the eval transform (shorter-side resize, centre crop; None: skip).
    r_layer: 'original' (flattened pooled map, 9 216) or 'penultimate' (`hidden`).
  """
  widths: tuple[int, int, int, int, int] = WIDTHS
  hidden: int = 4096
  pool_size: int = 6

  def __post_init__(self):
    super().__post_init__()
    if len(self.widths) != 5 or min(self.widths) < 1:
      raise ValueError(f"widths must be 5 positive ints, got {self.widths}")

  @property
  def r_dim(self) -> int:
    """Dimension of R."""
    if self.r_layer == "original":
      return self.widths[-1] * self.pool_size**2
    return self.hidden


class AlexNet(tl.ConvPoolMLP):
  """torchvision AlexNet; `model(x)` returns logits and named activations (see ConvPoolMLP)."""

  def __init__(self, config: AlexNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    w = config.widths
    self.features = nnx.List([
        tl.conv(3, w[0], 11, stride=4, padding=2, rngs=rngs), tl.ReLU(), tl.MaxPool2d(3, 2),
        tl.conv(w[0], w[1], 5, padding=2, rngs=rngs), tl.ReLU(), tl.MaxPool2d(3, 2),
        tl.conv(w[1], w[2], 3, padding=1, rngs=rngs), tl.ReLU(),
        tl.conv(w[2], w[3], 3, padding=1, rngs=rngs), tl.ReLU(),
        tl.conv(w[3], w[4], 3, padding=1, rngs=rngs), tl.ReLU(), tl.MaxPool2d(3, 2)])
    h = config.hidden
    self.classifier = nnx.List([
        tl.Dropout(), nnx.Linear(w[4] * config.pool_size**2, h, rngs=rngs), tl.ReLU(),
        tl.Dropout(), nnx.Linear(h, h, rngs=rngs), tl.ReLU(),
        nnx.Linear(h, config.num_classes, rngs=rngs)])
