"""Tests of the procedural miniworld renderer."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from linkjax import miniworld
rmod = importlib.import_module("linkjax.miniworld.render")  # the name `render` is the function

PER_CLASS = 100


@pytest.fixture(scope="module")
def world():
  classes = jnp.repeat(jnp.arange(miniworld.NUM_CLASSES, dtype=jnp.int32), PER_CLASS)
  theta = miniworld.sample_theta(jax.random.key(0), classes)
  images, masks = miniworld.render(theta)
  return np.asarray(classes), np.asarray(theta), np.asarray(images), np.asarray(masks)


def _areas(masks):
  return np.stack([(masks == l).sum((1, 2)) for l in range(1, 10)], axis=1)


def test_api_constants():
  assert miniworld.PART_NAMES == ("background", "leg", "body", "tail", "tongue", "eye", "nose",
                                  "snout", "ear", "head")
  assert len(miniworld.CLASS_NAMES) == 5
  assert sorted(miniworld.PAINT_ORDER) == sorted(miniworld.PART_NAMES[1:])
  assert len(miniworld.PARAMS) == miniworld.THETA_DIM


def test_shapes_ranges_and_bounded_theta(world):
  classes, theta, images, masks = world
  assert theta.shape == (5 * PER_CLASS, miniworld.THETA_DIM) and theta.dtype == np.float32
  assert np.abs(theta).max() < 1.0
  assert images.shape == (5 * PER_CLASS, 64, 64, 3) and images.dtype == np.float32
  assert masks.shape == (5 * PER_CLASS, 64, 64) and masks.dtype == np.int32
  assert images.min() >= 0.0 and images.max() <= 1.0
  assert masks.min() >= 0 and masks.max() <= 9


def test_determinism():
  theta = miniworld.sample_theta(jax.random.key(3), jnp.arange(5, dtype=jnp.int32))
  theta2 = miniworld.sample_theta(jax.random.key(3), jnp.arange(5, dtype=jnp.int32))
  np.testing.assert_array_equal(np.asarray(theta), np.asarray(theta2))
  a = miniworld.render(theta)
  b = miniworld.render(theta)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  # Different samples give different images.
  assert np.abs(np.asarray(a[0][0]) - np.asarray(a[0][1])).mean() > 0.02


def test_batch_equals_single_render_and_no_retrace():
  theta = miniworld.sample_theta(jax.random.key(5), jnp.arange(6, dtype=jnp.int32) % 5)
  images, masks = miniworld.render(theta)
  n_compiled = miniworld.render._cache_size()
  for i in range(theta.shape[0]):
    img1, mask1 = rmod.render_one(theta[i])
    np.testing.assert_array_equal(np.asarray(mask1), np.asarray(masks[i]))
    np.testing.assert_allclose(np.asarray(img1), np.asarray(images[i]), atol=1e-5)
  # A permuted batch of the same shape reuses the compilation and permutes the output.
  perm = jnp.array([3, 1, 0, 5, 4, 2], jnp.int32)
  images_p, masks_p = miniworld.render(theta[perm])
  assert miniworld.render._cache_size() == n_compiled
  np.testing.assert_array_equal(np.asarray(masks_p), np.asarray(masks)[np.asarray(perm)])


def test_all_parts_visible_in_most_samples(world):
  classes, _, _, masks = world
  present = _areas(masks) > 0
  for c in range(miniworld.NUM_CLASSES):
    frac = present[classes == c].all(axis=1).mean()
    assert frac >= 0.9, (miniworld.CLASS_NAMES[c], frac)


def test_classes_differ_but_overlap(world):
  classes, theta, images, masks = world
  areas = _areas(masks).astype(np.float64)
  head = miniworld.PART_NAMES.index("head") - 1
  means = np.array([areas[classes == c].mean(0) for c in range(5)])
  ses = np.array([areas[classes == c].std(0) / math.sqrt(PER_CLASS) for c in range(5)])
  # Lurcher heads are small, mastiff heads large: far apart relative to the standard error.
  assert means[3, head] - means[1, head] > 10 * (ses[3, head] + ses[1, head])
  # ...but the ranges overlap for every part and every pair of breeds.
  for part in range(9):
    lo = [areas[classes == c, part].min() for c in range(5)]
    hi = [areas[classes == c, part].max() for c in range(5)]
    assert max(lo) < min(hi), (miniworld.PART_NAMES[part + 1], lo, hi)
  # Part areas alone separate the breeds well above chance but far from perfectly.
  x = StandardScaler().fit_transform(areas)
  idx = np.random.RandomState(0).permutation(len(x))
  tr, te = idx[:300], idx[300:]
  acc = LogisticRegression(max_iter=2000).fit(x[tr], classes[tr]).score(x[te], classes[te])
  assert 0.5 < acc < 0.95, acc
  # Class-conditional parameters: lurchers are longer than terriers on average.
  body_len = np.asarray(miniworld.physical(jnp.asarray(theta))["body_len"])
  assert body_len[classes == 1].mean() > body_len[classes == 0].mean() + 2.0


def test_mask_agrees_with_image(world):
  _, theta, images_aa, masks = world
  step = 8
  theta = jnp.asarray(theta[::step])
  n = theta.shape[0]
  images, masks_hard = map(np.asarray, miniworld.render(theta, antialias=False))
  images_aa, masks = images_aa[::step], masks[::step]
  # Anti-aliasing changes colours, never the mask.
  np.testing.assert_array_equal(masks_hard, masks)
  # ...and colours only on pixels with a differently labelled 8-neighbour, or inside the legs
  # (near and far legs share a label but not a colour, and thin gaps between legs blend).
  edge = np.zeros(masks.shape, bool)
  for i in range(n):
    for label in range(10):
      m = masks[i] == label
      edge[i] |= ndimage.binary_dilation(m, np.ones((3, 3), bool)) & ~m
  diff = np.abs(images - images_aa).max(-1)
  inner = ~edge & (masks != miniworld.PART_NAMES.index("leg"))
  assert diff[inner].max() < 1e-5 and diff[edge].max() > 0.1

  cols = np.asarray(miniworld.part_colours(theta))  # [B, 9, 3]
  phys = {k: np.asarray(v) for k, v in miniworld.physical(theta).items()}
  sec = np.asarray(rmod._hsv(jnp.asarray(phys["sec_hue"]),
                             jnp.asarray(phys["sec_sat"]), jnp.asarray(phys["sec_val"])))
  for i in range(n):
    for label in range(1, 10):
      px = images[i][masks[i] == label]
      if px.shape[0] == 0:
        continue
      want = cols[i, label - 1]
      if label == miniworld.PART_NAMES.index("body"):
        # body = s * (base + t * (secondary - base)), s in [1 - shade_amp, 1].
        basis = np.stack([want, sec[i] - want], axis=1)
        coef, *_ = np.linalg.lstsq(basis, px.T, rcond=None)
        assert np.abs(basis @ coef - px.T).max() < 1e-4
        assert coef[0].min() >= 1.0 - phys["shade_amp"][i] - 1e-4 and coef[0].max() <= 1.0 + 1e-4
        continue
      if label == miniworld.PART_NAMES.index("leg"):
        # Near legs have the leg colour, far legs 20 % less.
        err = np.minimum(np.abs(px - want).max(-1), np.abs(px - 0.8 * want).max(-1))
      else:
        err = np.abs(px - want).max(-1)
      assert err.max() < 1e-5, (i, miniworld.PART_NAMES[label], err.max())
  assert (masks == miniworld.PART_NAMES.index("body")).sum() > 1000


def test_eye_area_matches_radius(world):
  _, theta, _, masks = world
  r = np.asarray(miniworld.physical(jnp.asarray(theta))["eye_r"])
  area = (masks == miniworld.PART_NAMES.index("eye")).sum((1, 2))
  # Pixel-centre sampling of a disc: area within ~ half the perimeter of pi r^2 (tongue may
  # occlude a little, so check the median).
  rel = (area - math.pi * r**2) / (2 * math.pi * r)
  assert abs(np.median(rel)) < 0.3 and np.mean(np.abs(rel) < 0.8) > 0.9
