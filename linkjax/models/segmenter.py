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

Training (`train_segmenter`) is one jitted function (scan over epochs, scan over a shuffled order
of the labelled images, one image per step) with torch-style Adam + L2 weight decay and a step
learning-rate schedule, as in the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from linkjax.models import upsampled_conv

# size -> (dilations, hidden channel widths); from the reference's FewShotCNN.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "S": ((1, 2, 1, 2, 1), (128, 64, 64, 32)),
    "M": ((1, 2, 4, 1, 2, 4, 1), (128, 64, 64, 64, 64, 32)),
    "L": ((1, 2, 4, 8, 1, 2, 4, 8, 1), (128, 64, 64, 64, 64, 64, 64, 32)),
}
LEAKY_SLOPE = 0.2


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
  """
  in_channels: int
  n_labels: int
  size: str = "S"
  feature_layers: tuple[str, ...] = ()
  resolution: int = 128
  label_names: tuple[str, ...] = ()
  feature_margins: tuple[int, ...] = ()

  def __post_init__(self):
    if self.size not in SIZES:
      raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
    if self.label_names and len(self.label_names) != self.n_labels:
      raise ValueError(f"{len(self.label_names)} label names for {self.n_labels} labels")
    if self.feature_margins and len(self.feature_margins) != len(self.feature_layers):
      raise ValueError(f"{len(self.feature_margins)} feature margins for "
                       f"{len(self.feature_layers)} feature layers")


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


class FewShotSegmenter(nnx.Module):
  """Dilated-conv head that maps concatenated generator features to per-pixel label logits."""

  def __init__(self, config: SegmenterConfig, *, rngs: nnx.Rngs):
    self.config = config
    dilations, hidden = SIZES[config.size]
    widths = (config.in_channels, *hidden, config.n_labels)
    layers = []
    for d, c_in, c_out in zip(dilations, widths[:-1], widths[1:]):
      # torch Conv2d's default init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
      conv = nnx.Conv(c_in, c_out, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
                      kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                                    "uniform"),
                      rngs=rngs)
      bound = 1.0 / math.sqrt(9 * c_in)
      conv.bias[...] = jax.random.uniform(rngs.params(), (c_out,), jnp.float32, -bound, bound)
      layers.append(conv)
    self.layers = nnx.List(layers)

  def head(self, x: jax.Array) -> jax.Array:
    """Logits from concatenated features.

    Args:
      x: [B, H, W, in_channels] NHWC (from `concat_features`).
    Returns:
      [B, H, W, n_labels] logits.
    """
    return self._after_first(self.layers[0](x))

  def _after_first(self, x: jax.Array) -> jax.Array:
    # The head after its first convolution: LeakyReLU before every later convolution.
    for conv in self.layers[1:]:
      x = conv(jax.nn.leaky_relu(x, LEAKY_SLOPE))
    return x

  def __call__(self, feature_list: Sequence[jax.Array]) -> jax.Array:
    """Logits from a list of NCHW feature maps (in `config.feature_layers` order).

    Equals `head(concat_features(feature_list, resolution, feature_margins))` up to float32
    rounding, but the first convolution runs on each map at its own resolution
    (`upsampled_conv.resized_concat_conv`): no resized copy of the maps and ~2.2x fewer
    multiply-adds in it for the miniworld segmenter.

    Args:
      feature_list: list of [B, C_i, h_i, w_i].
    Returns:
      [B, resolution, resolution, n_labels] logits.
    """
    first = self.layers[0]
    dilation = first.kernel_dilation  # (d, d) from the constructor
    dilation = dilation[0] if isinstance(dilation, (tuple, list)) else dilation
    x = upsampled_conv.resized_concat_conv(
        feature_list, self.config.feature_margins, self.config.resolution, first.kernel[...],
        first.bias[...], nearest_indices, dilation=int(dilation),
        precision=first.precision)
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


def resize_masks(masks: np.ndarray, resolution: int) -> np.ndarray:
  """Nearest resize of integer masks [N, H, W] -> [N, resolution, resolution] int32 (torch rule)."""
  masks = np.asarray(masks)
  rows = nearest_indices(masks.shape[-2], resolution)
  cols = nearest_indices(masks.shape[-1], resolution)
  return masks[..., rows, :][..., :, cols].astype(np.int32)


def _step_schedule(lr: float, gamma: float, steps_per_decay: int):
  def schedule(count: jax.Array) -> jax.Array:
    n_decays = (count // steps_per_decay).astype(jnp.float32)
    return -jnp.float32(lr) * jnp.power(jnp.float32(gamma), n_decays)
  return schedule


def torch_adam(lr: float, weight_decay: float, steps_per_decay: int,
               gamma: float = 0.1) -> optax.GradientTransformation:
  """torch.optim.Adam(lr, weight_decay) + StepLR: L2 term added to the gradients before Adam."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(eps=1e-8),
                     optax.scale_by_schedule(_step_schedule(lr, gamma, steps_per_decay)))


