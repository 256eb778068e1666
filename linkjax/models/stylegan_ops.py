"""Low-level StyleGAN3 / StyleGAN-XL ops in pure JAX: upfirdn2d, filtered leaky ReLU, modulated conv.

Layout: every image op here works on **NHWC** tensors (`[B, H, W, C]`), the layout XLA's CPU and
GPU convolutions prefer; the generator transposes to NCHW only at its API boundary. Padding
arguments keep the reference order `[x0, x1, y0, y1]` (x = width). The semantics follow the
reference's 'ref' code paths (`torch_utils/ops/upfirdn2d.py:_upfirdn2d_ref`,
`filtered_lrelu.py:_filtered_lrelu_ref`, `bias_act.py:_bias_act_ref`), which is what the
reference runs on CPU in float32.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = int | Sequence[int]


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
  """Normalises an int, `[px, py]` or `[x0, x1, y0, y1]` padding to a 4-tuple."""
  if isinstance(padding, int):
    return (padding, padding, padding, padding)
  padding = tuple(int(p) for p in padding)
  if len(padding) == 2:
    return (padding[0], padding[0], padding[1], padding[1])
  if len(padding) != 4:
    raise ValueError(f"padding must have 1, 2 or 4 entries, got {padding}")
  return padding  # type: ignore[return-value]


def _fir_valid_impl(x: jax.Array, k: jax.Array, axes: tuple[int, ...], down: int) -> jax.Array:
  sizes = [x.shape[a] for a in axes]
  n_out = [(n - t) // down + 1 for n, t in zip(sizes, k.shape)]
  k = k.astype(x.dtype)
  acc = None
  for idx in np.ndindex(*k.shape):
    sl = x
    for a, i, n in zip(axes, idx, n_out):
      sl = lax.slice_in_dim(sl, i, i + down * (n - 1) + 1, stride=down, axis=a)
    term = sl * k[idx]
    acc = term if acc is None else acc + term
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _fir_valid(x: jax.Array, k: jax.Array, axes: tuple[int, ...], down: int) -> jax.Array:
  """VALID cross-correlation of NHWC `x` with kernel `k` over `axes`, keeping every `down`-th output.

  Written as a sum of shifted (strided) slices rather than a depthwise convolution: XLA's CPU
  depthwise convolutions are ~100x slower here, and the slices fuse into one elementwise loop.
  Only the kept outputs are computed. The VJP is explicit: autodiff of the slices produces one
  padded full-size tensor per tap, which XLA's CPU backend runs ~50x slower than the forward;
  the cotangent of x is the same kind of FIR (zero-inserted cotangent, full padding, flipped
  kernel), as fast as the forward pass.
  """
  return _fir_valid_impl(x, k, axes, down)


def _fir_valid_fwd(x, k, axes, down):
  return _fir_valid_impl(x, k, axes, down), (x, k)


def _fir_valid_bwd(axes, down, res, g):
  x, k = res
  pads = [(0, 0, 0)] * x.ndim
  for a, t in zip(axes, k.shape):
    n, n_out = x.shape[a], g.shape[a]
    # Zero-insert the cotangent (stride `down`), then pad for a full convolution that yields
    # exactly n outputs: dx[m] = sum_i g_up[m - i] k[i].
    pads[a] = (t - 1, n - (n_out - 1) * down - 1, down - 1)
  gp = lax.pad(g, jnp.zeros((), g.dtype), pads)
  dx = _fir_valid_impl(gp, jnp.flip(k, axis=tuple(range(k.ndim))), axes, 1)
  # dk[idx] = sum(slice_idx(x) * g); dead code (removed by XLA) unless k's gradient is used.
  n_out = [g.shape[a] for a in axes]
  dk = []
  for idx in np.ndindex(*k.shape):
    sl = x
    for a, i, n in zip(axes, idx, n_out):
      sl = lax.slice_in_dim(sl, i, i + down * (n - 1) + 1, stride=down, axis=a)
    dk.append(jnp.sum(sl.astype(jnp.float32) * g.astype(jnp.float32)))
  dk = jnp.stack(dk).reshape(k.shape).astype(k.dtype)
  return dx.astype(x.dtype), dk


_fir_valid.defvjp(_fir_valid_fwd, _fir_valid_bwd)


def _upsample_fir_1d(x: jax.Array, k: jax.Array, axis: int, up: int, pad0: int,
                     pad1: int) -> jax.Array:
  """Zero insertion by `up`, pad (pad0, pad1), VALID correlation with `k`, along one axis.

  Polyphase form: output phase r (outputs n = up * q + r) only ever meets the taps
  k[t0_r::up] applied to the *original* samples, so each phase is a short VALID correlation of
  x and the phases are interleaved. It computes exactly what `_fir_valid` computes on the
  zero-inserted signal, without the (up - 1) / up of the multiplications that hit zeros.

  Args:
    x: array with the signal along `axis` (length N).
    k: [T] taps, T >= up (already flipped for a convolution).
    axis: the filtered axis.
    up: upsampling factor.
    pad0, pad1: padding of the zero-inserted signal (length N * up); negative crops.
  Returns:
    x filtered along `axis`, length L = N * up + pad0 + pad1 - T + 1.
  """
  n, taps = x.shape[axis], k.shape[0]
  length = n * up + pad0 + pad1 - taps + 1
  q_max = -(-length // up)
  phases = []
  for r in range(up):
    t0 = (pad0 - r) % up
    k_r = k[t0::up]
    c_r = (r + t0 - pad0) // up  # x index met by tap k_r[0] at q = 0
    pads = [(0, 0, 0)] * x.ndim
    # Shift so that x[c_r] sits at index 0 and make the VALID output exactly q_max long;
    # phases with fewer outputs get trailing values that the final crop removes.
    pads[axis] = (-c_r, q_max + k_r.shape[0] - 1 - n + c_r, 0)
    xp = lax.pad(x, jnp.zeros((), x.dtype), pads)
    phases.append(_fir_valid(xp, k_r, (axis,), 1))
  y = jnp.stack(phases, axis=axis + 1)  # [..., q_max, up, ...]
  shape = list(x.shape)
  shape[axis] = q_max * up
  y = y.reshape(shape)
  return lax.slice_in_dim(y, 0, length, axis=axis)


def upfirdn2d(x: jax.Array, f: jax.Array | None, *, up: int = 1, down: int = 1,
              padding: Padding = 0, flip_filter: bool = False, gain: float = 1.0) -> jax.Array:
  """Upsample (zero insertion), pad/crop, FIR filter, downsample, as the reference upfirdn2d.

  Args:
    x: [B, H, W, C] images.
    f: FIR filter, [taps] (separable, applied along x then y) or [fh, fw]; None = identity.
    up: integer upsampling factor (up - 1 zeros inserted after every pixel).
    down: integer downsampling factor (keeps every `down`-th pixel, starting at 0).
    padding: `[x0, x1, y0, y1]` padding of the upsampled image; negative values crop.
    flip_filter: False = convolution (filter flipped), True = correlation.
    gain: overall gain; the filter is scaled by gain ** (f.ndim / 2) as in the reference.
  Returns:
    [B, H', W', C] with H' = (H * up + y0 + y1 - fh + 1 + down - 1) // down (same for W).
  """
  px0, px1, py0, py1 = parse_padding(padding)
  if f is not None:
    f = jnp.asarray(f, jnp.float32) * jnp.float32(gain ** (np.ndim(f) / 2))
    if not flip_filter:
      f = jnp.flip(f, axis=tuple(range(f.ndim)))
    if f.ndim == 1 and up > 1 and down == 1 and f.shape[0] >= up:
      # Polyphase: the same outputs without multiplying the inserted zeros.
      x = _upsample_fir_1d(x, f, 2, up, px0, px1)  # along x (width) first, as the reference
      return _upsample_fir_1d(x, f, 1, up, py0, py1)
  # Zero insertion and pad/crop in one lax.pad: interior padding inserts up-1 zeros between
  # pixels, the extra up-1 on the high side gives the trailing zeros of the reference.
  zero = jnp.zeros((), x.dtype)
  x = lax.pad(x, zero, ((0, 0, 0), (py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1),
                        (0, 0, 0)))
  if f is None:
    # Identity filter: the reference uses ones([1, 1]) scaled by gain.
    if gain != 1:
      x = x * jnp.asarray(gain, x.dtype)
    return x[:, ::down, ::down, :]
  if f.ndim == 1:
    x = _fir_valid(x, f, (2,), down)  # along x (width) first, as the reference
    x = _fir_valid(x, f, (1,), down)  # then along y
  else:
    x = _fir_valid(x, f, (1, 2), down)
  return x


def bias_act(x: jax.Array, b: jax.Array | None = None, *, act: str = "linear",
             alpha: float = 0.2, gain: float | None = None,
             clamp: float | None = None) -> jax.Array:
  """Bias (last axis), activation ('linear' | 'lrelu'), gain and clamp, as reference bias_act.

  Args:
    x: [..., C]; b: [C] or None.
    act: 'linear' or 'lrelu' (negative slope `alpha`).
    gain: multiplier after the activation; default 1 for linear, sqrt(2) for lrelu.
    clamp: clamp to [-clamp, clamp] after the gain; None disables.
  Returns:
    Same shape as x.
  """
  if b is not None:
    x = x + b.astype(x.dtype)
  if act == "lrelu":
    gain = math.sqrt(2) if gain is None else gain
    x = jnp.where(x >= 0, x, x * jnp.asarray(alpha, x.dtype))
  elif act == "linear":
    gain = 1.0 if gain is None else gain
  else:
    raise ValueError(f"unsupported activation {act!r}")
  if gain != 1:
    x = x * jnp.asarray(gain, x.dtype)
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def filtered_lrelu(x: jax.Array, fu: jax.Array | None = None, fd: jax.Array | None = None,
                   b: jax.Array | None = None, *, up: int = 1, down: int = 1,
                   padding: Padding = 0, gain: float = math.sqrt(2), slope: float = 0.2,
                   clamp: float | None = None, flip_filter: bool = False) -> jax.Array:
  """Bias, upsample with `fu` (gain up**2), leaky ReLU * gain, clamp, downsample with `fd`.

  Args:
    x: [B, H, W, C]; fu, fd: filters ([taps], [fh, fw] or None); b: [C] or None.
    up, down: integer factors; padding: `[x0, x1, y0, y1]` w.r.t. the upsampled image.
    gain, slope, clamp: leaky ReLU gain, negative slope and clamp (None disables clamping).
  Returns:
    [B, H', W', C] as the reference `_filtered_lrelu_ref`.
  """
  x = bias_act(x, b)
  x = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2, flip_filter=flip_filter)
  x = bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
  return upfirdn2d(x, fd, down=down, flip_filter=flip_filter)


def normalize_2nd_moment(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """x * rsqrt(mean(x**2) + eps) along `axis` (the mapping network's input normalisation)."""
  return x * lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + jnp.asarray(eps, x.dtype))


