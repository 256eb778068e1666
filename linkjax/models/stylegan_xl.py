"""StyleGAN-XL generator (Sauer et al. 2022) in Flax NNX: class-conditional mapping + StyleGAN3-T synthesis.

Mirrors `training/networks_stylegan3_resetting.py` of the reference (SuperresGenerator: a 16x16
StyleGAN3 stem whose critically sampled layers were cut off, followed by x2 super-resolution
heads). Module and parameter names follow the PyTorch ones (`mapping.fc0.weight`,
`synthesis.L0_36_1024.affine.bias`, ...) and weights stay in torch layout (OIHW, [out, in]) so
that the converter's key table is the identity.

Every layer's geometry (sizes, channels, up/down factors, filter lengths, padding, ws row) lives
in the frozen `StyleGANXLConfig`; values that the reference stores as tensors (up/down filters,
Fourier `freqs`/`phases`/`transform`, `w_avg`, `magnitude_ema`) are NNX state, so checkpoints
carry them. A converted model uses the pickle's stored values; `superres_config` /
`imagenet_config` / `tiny_config` recompute the geometry the way the reference constructors do
(for random-weight models).

Layouts: the public API is NCHW (`synthesis` returns [B, 3, H, W], features are NCHW); the
computation inside is NHWC (see `stylegan_ops`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
import scipy.special
from flax import nnx
from jax import lax

from linkjax.models import stylegan_ops as ops


class Buffer(nnx.Variable):
  """Non-trainable state the reference keeps as registered buffers (filters, w_avg, ...)."""


# --------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputSpec:
  """Geometry of the Fourier-feature input layer (`SynthesisInput`)."""
  channels: int
  size: tuple[int, int]  # (width, height)
  sampling_rate: float
  bandwidth: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerSpec:
  """Geometry of one `SynthesisLayer`, as stored in (or computed like) the reference."""
  name: str
  w_idx: int  # row of ws fed to this layer
  is_torgb: bool
  is_critically_sampled: bool
  use_fp16: bool  # recorded only: the reference's CPU / force_fp32 path is float32
  in_channels: int
  out_channels: int
  in_size: tuple[int, int]  # (width, height)
  out_size: tuple[int, int]
  in_sampling_rate: float
  out_sampling_rate: float
  tmp_sampling_rate: float
  in_cutoff: float
  out_cutoff: float
  in_half_width: float
  out_half_width: float
  conv_kernel: int
  conv_clamp: float | None
  up_factor: int
  down_factor: int
  up_taps: int  # 1 = identity filter (no up_filter state)
  down_taps: int
  down_radial: bool  # 2-D jinc down filter of shape [taps, taps]
  padding: tuple[int, int, int, int]  # [x0, x1, y0, y1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StyleGANXLConfig:
  """Hyper-parameters and per-layer geometry of a StyleGAN-XL generator."""
  z_dim: int = 64
  w_dim: int = 512
  c_dim: int = 1000
  embed_dim: int = 320  # width of the class-embedding table
  num_ws: int = 32
  img_resolution: int = 256
  img_channels: int = 3
  mapping_layers: int = 2
  mapping_lr_multiplier: float = 0.01
  output_scale: float = 0.25
  input: InputSpec
  layers: tuple[LayerSpec, ...]
  dtype: str = "float32"  # synthesis compute dtype: 'float32' (default) or 'bfloat16' (opt-in)

  def __post_init__(self):
    if len(self.layers) + 1 != self.num_ws:
      raise ValueError(f"num_ws={self.num_ws} but {len(self.layers)} layers (+ input)")
    if self.c_dim <= 0:
      raise ValueError("only class-conditional generators (c_dim > 0) are supported")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ("input",) + tuple(l.name for l in self.layers)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "StyleGANXLConfig":
    def tup(v):
      return tuple(tup(x) for x in v) if isinstance(v, (list, tuple)) else v
    d = dict(d)
    inp = InputSpec(**{k: tup(v) for k, v in d.pop("input").items()})
    layers = tuple(LayerSpec(**{k: tup(v) for k, v in l.items()}) for l in d.pop("layers"))
    return cls(input=inp, layers=layers, **{k: tup(v) for k, v in d.items()})

  def replace(self, **kw: Any) -> "StyleGANXLConfig":
    return dataclasses.replace(self, **kw)


# --- geometry as the reference constructors compute it ---------------------------------------


def _layer_spec(*, name: str, w_idx: int, is_torgb: bool, is_critically_sampled: bool,
                use_fp16: bool, in_channels: int, out_channels: int, in_size: int, out_size: int,
                in_sampling_rate: float, out_sampling_rate: float, in_cutoff: float,
                out_cutoff: float, in_half_width: float, out_half_width: float,
                conv_kernel: int = 3, filter_size: int = 6, lrelu_upsampling: int = 2,
                use_radial_filters: bool = False, conv_clamp: float | None = 256) -> LayerSpec:
  """`SynthesisLayer.__init__` + `init_upfirdn` geometry."""
  conv_kernel = 1 if is_torgb else conv_kernel
  tmp = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
  up = int(np.rint(tmp / in_sampling_rate))
  down = int(np.rint(tmp / out_sampling_rate))
  up_taps = filter_size * up if up > 1 and not is_torgb else 1
  down_taps = filter_size * down if down > 1 and not is_torgb else 1
  pad_total = (out_size - 1) * down + 1
  pad_total -= (in_size + conv_kernel - 1) * up
  pad_total += up_taps + down_taps - 2
  pad_lo = (pad_total + up) // 2
  pad_hi = pad_total - pad_lo
  return LayerSpec(
      name=name, w_idx=w_idx, is_torgb=is_torgb, is_critically_sampled=is_critically_sampled,
      use_fp16=bool(use_fp16), in_channels=int(in_channels), out_channels=int(out_channels),
      in_size=(int(in_size),) * 2, out_size=(int(out_size),) * 2,
      in_sampling_rate=float(in_sampling_rate), out_sampling_rate=float(out_sampling_rate),
      tmp_sampling_rate=float(tmp), in_cutoff=float(in_cutoff), out_cutoff=float(out_cutoff),
      in_half_width=float(in_half_width), out_half_width=float(out_half_width),
      conv_kernel=conv_kernel, conv_clamp=None if conv_clamp is None else float(conv_clamp), up_factor=up, down_factor=down,
      up_taps=up_taps, down_taps=down_taps,
      down_radial=bool(use_radial_filters and not is_critically_sampled),
      padding=(int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi)))


def _stage_layers(*, first_idx: int, w_offset: int, img_resolution: int, cutoffs, half_widths,
                  sampling_rates, sizes, channels, num_critical: int, num_fp16_res: int,
                  conv_kernel: int, use_radial_filters: bool) -> list[LayerSpec]:
  layers = []
  n = len(cutoffs) - 1
  for idx in range(n + 1):
    prev = max(idx - 1, 0)
    is_torgb = idx == n
    out_size = int(sizes[idx])
    out_channels = int(channels[idx])
    layers.append(_layer_spec(
        name=f"L{idx + first_idx}_{out_size}_{out_channels}", w_idx=w_offset + len(layers),
        is_torgb=is_torgb, is_critically_sampled=idx >= n - num_critical,
        use_fp16=bool(sampling_rates[idx] * 2 ** num_fp16_res > img_resolution),
        in_channels=int(channels[prev]), out_channels=out_channels, in_size=int(sizes[prev]),
        out_size=out_size, in_sampling_rate=int(sampling_rates[prev]),
        out_sampling_rate=int(sampling_rates[idx]), in_cutoff=cutoffs[prev],
        out_cutoff=cutoffs[idx], in_half_width=half_widths[prev],
        out_half_width=half_widths[idx], conv_kernel=conv_kernel,
        use_radial_filters=use_radial_filters))
  return layers


def superres_config(*, resolution: int, stem_resolution: int = 16, z_dim: int = 64,
                    w_dim: int = 512, c_dim: int = 1000, embed_dim: int = 320,
                    channel_base: int = 65536, channel_max: int = 1024, stem_layers: int = 10,
                    head_layers: int = 7, num_critical: int = 2, first_cutoff: float = 2,
                    first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3,
                    margin_size: int = 10, num_fp16_res: int = 4, conv_kernel: int = 3,
                    use_radial_filters: bool = False, output_scale: float = 0.25,
                    dtype: str = "float32") -> StyleGANXLConfig:
  """Geometry of a StyleGAN-XL generator grown from a stem by x2 SuperresGenerator stages.

  Reproduces `SynthesisNetwork.get_layer_specs` for the stem, the removal of critically sampled
  layers per stage, and `SuperresGenerator.compute_superres_filterparams` for each head.

  Args:
    resolution: output resolution (stem_resolution * 2**k).
    stem_resolution: resolution of the StyleGAN3 stem (16 for the ImageNet models).
    stem_layers: `num_layers` of the stem's SynthesisNetwork (num_ws = stem_layers + 2).
    head_layers: layers per x2 head (plus its ToRGB); each stage adds head_layers + 1 - 3 ws.
    Other args: reference hyper-parameters with their StyleGAN3-T / StyleGAN-XL defaults.
  Returns:
    A StyleGANXLConfig.
  """
  if resolution < stem_resolution or resolution % stem_resolution or \
     (resolution // stem_resolution) & (resolution // stem_resolution - 1):
    raise ValueError(f"resolution {resolution} must be stem_resolution * 2**k")
  # Stem: SynthesisNetwork.get_layer_specs.
  last_cutoff = stem_resolution / 2
  last_stopband = last_cutoff * last_stopband_rel
  exponents = np.minimum(np.arange(stem_layers + 1) / (stem_layers - num_critical), 1)
  cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
  stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
  sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, stem_resolution))))
  half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
  sizes = sampling_rates + margin_size * 2
  sizes[-2:] = stem_resolution
  channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
  channels[-1] = 3
  inp = InputSpec(channels=int(channels[0]), size=(int(sizes[0]),) * 2,
                  sampling_rate=float(sampling_rates[0]), bandwidth=float(cutoffs[0]))
  res = stem_resolution
  layers = _stage_layers(first_idx=0, w_offset=1, img_resolution=res, cutoffs=cutoffs,
                         half_widths=half_widths, sampling_rates=sampling_rates, sizes=sizes,
                         channels=channels, num_critical=num_critical,
                         num_fp16_res=num_fp16_res, conv_kernel=conv_kernel,
                         use_radial_filters=use_radial_filters)
  while res < resolution:
    res *= 2
    while layers and layers[-1].is_critically_sampled:
      layers.pop()
    stem_len = len(layers) + 1
    last = layers[-1]
    first_cutoff_h = last.out_cutoff
    first_stopband_h = last.out_half_width + first_cutoff_h
    last_cutoff = res / 2
    last_stopband = last_cutoff * last_stopband_rel
    # compute_superres_filterparams uses its own num_critical=2 default for the exponents.
    exponents = np.minimum(np.arange(head_layers + 1) / (head_layers - 2), 1)
    cutoffs = first_cutoff_h * (last_cutoff / first_cutoff_h) ** exponents
    stopbands = first_stopband_h * (last_stopband / first_stopband_h) ** exponents
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
    sampling_rates[0] = last.out_sampling_rate
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin_size * 2
    sizes[-2:] = res
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[0] = last.out_channels
    channels[-1] = 3
    layers += _stage_layers(first_idx=stem_len, w_offset=len(layers) + 1, img_resolution=res,
                            cutoffs=cutoffs, half_widths=half_widths,
                            sampling_rates=sampling_rates, sizes=sizes, channels=channels,
                            num_critical=num_critical, num_fp16_res=num_fp16_res,
                            conv_kernel=conv_kernel, use_radial_filters=use_radial_filters)
  return StyleGANXLConfig(z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, embed_dim=embed_dim,
                          num_ws=len(layers) + 1, img_resolution=resolution,
                          output_scale=output_scale, input=inp, layers=tuple(layers),
                          dtype=dtype)


def imagenet_config(resolution: int = 256, **kw: Any) -> StyleGANXLConfig:
  """ImageNet StyleGAN-XL geometry (z 64, w 512, 1000 classes, channel_base 65536, max 1024)."""
  return superres_config(resolution=resolution, **kw)


def tiny_config(resolution: int = 32, **kw: Any) -> StyleGANXLConfig:
  """The fixture's tiny geometry: z 16, w 32, embed 24, channel_base 512, max 16, 6+4 layers."""
  args = dict(z_dim=16, w_dim=32, c_dim=1000, embed_dim=24, channel_base=512, channel_max=16,
              stem_layers=6, head_layers=4)
  args.update(kw)
  return superres_config(resolution=resolution, **args)


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> np.ndarray | None:
  """Kaiser low-pass filter as `SynthesisLayer.design_lowpass_filter` (None for 1 tap)."""
  if numtaps == 1:
    return None
  if not radial:
    return scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs).astype(np.float32)
  x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
  r = np.hypot(*np.meshgrid(x, x))
  f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
  beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
  w = np.kaiser(numtaps, beta)
  f *= np.outer(w, w)
  f /= np.sum(f)
  return f.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Modules