def train_segmenter(key: jax.Array, features: jax.Array | np.ndarray, masks: jax.Array | np.ndarray,
                    n_labels: int, size: str = "S", epochs: int = 100, lr: float = 1e-3,
                    weight_decay: float = 1e-3, step_epochs: int = 50,
                    feature_layers: Sequence[str] = (), label_names: Sequence[str] = (),
                    feature_margins: Sequence[int] = ()) -> tuple[FewShotSegmenter, np.ndarray]:
  """Trains a segmenter head on precomputed features of a few labelled images.

  Every epoch visits the images in a new random order (key `fold_in(fold_in(key, 1), epoch)`),
  one image per Adam step, mean pixel cross-entropy; the learning rate is multiplied by 0.1 every
  `step_epochs` epochs. One jitted step per image, driven from Python.

  Args:
    key: PRNG key; `fold_in(key, 0)` initialises the head, `fold_in(key, 1)` shuffles.
    features: [N, R, R, C] float32 NHWC, from `concat_features` (fixed per image).
    masks: [N, H, W] int label indices, resized here with nearest to R x R.
    n_labels: number of labels including background.
    size: head size 'S', 'M' or 'L'.
    epochs: passes over the N images.
    lr: initial learning rate.
    weight_decay: L2 coefficient added to the gradients (torch Adam's weight_decay).
    step_epochs: epochs between learning-rate decays (x0.1).
    feature_layers: generator layer names of the features, stored in the config.
    label_names: label names stored in the config.
    feature_margins: the margins `features` were cropped with, stored in the config.
  Returns:
    (trained model, per-epoch mean training loss [epochs] float32).
  """
  features = jnp.asarray(features, jnp.float32)
  n, res, res2, channels = features.shape
  if res != res2:
    raise ValueError(f"features must be square, got {features.shape}")
  masks = resize_masks(np.asarray(masks), res)
  if masks.min() < 0 or masks.max() >= n_labels:
    raise ValueError(f"mask values {masks.min()}..{masks.max()} outside 0..{n_labels - 1}")
  masks = jnp.asarray(masks)
  if masks.shape[0] != n:
    raise ValueError(f"{n} feature maps but {masks.shape[0]} masks")
  config = SegmenterConfig(in_channels=channels, n_labels=n_labels, size=size,
                           feature_layers=tuple(feature_layers), resolution=res,
                           label_names=tuple(label_names),
                           feature_margins=tuple(int(m) for m in feature_margins))
  model = FewShotSegmenter(config, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
  graphdef, params = nnx.split(model)
  hparams = (float(lr), float(weight_decay), n * step_epochs)
  opt_state = torch_adam(*hparams).init(params)
  shuffle_key = jax.random.fold_in(key, 1)
  losses = np.zeros(epochs, np.float32)
  for e in range(epochs):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, e), n))
    step_losses = []
    for i in order:
      params, opt_state, loss = _train_step(graphdef, hparams, params, opt_state, features[i],
                                            masks[i])
      step_losses.append(loss)
    losses[e] = np.mean(jax.device_get(step_losses))
  return nnx.merge(graphdef, params), losses


def _loss(graphdef, params, x, y):
  logits = nnx.merge(graphdef, params).head(x[None])[0]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


# One jitted step driven from Python rather than a scan over epochs and images: on XLA:CPU the
# scanned loop ran the convolutions ~75x slower than the same step outside a loop (5.8 s vs
# 0.076 s per 64x64x160 step), and the per-step dispatch costs nothing next to a step.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(graphdef, hparams, params, opt_state, x, y):
  lr, weight_decay, steps_per_decay = hparams
  tx = torch_adam(lr, weight_decay, steps_per_decay)
  loss, grads = jax.value_and_grad(_loss, argnums=1)(graphdef, params, x, y)
  # optax's Adam bias correction computes float ** int32 count, which strict dtype promotion
  # rejects; the mixing is intended there.
  with jax.numpy_dtype_promotion("standard"):
    updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def predict_masks(model: FewShotSegmenter, feature_list: Sequence[jax.Array]) -> jax.Array:
  """Argmax labels [B, R, R] int32 from a list of NCHW feature maps."""
  return jnp.argmax(model(feature_list), axis=-1).astype(jnp.int32)


