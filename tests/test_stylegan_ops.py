"""StyleGAN ops against independent numpy/scipy implementations (NCHW numpy vs NHWC JAX)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from linkjax.models import stylegan_ops as ops


def np_upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), flip_filter=False, gain=1.0):
  """x: [B, C, H, W]; explicit zero insertion, pad/crop, scipy convolve2d, decimation."""
  px0, px1, py0, py1 = padding
  b, c, h, w = x.shape
  u = np.zeros((b, c, h * up, w * up), np.float64)
  u[:, :, ::up, ::up] = x
  u = np.pad(u, ((0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
  u = u[:, :, max(-py0, 0): u.shape[2] - max(-py1, 0), max(-px0, 0): u.shape[3] - max(-px1, 0)]
  if f is None:
    f2 = np.ones((1, 1))
    f2 = f2 * gain
  else:
    f = np.asarray(f, np.float64)
    f2 = (np.outer(f, f) if f.ndim == 1 else f) * gain
  op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
  out = np.stack([np.stack([op(u[i, j], f2, mode="valid") for j in range(c)]) for i in range(b)])
  return out[:, :, ::down, ::down]


def to_nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)), jnp.float32)


def to_nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.mark.parametrize("up,down,padding,taps,ndim,flip,gain", [
    (1, 1, (0, 0, 0, 0), 4, 1, False, 1.0),
    (2, 1, (9, 8, 9, 8), 12, 1, False, 4.0),
    (4, 2, (-6, -9, -6, -9), 24, 1, False, 16.0),
    (1, 2, (1, 2, 3, 0), 5, 1, True, 1.0),
    (2, 2, (-3, 1, 2, -2), 6, 2, False, 3.0),
    (3, 1, (2, 2, 1, 1), None, 0, False, 2.0),
])
def test_upfirdn2d_matches_numpy(up, down, padding, taps, ndim, flip, gain):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 12, 13)).astype(np.float32)
  f = None if taps is None else rng.standard_normal((taps,) * ndim).astype(np.float32)
  ref = np_upfirdn2d(x, f, up, down, padding, flip, gain)
  got = to_nchw(ops.upfirdn2d(to_nhwc(x), None if f is None else jnp.asarray(f), up=up,
                              down=down, padding=padding, flip_filter=flip, gain=gain))
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_filtered_lrelu_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 4, 10, 10)).astype(np.float32) * 400
  b = rng.standard_normal(4).astype(np.float32)
  fu = scipy.signal.firwin(12, 2.0, width=4.0, fs=16).astype(np.float32)
  fd = scipy.signal.firwin(12, 3.0, width=4.0, fs=16).astype(np.float32)
  y = np_upfirdn2d(x + b[None, :, None, None], fu, up=2, padding=(9, 8, 9, 8), gain=4.0)
  y = np.where(y >= 0, y, 0.2 * y) * math.sqrt(2)
  assert np.abs(y).max() > 300  # the clamp is exercised
  y = np.clip(y, -256, 256)
  ref = np_upfirdn2d(y, fd, down=2)
  got = to_nchw(ops.filtered_lrelu(to_nhwc(x), jnp.asarray(fu), jnp.asarray(fd), jnp.asarray(b),
                                   up=2, down=2, padding=(9, 8, 9, 8), clamp=256))
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("demodulate,k", [(True, 3), (False, 1)])
def test_modulated_conv2d_matches_grouped_reference(demodulate, k):
  """Against a numpy transcription of the reference (per-sample weights, grouped conv)."""
  rng = np.random.default_rng(2)
  bsz, cin, cout, h = 3, 5, 4, 7
  x = rng.standard_normal((bsz, cin, h, h))
  w = rng.standard_normal((cout, cin, k, k))
  s = rng.standard_normal((bsz, cin)) + 1.0
  gain = 0.7
  ww, ss = w, s
  if demodulate:
    ww = w / np.sqrt(np.mean(w ** 2, axis=(1, 2, 3), keepdims=True))
    ss = s / np.sqrt(np.mean(s ** 2))  # the reference's batch-global RMS
  wm = ww[None] * ss[:, None, :, None, None]
  if demodulate:
    wm = wm / np.sqrt(np.sum(wm ** 2, axis=(2, 3, 4), keepdims=True) + 1e-8)
  wm = wm * gain
  pad = k - 1
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  ref = np.zeros((bsz, cout, h + pad, h + pad))
  for i in range(bsz):
    for o in range(cout):
      for c in range(cin):
        ref[i, o] += scipy.signal.correlate2d(xp[i, c], wm[i, o, c], mode="valid")
  got = to_nchw(ops.modulated_conv2d(to_nhwc(x.astype(np.float32)), jnp.asarray(w, jnp.float32),
                                     jnp.asarray(s, jnp.float32), demodulate=demodulate,
                                     padding=pad, input_gain=jnp.float32(gain)))
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_fully_connected_and_normalize():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 6)).astype(np.float32)
  w = rng.standard_normal((5, 6)).astype(np.float32)
  b = rng.standard_normal(5).astype(np.float32)
  h = x @ (w * 0.01 / np.sqrt(6)).T + b * 0.01
  ref = np.where(h >= 0, h, 0.2 * h) * np.sqrt(2)
  got = ops.fully_connected(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), lr_multiplier=0.01,
                            activation="lrelu")
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
  n = ops.normalize_2nd_moment(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(n), x / np.sqrt(np.mean(x ** 2, 1, keepdims=True) + 1e-8),
                             rtol=1e-5)


@pytest.mark.parametrize("up,padding,taps", [
    (2, (9, 8, 9, 8), 12), (4, (10, 7, 10, 7), 24), (2, (-3, 5, 0, -2), 6), (3, (1, 0, 4, 2), 7),
    (2, (0, 0, 0, 0), 2),
])
def test_upsampling_vjp_is_the_adjoint_of_the_reference(up, padding, taps):
  # The upsampling path (polyphase, explicit VJPs) is linear in x: its VJP must be A^T g where
  # A is the numpy reference map, built here column by column from unit inputs.
  rng = np.random.default_rng(2)
  h, w = 5, 6
  f = rng.standard_normal(taps).astype(np.float32)
  x = rng.standard_normal((1, 1, h, w)).astype(np.float32)
  out, vjp = jax.vjp(lambda v: ops.upfirdn2d(v, jnp.asarray(f), up=up, padding=padding,
                                             gain=up ** 2), to_nhwc(x))
  g = rng.standard_normal(out.shape).astype(np.float32)
  (got,) = vjp(jnp.asarray(g))
  g_nchw = np.transpose(g, (0, 3, 1, 2))
  expected = np.zeros((h, w))
  for i in range(h):
    for j in range(w):
      e = np.zeros((1, 1, h, w), np.float32)
      e[0, 0, i, j] = 1.0
      expected[i, j] = np.sum(np_upfirdn2d(e, f, up, 1, padding, False, up ** 2) * g_nchw)
  np.testing.assert_allclose(to_nchw(got)[0, 0], expected, rtol=0,
                             atol=1e-5 * np.abs(expected).max())
  np.testing.assert_allclose(to_nchw(out), np_upfirdn2d(x, f, up, 1, padding, False, up ** 2),
                             rtol=0, atol=1e-5 * np.abs(to_nchw(out)).max())


@pytest.mark.parametrize("k,padding", [(3, 2), (3, 1), (1, 0), (3, 0)])
def test_conv2d_explicit_vjp_matches_autodiff(k, padding):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 7, 9, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, 4, 5)), jnp.float32)
  prec = jax.lax.Precision.HIGHEST
  out, vjp = jax.vjp(lambda a, b: ops._conv2d(a, b, padding, prec), x, kernel)
  ref_out, ref_vjp = jax.vjp(lambda a, b: ops._conv2d_impl(a, b, padding, prec), x, kernel)
  g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-5)
  for got, ref in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(ref))))
