"""Few-shot part segmenter on generator features ("Repurposing GANs", as used by the paper).

Features: every second child of the generator's synthesis network in order (`input`, L1, L3, ...;
the reference takes `list(features.values())[::2]`), each resized with nearest-neighbour
sampling to `resolution` x `resolution` (torch `F.interpolate(mode='nearest')` index rule) and
concatenated along channels. The reference resizes each whole map, margins included: a StyleGAN3
layer's map is its sampling rate plus a margin on each side, so its features land scaled by
size / rate against the image (20 / 16 for a 16-rate map with 2-pixel margins). Optionally
(`SegmenterConfig.feature_margins`, from `stylegan_margins`) the margins are cropped first, which
aligns every layer with the image; the default is the reference's rule. `all_feature_layers`
(every child but ToRGB) is the alternative layer rule. Head: 3x3 convs
with padding = dilation and LeakyReLU(0.2) between them (none after the last), no normalisation.

Two heads (`SegmenterConfig.head`):
  * 'dense' (the reference's FewShotCNN, the default): the first 3x3 convolution reads all
    concatenated feature channels at the output resolution.
  * 'projected' (cheaper): each feature layer is first projected by its own 1x1 convolution to
    a few channels (`proj_channels`), at the layer's own resolution after the margin crop; the
    projections are then nearest-resized and concatenated, and a narrower 3x3 stack
    (`dilations`, `widths`) runs at the output resolution. A 1x1 convolution commutes with the
    nearest resize (both act per pixel / per channel), so `head` on the concatenated features
    (projection after the resize, as training uses) equals `__call__` on the maps (projection
    before it, as inference uses) up to float32 rounding.

Training lives in `linkjax.segmenter_train`, mask files and pictures in `linkjax.masks`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linkjax.models import upsampled_conv

# size -> (dilations, hidden channel widths); from the reference's FewShotCNN.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "S": ((1, 2, 1, 2, 1), (128, 64, 64, 32)),
    "M": ((1, 2, 4, 1, 2, 4, 1), (128, 64, 64, 64, 64, 32)),
    "L": ((1, 2, 4, 8, 1, 2, 4, 8, 1), (128, 64, 64, 64, 64, 64, 64, 32)),
}
LEAKY_SLOPE = 0.2
HEADS = ("dense", "projected")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmenterConfig:
  """Segmenter head configuration.

  Attributes:
    in_channels: total channels of the concatenated features.
    n_labels: number of labels including background 0.
    size: 'S', 'M' or 'L' (depth / dilation pattern of the head).
    feature_layers: generator layer names the features come from, in concatenation order.
    resolution: side of the square feature maps and of the predicted masks.
    label_names: optional names of the n_labels labels (label 0 first).
    feature_margins: pixels cropped from each side of each feature map before the resize, one
      per feature layer (`stylegan_margins`); () crops nothing (the reference's rule).
    head: 'dense' (the reference's head) or 'projected' (per-layer 1x1 projections first; see
      the module docstring).
    feature_channels: channels of each feature map, in concatenation order (sum: in_channels);
      required by the projected head, which splits the concatenated features by them.
    proj_channels: output channels of each feature map's 1x1 projection (projected head).
    dilations: dilation of each 3x3 convolution of the stack; () takes `size`'s.
    widths: output channels of every 3x3 convolution but the last (which outputs n_labels);
      one fewer than `dilations`; () takes `size`'s.
  """
  in_channels: int
  n_labels: int
  size: str = "S"
  feature_layers: tuple[str, ...] = ()
  resolution: int = 128
  label_names: tuple[str, ...] = ()
  feature_margins: tuple[int, ...] = ()
  head: str = "dense"
  feature_channels: tuple[int, ...] = ()
  proj_channels: tuple[int, ...] = ()
  dilations: tuple[int, ...] = ()
  widths: tuple[int, ...] = ()

  def __post_init__(self):
    if self.size not in SIZES:
      raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
    if self.label_names and len(self.label_names) != self.n_labels:
      raise ValueError(f"{len(self.label_names)} label names for {self.n_labels} labels")
    if self.feature_margins and len(self.feature_margins) != len(self.feature_layers):
      raise ValueError(f"{len(self.feature_margins)} feature margins for "
                       f"{len(self.feature_layers)} feature layers")
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
    if bool(self.dilations) != bool(self.widths) or (
        self.dilations and len(self.widths) != len(self.dilations) - 1):
      raise ValueError(f"widths {self.widths} must be one fewer than dilations "
                       f"{self.dilations} (or both empty: `size`'s)")
    if any(d < 1 for d in self.dilations) or any(w < 1 for w in self.widths):
      raise ValueError(f"dilations {self.dilations} and widths {self.widths} must be >= 1")
    if self.head == "projected":
      n = len(self.feature_channels)
      if not n or len(self.proj_channels) != n or min(self.proj_channels) < 1:
        raise ValueError(f"the projected head needs feature_channels and proj_channels (>= 1), "
                         f"one per feature map; got {self.feature_channels} and "
                         f"{self.proj_channels}")
      if sum(self.feature_channels) != self.in_channels:
        raise ValueError(f"feature_channels {self.feature_channels} sum to "
                         f"{sum(self.feature_channels)}, not in_channels {self.in_channels}")
      if self.feature_layers and len(self.feature_layers) != n:
        raise ValueError(f"{n} feature_channels for {len(self.feature_layers)} feature layers")
    elif self.proj_channels:
      raise ValueError("proj_channels is only for the projected head")

  @property
  def stack(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(dilations, hidden widths) of the 3x3 convolutions."""
    return (self.dilations, self.widths) if self.dilations else SIZES[self.size]


def reference_feature_layers(layer_names: Sequence[str]) -> tuple[str, ...]:
  """The reference's feature selection: every second synthesis child, starting with `input`.

  Args:
    layer_names: all children of the synthesis network in order (`input`, `L0_...`, ...), as
      `StyleGANXL.layer_names`.
  Returns:
    `layer_names[::2]`, minus a final ToRGB layer (named `L*_*_3`: 3 output channels) should the
    stride land on it. For the reference's networks (an even number of children, ToRGB last)
    this is exactly `[::2]`.
  """
  names = tuple(layer_names)
  features = all_feature_layers(names)
  return tuple(n for n in names[::2] if n in features)


def all_feature_layers(layer_names: Sequence[str]) -> tuple[str, ...]:
  """Every synthesis child as a feature layer (as the original Repurposing-GANs method), minus
  a final ToRGB layer (named `L*_*_3`)."""
  names = tuple(layer_names)
  if len(names) > 1 and names[-1].endswith("_3"):
    names = names[:-1]
  return names


def stylegan_margins(config: Any, layer_names: Sequence[str]) -> tuple[int, ...]:
  """Per-layer margins of a StyleGAN3 / StyleGAN-XL synthesis network's feature maps.

  A layer's map has side `size = sampling_rate + 2 * margin`; its central `sampling_rate`
  pixels cover the image. (The last layers are critically sampled at the image size: margin 0.)

  Args:
    config: the generator config (`input` and `layers` specs, as `StyleGANXLConfig`).
    layer_names: feature layers (`input` or layer spec names).
  Returns:
    one margin (pixels per side) per layer.
  """
  specs = {s.name: (s.out_size, s.out_sampling_rate) for s in config.layers}
  specs["input"] = (config.input.size, config.input.sampling_rate)
  margins = []
  for name in layer_names:
    if name not in specs:
      raise KeyError(f"no synthesis layer {name!r}; have {sorted(specs)}")
    size, rate = specs[name]
    extra = [s - rate for s in size]
    if len(set(extra)) != 1 or extra[0] < 0 or extra[0] % 2 or rate != int(rate):
      raise ValueError(f"layer {name}: size {size} at rate {rate} has no symmetric margin")
    margins.append(int(extra[0]) // 2)
  return tuple(margins)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of torch's nearest resize: min(floor(dst * in/out), in - 1) in float32."""
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1).astype(np.int32)


def resize_nearest(x: jax.Array, size: int) -> jax.Array:
  """Nearest resize of NCHW maps, as torch F.interpolate(x, (size, size), mode='nearest').

  Args:
    x: [B, C, h, w].
    size: output side.
  Returns:
    [B, C, size, size].
  """
  rows = nearest_indices(x.shape[-2], size)
  cols = nearest_indices(x.shape[-1], size)
  return jnp.take(jnp.take(x, rows, axis=-2), cols, axis=-1)


def select_features(features: Mapping[str, jax.Array],
                    layer_names: Sequence[str]) -> list[jax.Array]:
  """Picks the named feature maps, in `layer_names` order.

  Args:
    features: {layer_name: [B, C, h, w] NCHW}, as from `synthesis(ws, return_features=True)`.
    layer_names: the layers to keep.
  Returns:
    list of [B, C_i, h_i, w_i].
  """
  missing = [n for n in layer_names if n not in features]
  if missing:
    raise KeyError(f"features lack layers {missing}; have {list(features)}")
  return [features[n] for n in layer_names]


def concat_features(feature_list: Sequence[jax.Array], resolution: int = 128,
                    margins: Sequence[int] = ()) -> jax.Array:
  """Crops margins (optional), resizes (nearest) and concatenates feature maps along channels.

  Args:
    feature_list: list of [B, C_i, h_i, w_i] NCHW.
    resolution: output side.
    margins: pixels cut from each side of map i before the resize; () cuts nothing.
  Returns:
    [B, resolution, resolution, sum C_i] float32 NHWC.
  """
  margins = tuple(margins) or (0,) * len(feature_list)
  if len(margins) != len(feature_list):
    raise ValueError(f"{len(margins)} margins for {len(feature_list)} feature maps")
  maps = [resize_nearest(f[..., m:f.shape[-2] - m, m:f.shape[-1] - m].astype(jnp.float32),
                         resolution) for f, m in zip(feature_list, margins)]
  return jnp.transpose(jnp.concatenate(maps, axis=1), (0, 2, 3, 1))


# torch's default init of Conv2d / Linear weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_UNIFORM = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class FewShotSegmenter(nnx.Module):
  """Dilated-conv head that maps generator features to per-pixel label logits.

  Attributes (parameters):
    proj: the projected head's per-layer 1x1 projections (`nnx.Linear`, [C_i, p_i]); absent
      for the dense head.
    layers: the 3x3 convolutions.
  """

  def __init__(self, config: SegmenterConfig, *, rngs: nnx.Rngs):
    self.config = config
    dilations, hidden = config.stack
    c_in = config.in_channels
    if config.head == "projected":
      projections = []
      for c, p in zip(config.feature_channels, config.proj_channels):
        lin = nnx.Linear(c, p, kernel_init=_TORCH_UNIFORM, rngs=rngs)
        lin.bias[...] = jax.random.uniform(rngs.params(), (p,), jnp.float32, -1 / math.sqrt(c),
                                           1 / math.sqrt(c))
        projections.append(lin)
      self.proj = nnx.List(projections)
      c_in = sum(config.proj_channels)
    widths = (c_in, *hidden, config.n_labels)
    layers = []
    for d, c_in, c_out in zip(dilations, widths[:-1], widths[1:]):
      conv = nnx.Conv(c_in, c_out, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
                      kernel_init=_TORCH_UNIFORM, rngs=rngs)
      bound = 1.0 / math.sqrt(9 * c_in)
      conv.bias[...] = jax.random.uniform(rngs.params(), (c_out,), jnp.float32, -bound, bound)
      layers.append(conv)
    self.layers = nnx.List(layers)

  def head(self, x: jax.Array) -> jax.Array:
    """Logits from concatenated features.

    The projected head applies its 1x1 projections here after the resize (to the channel
    groups of `config.feature_channels`); this is what training differentiates.

    Args:
      x: [B, H, W, in_channels] NHWC (from `concat_features`).
    Returns:
      [B, H, W, n_labels] logits.
    """
    if self.config.head == "projected":
      parts, start = [], 0
      for lin, c in zip(self.proj, self.config.feature_channels):
        parts.append(lin(x[..., start:start + c]))
        start += c
      x = jnp.concatenate(parts, axis=-1)
    return self._after_first(self.layers[0](x))

  def _after_first(self, x: jax.Array) -> jax.Array:
    # The head after its first convolution: LeakyReLU before every later convolution.
    for conv in self.layers[1:]:
      x = conv(jax.nn.leaky_relu(x, LEAKY_SLOPE))
    return x

  def __call__(self, feature_list: Sequence[jax.Array]) -> jax.Array:
    """Logits from a list of NCHW feature maps (in `config.feature_layers` order).

    Equals `head(concat_features(feature_list, resolution, feature_margins))` up to float32
    rounding, but computed at each map's own resolution where that is cheaper: the dense head's
    first convolution runs on each map at its resolution (`upsampled_conv.resized_concat_conv`:
    no resized copy of the maps and ~2.2x fewer multiply-adds in it for the miniworld's dense
    segmenter); the projected head first projects each cropped map at its resolution, then its
    first convolution runs the same way on the few projected channels.

    Args:
      feature_list: list of [B, C_i, h_i, w_i].
    Returns:
      [B, resolution, resolution, n_labels] logits.
    """
    cfg = self.config
    first = self.layers[0]
    margins = cfg.feature_margins
    if cfg.head == "projected":
      if len(feature_list) != len(self.proj):
        raise ValueError(f"{len(feature_list)} feature maps for {len(self.proj)} projections")
      maps = []
      for f, m, lin in zip(feature_list, margins or (0,) * len(feature_list), self.proj):
        f = f[..., m:f.shape[-2] - m, m:f.shape[-1] - m].astype(jnp.float32)
        y = jnp.einsum("bchw,cp->bphw", f, lin.kernel[...], precision=lin.precision)
        maps.append(y + lin.bias[...][:, None, None])
      feature_list, margins = maps, ()  # cropped already
    dilation = first.kernel_dilation  # (d, d) from the constructor
    dilation = dilation[0] if isinstance(dilation, (tuple, list)) else dilation
    x = upsampled_conv.resized_concat_conv(
        feature_list, margins, cfg.resolution, first.kernel[...], first.bias[...],
        nearest_indices, dilation=int(dilation), precision=first.precision)
    return self._after_first(x)


def segment_features(model: FewShotSegmenter, features: Mapping[str, jax.Array]) -> jax.Array:
  """Logits from a generator's feature dict, using the layers named in the model's config.

  Args:
    model: the segmenter.
    features: {layer_name: [B, C, h, w]}.
  Returns:
    [B, resolution, resolution, n_labels] logits.
  """
  return model(select_features(features, model.config.feature_layers))


def predict_masks(model: FewShotSegmenter, feature_list: Sequence[jax.Array]) -> jax.Array:
  """Argmax labels [B, R, R] int32 from a list of NCHW feature maps."""
  return jnp.argmax(model(feature_list), axis=-1).astype(jnp.int32)