# ---- generator glue used by experiments/train_segmenter.py and experiments/segment.py ----


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
  # A fixed batch shape keeps one compiled function for the last, shorter batch.
  if x.shape[0] == batch_size:
    return x
  pad = np.repeat(x[-1:], batch_size - x.shape[0], axis=0)
  return np.concatenate([x, pad], axis=0)


def extract_features(generator: nnx.Module, ws: np.ndarray, layer_names: Sequence[str],
                     resolution: int = 128, batch_size: int = 4,
                     margins: Sequence[int] = ()) -> np.ndarray:
  """Concatenated segmenter features of generated images.

  Args:
    generator: a model with `synthesis(ws, return_features=True) -> (images, {name: NCHW})`.
    ws: [N, num_ws, w_dim] float32.
    layer_names: feature layers to use.
    resolution: feature side.
    batch_size: images per synthesis call.
    margins: per-layer margins cropped before the resize (`concat_features`).
  Returns:
    [N, resolution, resolution, C] float32 NHWC (numpy).
  """
  graphdef, state = nnx.split(generator)
  names, margins = tuple(layer_names), tuple(margins)

  @jax.jit
  def run(state, w):
    _, feats = nnx.merge(graphdef, state).synthesis(w, return_features=True)
    return concat_features(select_features(feats, names), resolution, margins)

  ws = np.asarray(ws, np.float32)
  out = []
  for a, b in _batches(ws.shape[0], batch_size):
    out.append(np.asarray(run(state, _pad_batch(ws[a:b], batch_size)))[:b - a])
  return np.concatenate(out, axis=0)


def train_on_generator(key: jax.Array, generator: nnx.Module, ws: np.ndarray, masks: np.ndarray,
                       label_names: Sequence[str], size: str = "S", epochs: int = 100,
                       resolution: int = 128, batch_size: int = 4, crop_margins: bool = False,
                       feature_layers: Sequence[str] | None = None,
                       **train_kwargs: Any) -> tuple[FewShotSegmenter, np.ndarray]:
  """Extracts the feature layers of the labelled samples once, then trains a head.

  Args:
    key: PRNG key passed to `train_segmenter`.
    generator: model with `layer_names` and `synthesis(ws, return_features=True)`.
    ws: [N, num_ws, w_dim] of the labelled samples.
    masks: [N, H, W] int label indices (any H, W; resized with nearest).
    label_names: the n_labels names, background first.
    size: head size.
    epochs: training epochs.
    resolution: feature / mask side.
    batch_size: images per synthesis call during feature extraction.
    crop_margins: crop each layer's StyleGAN3 margins before the resize (`stylegan_margins`);
      False keeps the reference's whole-map resize.
    feature_layers: generator layers of the features; None: `reference_feature_layers`.
    **train_kwargs: lr, weight_decay, step_epochs for `train_segmenter`.
  Returns:
    (model, per-epoch loss [epochs]).
  """
  masks = np.asarray(masks)
  if masks.max() >= len(label_names) or masks.min() < 0:
    raise ValueError(f"mask values span {masks.min()}..{masks.max()}, outside the "
                     f"{len(label_names)} labels {list(label_names)}")
  layers = (reference_feature_layers(generator.layer_names) if feature_layers is None
            else tuple(feature_layers))
  margins = stylegan_margins(generator.config, layers) if crop_margins else ()
  feats = extract_features(generator, ws, layers, resolution, batch_size, margins)
  return train_segmenter(key, feats, masks, len(label_names), size=size, epochs=epochs,
                         feature_layers=layers, label_names=label_names,
                         feature_margins=margins, **train_kwargs)


