"""Part metrics against scikit-image / numpy, sweep changes and Hoyer sparsity by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.filters.rank import entropy as sk_entropy
from skimage.measure import regionprops
from skimage.morphology import disk
from skimage.util import img_as_ubyte

from linkjax import quantify as q

H = W = 128
_METRICS = jax.jit(q.part_metrics)  # shared so the tests reuse one compilation


def _ellipse(cy, cx, a, b, theta):
  yy, xx = np.mgrid[:H, :W]
  c, s = math.cos(theta), math.sin(theta)
  u = (yy - cy) * c + (xx - cx) * s
  v = -(yy - cy) * s + (xx - cx) * c
  return (u / a) ** 2 + (v / b) ** 2 <= 1


def _test_data():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:H, :W]
  images = np.empty((2, H, W, 3), np.float32)
  # image 0: smooth gradients plus noise; image 1: pure noise with a flat block.
  base = np.stack([yy / H, xx / W, (yy + xx) / (H + W)], -1)
  images[0] = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
  images[1] = rng.random((H, W, 3))
  images[1, 20:60, 30:90] = 0.4
  images = (np.round(images * 255) / 255).astype(np.float32)  # 8-bit images, as generated

  masks = np.zeros((2, H, W), np.int32)
  m = masks[0]
  m[_ellipse(40, 40, 22, 8, 0.0)] = 1
  m[_ellipse(90, 45, 25, 10, math.radians(30))] = 2
  m[_ellipse(35, 95, 20, 6, math.radians(-60))] = 3
  m[_ellipse(95, 100, 18, 9, math.radians(90))] = 4
  m[0:6, 60:80] = 5  # touches the top border
  m[64:74, 64:74] = 6  # square: a == c, b == 0 (skimage special case)
  m[127, 127] = 7  # single pixel in the corner
  # label 8 empty in image 0; label 9 = two disconnected parts (one region for regionprops)
  m[110:115, 5:30] = 9
  m[70:80, 2:6] = 9
  # image 1: random blobs from thresholded smoothed noise, every label present
  noise = rng.normal(size=(H // 8, W // 8))
  smooth = np.kron(noise, np.ones((8, 8)))
  smooth = smooth + 0.3 * rng.normal(size=(H, W))
  masks[1] = np.digitize(smooth, np.quantile(smooth, np.linspace(0, 1, 11)[1:-1]))
  return images, masks


def _angle_close(a, b, atol):
  d = (np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0  # orientations are axial
  return np.all(np.abs(d) <= atol)


@pytest.fixture(scope="module")
def data_and_metrics():
  images, masks = _test_data()
  metrics = np.asarray(_METRICS(jnp.asarray(images), jnp.asarray(masks)))
  return images, masks, metrics


def test_grey_matches_skimage():
  images, _ = _test_data()
  ref = np.stack([img_as_ubyte(rgb2gray(im)) for im in images])
  np.testing.assert_array_equal(np.asarray(q.to_grey_uint8(jnp.asarray(images))), ref)


def test_local_entropy_matches_skimage():
  images, _ = _test_data()
  grey = np.stack([img_as_ubyte(rgb2gray(im)) for im in images])
  ours = np.asarray(jax.jit(q.local_entropy)(jnp.asarray(grey.astype(np.int32))))
  ref = np.stack([sk_entropy(g, disk(5)) for g in grey])
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  # a different radius exercises the footprint construction
  ours3 = np.asarray(q.local_entropy(jnp.asarray(grey[:1].astype(np.int32)), radius=3))
  np.testing.assert_allclose(ours3[0], sk_entropy(grey[0], disk(3)), atol=2e-5)


@pytest.mark.parametrize("radius", [1, 2, 5, 8])
def test_disk_counts_equal_a_zero_padded_correlation(radius):
  from scipy.ndimage import correlate
  rng = np.random.default_rng(radius)
  x = rng.integers(0, 3, size=(2, 13, 29))  # non-square, odd sizes
  ref = np.stack([correlate(a, disk(radius).astype(np.int64), mode="constant") for a in x])
  padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius)))
  np.testing.assert_array_equal(q._disk_counts(padded, radius), ref)
  ours = q._disk_counts(jnp.asarray(padded.astype(np.uint8)), radius)  # the uint8 path
  assert ours.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(ours), ref)
  ones = np.ones((13, 29), np.int64)
  np.testing.assert_array_equal(q._disk_pixel_counts(13, 29, radius),
                                correlate(ones, disk(radius).astype(np.int64), mode="constant"))


@pytest.mark.parametrize("radius", [1, 4, 8])
def test_local_entropy_every_level_radii_and_batch_axes(radius):
  rng = np.random.default_rng(10 + radius)
  # every grey level 0..255 occurs (first and last level blocks), plus flat and noisy regions
  grey = rng.permutation(np.repeat(np.arange(256), 4)).reshape(2, 1, 16, 32).astype(np.uint8)
  grey[0, 0, :5, :9] = 255
  grey[1, 0, 8:, 20:] = 0
  ours = np.asarray(jax.jit(q.local_entropy, static_argnums=1)(
      jnp.asarray(grey.astype(np.int32)), radius))
  assert ours.shape == grey.shape and ours.dtype == np.float32
  for b in range(2):
    np.testing.assert_allclose(ours[b, 0], sk_entropy(grey[b, 0], disk(radius)), atol=2e-5)


def _inertia_f64(mask):
  rr, cc = np.nonzero(mask)
  dr, dc = rr - rr.mean(), cc - cc.mean()
  return (dc * dc).mean(), -(dr * dc).mean(), (dr * dr).mean()


def test_inertia_matches_float64_moments_far_from_the_origin():
  n = 128
  yy, xx = np.mgrid[:n, :n]
  masks = np.zeros((5, n, n), np.float32)
  masks[0] = (np.abs(yy - xx) <= 0) & (yy > 100)  # one-pixel diagonal line in the far corner
  masks[1, 120:122, 30:127] = 1  # thin horizontal bar at the bottom
  masks[2] = _ellipse(110, 115, 12, 3, math.radians(20))
  masks[3] = np.random.default_rng(3).random((n, n)) < 0.5  # the whole image, noisy
  masks[4, 127, 127] = 1  # one pixel: zero moments
  parts = q.PartMasks(image=jnp.zeros((n, n, 3), jnp.float32), masks=jnp.asarray(masks),
                      area=jnp.asarray(masks.sum(axis=(1, 2))))
  ours = np.stack([np.asarray(v) for v in jax.jit(q._inertia)(parts)], axis=1)  # [L, 3]
  ref = np.array([_inertia_f64(m) for m in masks])
  # float32 sums of exact integer terms, no cancellation: a few ulps of the trace
  tol = 8 * np.finfo(np.float32).eps * (ref[:, 0] + ref[:, 2])[:, None]
  assert np.all(np.abs(ours - ref) <= tol), np.abs(ours - ref) / np.maximum(tol, 1e-30)
  assert np.all(ours[4] == 0)


def test_part_metrics_match_skimage(data_and_metrics):
  images, masks, metrics = data_and_metrics
  assert metrics.shape == (2, 9, 5) and metrics.dtype == np.float32
  checked = 0
  for b in range(2):
    grey = img_as_ubyte(rgb2gray(images[b]))
    ent = sk_entropy(grey, disk(5))
    luma = images[b].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    props = {p.label: p for p in regionprops(masks[b])}
    for label in range(1, 10):
      row = metrics[b, label - 1]
      if label not in props:
        assert row[0] == 0 and np.all(np.isnan(row[1:]))
        continue
      p = props[label]
      inside = masks[b] == label
      assert row[0] == p.area
      np.testing.assert_allclose(row[1], luma[inside].mean(), rtol=1e-5)
      np.testing.assert_allclose(row[2], ent[inside].mean(), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(row[3], p.eccentricity, atol=1e-4)
      assert _angle_close(row[4], np.degrees(p.orientation), atol=1e-3), (b, label, row[4])
      checked += 1
  assert checked == 17  # 8 labels in image 0 (one empty), 9 in image 1
  # the synthetic ellipses' angles come out as constructed (rows axis = 0 deg)
  for label, deg in [(1, 0.0), (2, 30.0), (3, -60.0), (4, 90.0)]:
    assert _angle_close(metrics[0, label - 1, 4], deg, atol=1.5)
  assert metrics[0, 5, 4] == -45.0  # skimage's convention for a == c, b >= 0
  assert metrics[0, 6, 3] == 0.0  # single pixel: eccentricity 0


def test_part_metrics_vmap_jit_and_background(data_and_metrics):
  images, masks, metrics = data_and_metrics
  f = _METRICS
  f(jnp.asarray(images), jnp.asarray(masks))
  n = f._cache_size()
  f(jnp.asarray(images[::-1]), jnp.asarray(masks[::-1]))
  assert f._cache_size() == n  # no retrace
  # an extra leading axis through vmap, and the background row; on a 40x40 crop (image 1, all
  # labels present) to keep these two extra compilations cheap
  im, ms = jnp.asarray(images[1:, :40, :40]), jnp.asarray(masks[1:, :40, :40])
  crop = np.asarray(q.part_metrics(im, ms))
  stacked = jax.jit(jax.vmap(q.part_metrics))(im[None], ms[None])
  np.testing.assert_allclose(np.asarray(stacked[0]), crop, rtol=1e-6, equal_nan=True)
  with_bg = np.asarray(jax.jit(q.part_metrics, static_argnames="ignore_background")(
      im, ms, ignore_background=False))
  assert with_bg.shape == (1, 10, 5)
  assert with_bg[0, 0, 0] == np.sum(masks[1, :40, :40] == 0)
  np.testing.assert_allclose(with_bg[:, 1:], crop, rtol=1e-6, equal_nan=True)


def test_sweep_changes_by_hand():
  # one sample, 3 steps, 3 labels; metrics: area, lum, ent, ecc, angle
  nan = np.nan
  m = np.zeros((3, 3, 5), np.float32)
  m[:, 0] = [[100, 0.2, 3.0, 0.5, 80.0], [150, 0.3, 3.5, 0.6, 85.0], [200, 0.5, 4.0, 0.9, -80.0]]
  m[:, 1] = [[10, 0.1, 1.0, 0.1, 0.0], [20, 0.1, 1.0, 0.1, 0.0], [25, 0.9, 5.0, 0.9, 10.0]]
  m[:, 2] = [[0, nan, nan, nan, nan], [30, 0.4, 2.0, 0.3, 5.0], [40, 0.6, 2.5, 0.2, -5.0]]
  out = np.asarray(q.sweep_changes(jnp.asarray(m)))
  expected = np.array([
      [1.0, 0.3, 1.0, 0.4, 20.0],  # -80 - 80 = -160 wraps to +20 degrees
      [0, 0, 0, 0, 0],  # mean area 55/3 < 20 px: zeroed
      [39.0, 0.0, 0.0, 0.0, 0.0],  # absent at step 0: area / 1 px - 1, NaN deltas -> 0
  ], np.float32)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  # leading batch axes pass through
  batched = np.asarray(q.sweep_changes(jnp.asarray(np.stack([m, m]))))
  np.testing.assert_allclose(batched, np.stack([expected, expected]), rtol=1e-6, atol=1e-6)


def test_hoyer():
  np.testing.assert_allclose(q.hoyer(jnp.asarray([0.0, 0.0, -3.0, 0.0])), 1.0, rtol=1e-6)
  np.testing.assert_allclose(q.hoyer(jnp.full((9,), 2.5)), 0.0, atol=1e-6)
  assert float(q.hoyer(jnp.zeros(45))) == 0.0
  expected = (math.sqrt(2) - 7 / 5) / (math.sqrt(2) - 1)  # x = (3, 4): |x|_1 = 7, |x|_2 = 5
  np.testing.assert_allclose(q.hoyer(jnp.asarray([3.0, -4.0])), expected, rtol=1e-5)
  x = jnp.asarray([[3.0, 1.0], [-4.0, 1.0]])
  np.testing.assert_allclose(q.hoyer(x, axis=0), [expected, 0.0], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError):
    q.hoyer(jnp.ones((3, 1)))


def test_label_sparsity():
  rng = np.random.default_rng(1)
  changes = rng.normal(size=(7, 9, 5)).astype(np.float32)
  out = q.label_sparsity(jnp.asarray(changes))
  med = np.median(np.abs(changes), axis=0)

  def hoyer_np(v):
    k = v.size
    return (math.sqrt(k) - np.abs(v).sum() / np.sqrt((v ** 2).sum())) / (math.sqrt(k) - 1)

  np.testing.assert_allclose(out["per_metric"], [hoyer_np(med[:, j]) for j in range(5)],
                             rtol=1e-5)
  np.testing.assert_allclose(out["overall"], hoyer_np(med.ravel()), rtol=1e-5)
  # one label changes in every sample, everything else is zero: maximally sparse
  one = np.zeros((4, 9, 5), np.float32)
  one[:, 2, 1] = [0.5, -0.4, 0.6, 0.5]
  sp = q.label_sparsity(jnp.asarray(one))
  np.testing.assert_allclose(sp["overall"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(sp["per_metric"], [0, 1, 0, 0, 0], atol=1e-6)