def fully_connected(x: jax.Array, weight: jax.Array, bias: jax.Array | None, *,
                    lr_multiplier: float = 1.0, activation: str = "linear",
                    precision: lax.Precision | None = lax.Precision.HIGHEST) -> jax.Array:
  """StyleGAN FullyConnectedLayer: equalised learning rate, then bias + activation.

  Args:
    x: [B, in]; weight: [out, in] (torch layout); bias: [out] or None.
    lr_multiplier: weights are scaled by lr_multiplier / sqrt(in), biases by lr_multiplier.
    activation: 'linear' or 'lrelu' (slope 0.2, gain sqrt(2)).
  Returns:
    [B, out].
  """
  w = weight.astype(x.dtype) * jnp.asarray(lr_multiplier / math.sqrt(weight.shape[1]), x.dtype)
  y = jnp.einsum("bi,oi->bo", x, w, precision=precision)
  b = None if bias is None else bias.astype(x.dtype) * jnp.asarray(lr_multiplier, x.dtype)
  return bias_act(y, b, act=activation)


def modulated_conv2d(x: jax.Array, weight: jax.Array, styles: jax.Array, *,
                     demodulate: bool = True, padding: int = 0,
                     input_gain: jax.Array | None = None,
                     precision: lax.Precision | None = lax.Precision.HIGHEST) -> jax.Array:
  """StyleGAN3 modulated convolution, executed as modulate-input / shared conv / scale-output.

  The reference folds styles into per-sample weights and runs a grouped convolution; scaling
  the input channels by the styles and the output channels by the demodulation coefficients is
  the same linear map and lets XLA run one ordinary batched convolution. One deliberate
  difference: the reference pre-normalises the styles by the RMS over the *whole batch*, a
  factor that demodulation cancels except against its 1e-8 epsilon; here the RMS is taken per
  sample so a sample's output does not depend on its batch (differences ~1e-12 relative).

  Args:
    x: [B, H, W, I] NHWC input.
    weight: [O, I, kh, kw] (torch OIHW layout).
    styles: [B, I].
    demodulate: normalise each output channel's modulated weight to unit norm.
    padding: symmetric zero padding of the convolution.
    input_gain: scalar or [I] or [B, I] multiplier of the input channels (after demodulation).
  Returns:
    [B, H + 2 * padding - kh + 1, W + 2 * padding - kw + 1, O].
  """
  dtype = x.dtype
  w = weight.astype(jnp.float32)
  s = styles.astype(jnp.float32)
  if demodulate:
    w = w * lax.rsqrt(jnp.mean(jnp.square(w), axis=(1, 2, 3), keepdims=True))
    s = s * lax.rsqrt(jnp.mean(jnp.square(s), axis=1, keepdims=True))
  scale_in = s  # [B, I]
  if demodulate:
    # dcoefs[b, o] = rsqrt(sum_{i,k} (w[o, i, k] * s[b, i])**2 + 1e-8)
    wsq = jnp.sum(jnp.square(w), axis=(2, 3))  # [O, I]
    dcoefs = lax.rsqrt(jnp.einsum("bi,oi->bo", jnp.square(s), wsq, precision=precision)
                       + jnp.float32(1e-8))
  if input_gain is not None:
    scale_in = scale_in * jnp.asarray(input_gain, jnp.float32)
  x = x * scale_in.astype(dtype)[:, None, None, :]
  kernel = jnp.transpose(w, (2, 3, 1, 0)).astype(dtype)  # OIHW -> HWIO
  y = _conv2d(x, kernel, padding, precision)
  if demodulate:
    y = y * dcoefs.astype(dtype)[:, None, None, :]
  return y