def segment_ws(generator: nnx.Module, segmenter: FewShotSegmenter, ws: np.ndarray,
               batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Generates images from ws and segments them.

  Args:
    generator: model with `synthesis(ws, return_features=True)`.
    segmenter: trained segmenter (its config names the feature layers).
    ws: [N, num_ws, w_dim].
    batch_size: images per call.
  Returns:
    (masks [N, R, R] int32, images [N, H, W, 3] uint8 from `preprocess.to_uint8`) as numpy.
  """
  from linkjax import preprocess  # the reference's uint8 conversion of generator output

  g_def, g_state = nnx.split(generator)
  s_def, s_state = nnx.split(segmenter)

  @jax.jit
  def run(g_state, s_state, w):
    images, feats = nnx.merge(g_def, g_state).synthesis(w, return_features=True)
    seg = nnx.merge(s_def, s_state)
    masks = predict_masks(seg, select_features(feats, seg.config.feature_layers))
    return masks, preprocess.to_uint8(images)

  ws = np.asarray(ws, np.float32)
  masks, images = [], []
  for a, b in _batches(ws.shape[0], batch_size):
    m, im = run(g_state, s_state, _pad_batch(ws[a:b], batch_size))
    masks.append(np.asarray(m)[:b - a])
    images.append(np.asarray(im)[:b - a])
  return np.concatenate(masks, axis=0), np.concatenate(images, axis=0)


def load_masks(path: str | pathlib.Path, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads label masks from `masks.npz` (key `masks` [N, H, W], optional `indices`) or PNGs.

  A directory of PNGs holds `<index>.png` (single channel, or palette, one label index per pixel)
  named by sample index in the samples file.

  Args:
    path: a directory (with masks.npz or PNGs) or an .npz file.
    n: number of samples; indices must be below it.
  Returns:
    (sample indices [M] int64, masks [M, H, W] int32).
  """
  path = pathlib.Path(path)
  npz = path if path.suffix == ".npz" else path / "masks.npz"
  if npz.is_file():
    with np.load(npz) as f:
      masks = np.asarray(f["masks"])
      indices = np.asarray(f["indices"]) if "indices" in f else np.arange(masks.shape[0])
  else:
    from PIL import Image  # pillow comes with matplotlib
    files = sorted(path.glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    bad = [p.name for p in files if not p.stem.isdigit()]
    if bad or not files:
      raise ValueError(f"{path}: expected <index>.png mask files, found {bad or 'none'}")
    indices = np.array([int(p.stem) for p in files])
    arrays = []
    for p in files:
      img = Image.open(p)
      if img.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"{p}: mask PNG must hold one label index per pixel, mode is {img.mode}")
      arrays.append(np.asarray(img))
    masks = np.stack(arrays)
  if n is not None and (indices.min() < 0 or indices.max() >= n):
    raise ValueError(f"mask indices {indices.tolist()} out of range for {n} samples")
  return indices.astype(np.int64), masks.astype(np.int32)


def label_colors(n_labels: int) -> np.ndarray:
  """[n_labels, 3] uint8 colours: black background, matplotlib 'tab10'/'tab20' for parts."""
  import matplotlib  # only for the colour table
  cmap = matplotlib.colormaps["tab10" if n_labels <= 11 else "tab20"]
  cols = [(0.0, 0.0, 0.0)] + [cmap(i % cmap.N)[:3] for i in range(n_labels - 1)]
  return (np.asarray(cols) * 255).round().astype(np.uint8)


def overlay_grid(images_uint8: np.ndarray, masks: np.ndarray, n_labels: int, cols: int = 8,
                 alpha: float = 0.5) -> np.ndarray:
  """Image | overlay pairs in a grid.

  Args:
    images_uint8: [N, H, W, 3] uint8.
    masks: [N, R, R] int labels; images are resized (nearest) to R.
    n_labels: number of labels (colour table size).
    cols: pairs per grid row.
    alpha: mask opacity over non-background pixels.
  Returns:
    [rows * R, cols * 2R, 3] uint8.
  """
  n, r = masks.shape[0], masks.shape[-1]
  rows_i = nearest_indices(images_uint8.shape[1], r)
  cols_i = nearest_indices(images_uint8.shape[2], r)
  images = images_uint8[:, rows_i][:, :, cols_i].astype(np.float32)
  colors = label_colors(n_labels).astype(np.float32)[np.clip(masks, 0, n_labels - 1)]
  fg = (masks > 0)[..., None]
  over = np.where(fg, (1 - alpha) * images + alpha * colors, images)
  tiles = np.concatenate([images, over], axis=2).round().astype(np.uint8)  # [N, R, 2R, 3]
  n_rows = -(-n // cols)
  grid = np.zeros((n_rows * r, min(cols, n) * 2 * r, 3), np.uint8)
  for i in range(n):
    y, x = divmod(i, cols)
    grid[y * r:(y + 1) * r, x * 2 * r:(x + 1) * 2 * r] = tiles[i]
  return grid