def _precision(dtype: jnp.dtype) -> lax.Precision:
  # float32 parity needs full-precision matmuls/convs (TF32 on GPU would break 1e-4).
  return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


class FullyConnectedLayer(nnx.Module):
  """Equalised-learning-rate linear layer (torch layout weight [out, in])."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               activation: str = "linear", lr_multiplier: float = 1.0,
               weight_init: float = 1.0, bias_init: Any = 0.0):
    self.activation = activation
    self.lr_multiplier = lr_multiplier
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (out_features, in_features),
                                              jnp.float32) * (weight_init / lr_multiplier))
    b = np.broadcast_to(np.asarray(bias_init, np.float32), (out_features,)) / lr_multiplier
    self.bias = nnx.Param(jnp.asarray(b, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return ops.fully_connected(x, self.weight[...], self.bias[...],
                               lr_multiplier=self.lr_multiplier, activation=self.activation)


class Embedding(nnx.Module):
  """Class-embedding table (a plain `torch.nn.Embedding` in the reference)."""

  def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (num, dim), jnp.float32))

  def __call__(self, idx: jax.Array) -> jax.Array:
    return jnp.take(self.weight[...], idx, axis=0)


class MappingNetwork(nnx.Module):
  """z, class -> ws with per-class truncation."""

  def __init__(self, config: StyleGANXLConfig, *, rngs: nnx.Rngs):
    c = config
    self.num_ws = c.num_ws
    self.num_layers = c.mapping_layers
    self.embed = Embedding(c.c_dim, c.embed_dim, rngs=rngs)
    self.embed_proj = FullyConnectedLayer(c.embed_dim, c.z_dim, activation="lrelu", rngs=rngs)
    features = [c.z_dim * 2] + [c.w_dim] * c.mapping_layers
    for i in range(c.mapping_layers):
      setattr(self, f"fc{i}", FullyConnectedLayer(
          features[i], features[i + 1], activation="lrelu",
          lr_multiplier=c.mapping_lr_multiplier, rngs=rngs))
    self.w_avg = Buffer(jnp.zeros((c.c_dim, c.w_dim), jnp.float32))

  def __call__(self, z: jax.Array, class_idx: jax.Array, psi: float | jax.Array = 1.0,
               cutoff: int | None = None) -> jax.Array:
    """Maps latents and classes to ws.

    Args:
      z: [B, z_dim] latents.
      class_idx: [B] int class indices (the reference takes one-hot c and uses its argmax).
      psi: truncation towards w_avg[class]; a Python 1.0 skips truncation as the reference
        does, any other value (or a traced scalar) applies `avg + psi * (w - avg)`.
      cutoff: static int; truncate only ws rows [0, cutoff) (default: all rows).
    Returns:
      ws [B, num_ws, w_dim] float32 (all rows equal when psi == 1).
    """
    class_idx = jnp.asarray(class_idx, jnp.int32)
    x = ops.normalize_2nd_moment(jnp.asarray(z, jnp.float32))
    y = ops.normalize_2nd_moment(self.embed_proj(self.embed(class_idx)))
    x = jnp.concatenate([x, y], axis=1)
    for i in range(self.num_layers):
      x = getattr(self, f"fc{i}")(x)
    ws = broadcast_w(x, self.num_ws)
    if isinstance(psi, (int, float)) and psi == 1:
      return ws  # the reference skips truncation for psi == 1
    cutoff = self.num_ws if cutoff is None else int(cutoff)
    avg = jnp.take(self.w_avg[...], class_idx, axis=0)[:, None, :]  # [B, 1, w_dim]
    psi = jnp.asarray(psi, jnp.float32)
    trunc = avg + psi * (ws - avg)  # torch lerp(avg, ws, psi)
    rows = (jnp.arange(self.num_ws) < cutoff)[None, :, None]
    return jnp.where(rows, trunc, ws)


class SynthesisInput(nnx.Module):
  """Fourier features with a learned rotation/translation and a channel-mixing matrix."""

  def __init__(self, w_dim: int, spec: InputSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    c = spec.channels
    freqs = jax.random.normal(rngs.params(), (c, 2), jnp.float32)
    radii = jnp.sqrt(jnp.sum(jnp.square(freqs), axis=1, keepdims=True))
    freqs = freqs / (radii * jnp.exp(jnp.square(radii)) ** 0.25) * jnp.float32(spec.bandwidth)
    self.weight = nnx.Param(jax.random.normal(rngs.params(), (c, c), jnp.float32))
    self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0.0, bias_init=[1, 0, 0, 0],
                                      rngs=rngs)
    self.transform = Buffer(jnp.eye(3, dtype=jnp.float32))
    self.freqs = Buffer(freqs)
    self.phases = Buffer(jax.random.uniform(rngs.params(), (c,), jnp.float32) - 0.5)

  def __call__(self, w: jax.Array) -> jax.Array:
    """w: [B, w_dim] -> [B, H, W, C] NHWC features."""
    s = self.spec
    hi = lax.Precision.HIGHEST
    t = self.affine(w)  # (r_c, r_s, t_x, t_y)
    t = t / jnp.linalg.norm(t[:, :2], axis=1, keepdims=True)
    b = w.shape[0]
    one, zero = jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)
    m_r = jnp.stack([jnp.stack([t[:, 0], -t[:, 1], zero], -1),
                     jnp.stack([t[:, 1], t[:, 0], zero], -1),
                     jnp.stack([zero, zero, one], -1)], axis=1)
    m_t = jnp.stack([jnp.stack([one, zero, -t[:, 2]], -1),
                     jnp.stack([zero, one, -t[:, 3]], -1),
                     jnp.stack([zero, zero, one], -1)], axis=1)
    transforms = jnp.matmul(jnp.matmul(m_r, m_t, precision=hi), self.transform[...][None],
                            precision=hi)
    freqs0 = self.freqs[...]
    phases = self.phases[...][None] + jnp.einsum("cx,bx->bc", freqs0, transforms[:, :2, 2],
                                                 precision=hi)
    freqs = jnp.einsum("cx,bxy->bcy", freqs0, transforms[:, :2, :2], precision=hi)
    amplitudes = jnp.clip(1 - (jnp.linalg.norm(freqs, axis=2) - s.bandwidth)
                          / (s.sampling_rate / 2 - s.bandwidth), 0, 1)
    # affine_grid(align_corners=False) with theta = diag(0.5 * size / sampling_rate).
    width, height = s.size
    gx = (2 * np.arange(width) + 1) / width - 1
    gy = (2 * np.arange(height) + 1) / height - 1
    gx = jnp.asarray(gx * (0.5 * width / s.sampling_rate), jnp.float32)
    gy = jnp.asarray(gy * (0.5 * height / s.sampling_rate), jnp.float32)
    x = (gx[None, None, :, None] * freqs[:, None, None, :, 0]
         + gy[None, :, None, None] * freqs[:, None, None, :, 1])  # [B, H, W, C]
    x = x + phases[:, None, None, :]
    x = jnp.sin(x * jnp.float32(np.pi * 2))
    x = x * amplitudes[:, None, None, :]
    weight = self.weight[...] / jnp.float32(np.sqrt(s.channels))
    return jnp.einsum("bhwi,oi->bhwo", x, weight, precision=hi)


class SynthesisLayer(nnx.Module):
  """Modulated conv + bias + filtered leaky ReLU (alias-free up/down sampling)."""

  def __init__(self, w_dim: int, spec: LayerSpec, *, rngs: nnx.Rngs,
               dtype: str = "float32"):
    self.spec = spec
    self.dtype = dtype
    self.affine = FullyConnectedLayer(w_dim, spec.in_channels, bias_init=1.0, rngs=rngs)
    k = spec.conv_kernel
    self.weight = nnx.Param(jax.random.normal(
        rngs.params(), (spec.out_channels, spec.in_channels, k, k), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((spec.out_channels,), jnp.float32))
    self.magnitude_ema = Buffer(jnp.ones((), jnp.float32))
    if spec.up_taps > 1:
      self.up_filter = Buffer(jnp.asarray(design_lowpass_filter(
          spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, spec.tmp_sampling_rate)))
    if spec.down_taps > 1:
      self.down_filter = Buffer(jnp.asarray(design_lowpass_filter(
          spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.tmp_sampling_rate,
          radial=spec.down_radial)))

  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """x: [B, H, W, in] NHWC, w: [B, w_dim] -> [B, H', W', out] NHWC."""
    s = self.spec
    dtype = jnp.dtype(self.dtype)
    prec = _precision(dtype)
    styles = self.affine(w)
    if s.is_torgb:
      styles = styles * jnp.float32(1 / np.sqrt(s.in_channels * s.conv_kernel ** 2))
    input_gain = lax.rsqrt(self.magnitude_ema[...])
    x = ops.modulated_conv2d(x.astype(dtype), self.weight[...], styles,
                             demodulate=not s.is_torgb, padding=s.conv_kernel - 1,
                             input_gain=input_gain, precision=prec)
    fu = self.up_filter[...] if s.up_taps > 1 else None
    fd = self.down_filter[...] if s.down_taps > 1 else None
    x = ops.filtered_lrelu(x, fu, fd, self.bias[...], up=s.up_factor, down=s.down_factor,
                           padding=s.padding, gain=1.0 if s.is_torgb else math.sqrt(2),
                           slope=1.0 if s.is_torgb else 0.2, clamp=s.conv_clamp)
    return x


class SynthesisNetwork(nnx.Module):
  """Fourier input followed by the synthesis layers; child names follow the reference."""

  def __init__(self, config: StyleGANXLConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.input = SynthesisInput(config.w_dim, config.input, rngs=rngs)
    for spec in config.layers:
      setattr(self, spec.name, SynthesisLayer(config.w_dim, spec, rngs=rngs, dtype=config.dtype))

  def __call__(self, ws: jax.Array, return_features: bool = False):
    """Synthesises images from ws.

    Args:
      ws: [B, num_ws, w_dim]; row 0 drives the Fourier input, row `spec.w_idx` each layer.
      return_features: also return every child's output.
    Returns:
      images [B, img_channels, H, W] float32, roughly in [-1, 1] (NCHW); with
      return_features, `(images, {name: [B, C, h, w] float32 NCHW})` for the names in
      `config.layer_names` (a dict: iterate `layer_names` for the forward order, since jit
      returns dicts with sorted keys). Features are the raw layer outputs (margins not cropped;
      the last one is ToRGB before `output_scale`).
    """
    c = self.config
    ws = jnp.asarray(ws, jnp.float32)
    x = self.input(ws[:, 0])
    feats = {"input": x} if return_features else None
    for spec in c.layers:
      x = getattr(self, spec.name)(x, ws[:, spec.w_idx])
      if return_features:
        feats[spec.name] = x
    img = x.astype(jnp.float32)
    if c.output_scale != 1:
      img = img * jnp.float32(c.output_scale)
    img = jnp.transpose(img, (0, 3, 1, 2))
    if not return_features:
      return img
    return img, {k: jnp.transpose(v.astype(jnp.float32), (0, 3, 1, 2)) for k, v in feats.items()}


def broadcast_w(w: jax.Array, num_ws: int) -> jax.Array:
  """Tiles one w per sample to every synthesis row.

  Args:
    w: [B, w_dim].
    num_ws: number of ws rows.
  Returns:
    [B, num_ws, w_dim].
  """
  return jnp.broadcast_to(w[:, None, :], (w.shape[0], num_ws, w.shape[1]))


class StyleGANXL(nnx.Module):
  """StyleGAN-XL generator: `mapping` (z, class -> ws) and `synthesis` (ws -> NCHW image)."""

  def __init__(self, config: StyleGANXLConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.mapping = MappingNetwork(config, rngs=rngs)
    self.synthesis = SynthesisNetwork(config, rngs=rngs)

  @property
  def layer_names(self) -> tuple[str, ...]:
    """Feature names in forward order: 'input', then the synthesis layers ('L0_36_1024', ...)."""
    return self.config.layer_names

  def __call__(self, z: jax.Array, class_idx: jax.Array, psi: float | jax.Array = 1.0,
               cutoff: int | None = None) -> jax.Array:
    """z: [B, z_dim], class_idx: [B] -> images [B, 3, H, W]."""
    return self.synthesis(self.mapping(z, class_idx, psi=psi, cutoff=cutoff))