def _conv2d_impl(x: jax.Array, kernel: jax.Array, padding: int,
                 precision: lax.Precision | None) -> jax.Array:
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x: jax.Array, kernel: jax.Array, padding: int,
            precision: lax.Precision | None) -> jax.Array:
  """Stride-1 NHWC x HWIO convolution with symmetric zero padding and an explicit VJP.

  XLA's CPU backend computes the kernel gradient of a convolution ~10x slower than the forward
  pass; here it is kh * kw matrix products over shifted windows, and the input gradient is an
  ordinary forward convolution with the flipped, transposed kernel.
  """
  return _conv2d_impl(x, kernel, padding, precision)


def _conv2d_fwd(x, kernel, padding, precision):
  return _conv2d_impl(x, kernel, padding, precision), (x, kernel)


def _conv2d_bwd(padding, precision, res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1], x.shape[2]
  k_t = jnp.transpose(jnp.flip(kernel, axis=(0, 1)), (0, 1, 3, 2))
  dxp = lax.conv_general_dilated(
      g, k_t, window_strides=(1, 1), padding=((kh - 1, kh - 1), (kw - 1, kw - 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
  dx = dxp[:, padding:padding + h, padding:padding + w, :]
  dk = _conv2d_kernel_grad(jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))),
                           g, kh, kw, precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


def _conv2d_kernel_grad(xp: jax.Array, g: jax.Array, kh: int, kw: int,
                        precision: lax.Precision | None) -> jax.Array:
  """dk[i, j] = sum_{b,h,w} xp[b, h + i, w + j, :]^T g[b, h, w, :] -> [kh, kw, I, O].

  Rows are flattened with the padded width Wp and g is zero-padded to that width, so every
  tap's window is one contiguous run of the flattened rows (offset i * Wp + j) instead of a 2-D
  strided slice; XLA's CPU backend runs the resulting matrix products ~2x faster.
  """
  b, hp, wp, c = xp.shape
  oh, ow, o = g.shape[1], g.shape[2], g.shape[3]
  xf = jnp.pad(xp.reshape(b, hp * wp, c), ((0, 0), (0, kw - 1), (0, 0)))
  gf = jnp.pad(g, ((0, 0), (0, 0), (0, wp - ow), (0, 0))).reshape(b * oh * wp, o)
  taps = []
  for i in range(kh):
    for j in range(kw):
      off = i * wp + j
      a = lax.slice_in_dim(xf, off, off + oh * wp, axis=1).reshape(b * oh * wp, c)
      taps.append(lax.dot_general(a, gf, (((0,), (0,)), ((), ())), precision=precision))
  return jnp.stack(taps).reshape(kh, kw, c, o)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
