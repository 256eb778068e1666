"""Convolution of nearest-resized maps at source resolution vs float64 references and the old path.

Tolerances come from float32 error estimates: an output element of a k x k convolution over I
input channels is a sum of K = k * k * I products, whose float32 rounding error is about
eps * sqrt(K) * sum |x| |w| (random-walk estimate); both the old path (resize, then convolve)
and the new one must be within twice that of a float64 numpy reference, element by element.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import checkpoint
from linkjax.models import segmenter as seg
from linkjax.models import upsampled_conv as uc

EPS = float(np.finfo(np.float32).eps)
WEIGHTS = pathlib.Path(seg.__file__).parents[1] / "miniworld" / "weights"


def _conv_f64(x, kernel, dilation):
  """'same' zero-padded NHWC x HWIO cross-correlation in float64 numpy."""
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = x.shape[1:3]
  out = 0.0
  for i in range(k):
    for j in range(k):
      win = xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
      out = out + np.einsum("bhwi,io->bhwo", win, kernel[i, j].astype(np.float64))
  return out


def _resize(x, rows, cols):
  return x[:, rows][:, :, cols]


def _bound(x_up, kernel, dilation):
  k_terms = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
  return 2 * EPS * np.sqrt(k_terms) * _conv_f64(np.abs(x_up), np.abs(kernel), dilation)


def test_axis_plan_phases_of_integer_factors():
  p4 = uc.axis_plan(seg.nearest_indices(16, 64), 16)
  assert p4.patterns == ((-1, 0, 0), (0, 0, 0), (0, 0, 1))  # phases 1 and 2 alike
  np.testing.assert_array_equal(p4.phase[:8], [0, 1, 1, 2, 0, 1, 1, 2])
  np.testing.assert_array_equal(p4.anchor[:8], [0, 0, 0, 0, 1, 1, 1, 1])
  assert p4.extent == 5
  # borders: the tap outside [0, 64) lands outside the source, so they share interior phases
  assert p4.phase[0] == 0 and p4.phase[63] == 2
  p2 = uc.axis_plan(seg.nearest_indices(32, 64), 32)
  assert p2.patterns == ((-1, 0, 0), (0, 0, 1)) and p2.extent == 4
  p1 = uc.axis_plan(np.arange(9), 9)
  assert p1.patterns == ((-1, 0, 1),)
  with pytest.raises(ValueError, match="indices"):
    uc.axis_plan([0, 5], 5)


# (h, w) -> (R_h, R_w): integer factors, non-integer ratios, a downsampling, odd sizes, identity
SIZES = [((4, 4), (16, 16)), ((8, 6), (16, 12)), ((5, 7), (12, 16)), ((7, 9), (7, 9)),
         ((9, 6), (7, 4)), ((3, 3), (11, 11)), ((6, 5), (13, 10))]


@pytest.mark.parametrize("src,dst", SIZES)
@pytest.mark.parametrize("dilation,k", [(1, 3), (2, 3), (1, 5)])
def test_nearest_upsampled_conv_matches_float64(src, dst, dilation, k):
  rng = np.random.default_rng(hash((src, dst, dilation, k)) % 2**32)
  x = rng.normal(size=(2, *src, 5)).astype(np.float32)
  kernel = rng.normal(size=(k, k, 5, 3)).astype(np.float32)
  rows, cols = seg.nearest_indices(src[0], dst[0]), seg.nearest_indices(src[1], dst[1])
  x_up = _resize(x, rows, cols)
  ref = _conv_f64(x_up, kernel, dilation)
  bound = _bound(x_up, kernel, dilation)
  for method in ("phases", "direct", "auto"):
    out = np.asarray(jax.jit(lambda a, w, m=method: uc.nearest_upsampled_conv(
        a, w, rows, cols, dilation=dilation, method=m))(x, kernel))
    assert out.shape == (2, *dst, 3)
    assert np.all(np.abs(out - ref) <= bound), (method, np.max(np.abs(out - ref) / bound))


def test_phases_cut_the_multiply_adds():
  x = jnp.zeros((1, 16, 16, 8), jnp.float32)
  kernel = jnp.zeros((3, 3, 8, 4), jnp.float32)
  idx = seg.nearest_indices(16, 64)

  def flops(method):
    fn = jax.jit(lambda a, w: uc.nearest_upsampled_conv(a, w, idx, idx, method=method))
    cost = fn.lower(x, kernel).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  # 25 instead of 144 multiply-adds per source pixel and channel pair (x4 upsampling)
  assert flops("phases") < 0.25 * flops("direct")
  plan = uc.axis_plan(idx, 16)
  assert uc.phase_cost(plan, plan) * 144 == uc.direct_cost(plan, plan, 3) * 25


def _maps(rng, batch=2):
  # cropped sizes 6 (x4), 12 (x2), 24 (x1, two maps), 7 (24/7) and 30 (downsampling) for R = 24
  shapes = [(3, 10, 10), (2, 16, 16), (4, 28, 28), (2, 24, 24), (3, 7, 7), (2, 30, 30)]
  margins = (2, 2, 2, 0, 0, 0)
  maps = [rng.normal(size=(batch, *s)).astype(np.float32) for s in shapes]
  return maps, margins


def test_resized_concat_conv_equals_conv_of_concat_features():
  rng = np.random.default_rng(0)
  maps, margins = _maps(rng)
  c_in = sum(m.shape[1] for m in maps)
  kernel = rng.normal(size=(3, 3, c_in, 4)).astype(np.float32)
  bias = rng.normal(size=(4,)).astype(np.float32)
  out = np.asarray(jax.jit(lambda ms, w, b: uc.resized_concat_conv(
      ms, margins, 24, w, b, seg.nearest_indices))(maps, kernel, bias))
  x = np.asarray(seg.concat_features([jnp.asarray(m) for m in maps], 24, margins))
  ref = _conv_f64(x, kernel, 1) + bias
  bound = _bound(x, kernel, 1) + 2 * EPS * np.abs(bias)
  assert np.all(np.abs(out - ref) <= bound), np.max(np.abs(out - ref) / bound)
  with pytest.raises(ValueError, match="channels"):
    uc.resized_concat_conv(maps, margins, 24, kernel[:, :, 1:], bias, seg.nearest_indices)


def _near_tie_disagreements(a, b, ref, tol):
  """Pixels whose argmax differs between logits a and b, and whether each is a near-tie."""
  differ = np.argmax(a, -1) != np.argmax(b, -1)
  top2 = np.sort(ref, -1)[..., -2:]
  near_tie = (top2[..., 1] - top2[..., 0]) <= 2 * tol
  return int(differ.sum()), bool(np.all(near_tie[differ]))


@pytest.mark.parametrize("size", ["S", "M"])
def test_segmenter_call_equals_head_of_concat_features(size):
  rng = np.random.default_rng(1)
  maps, margins = _maps(rng)
  layers = tuple(f"l{i}" for i in range(len(maps)))
  cfg = seg.SegmenterConfig(in_channels=sum(m.shape[1] for m in maps), n_labels=5, size=size,
                            feature_layers=layers, resolution=24, feature_margins=margins)
  model = seg.FewShotSegmenter(cfg, rngs=nnx.Rngs(3))
  maps = [jnp.asarray(m) for m in maps]
  new = np.asarray(jax.jit(lambda ms: model(ms))(maps))
  old = np.asarray(jax.jit(lambda ms: model.head(seg.concat_features(ms, 24, margins)))(maps))
  scale = np.abs(old).max()
  np.testing.assert_allclose(new, old, atol=4 * EPS * np.sqrt(9 * cfg.in_channels) * scale)
  n_diff, all_ties = _near_tie_disagreements(new, old, old, 1e-4 * scale)
  assert all_ties, n_diff
  np.testing.assert_array_equal(np.asarray(seg.segment_features(model, dict(zip(layers, maps)))),
                                new)


@pytest.fixture(scope="module")
def shipped():
  if not (WEIGHTS / "segmenter" / "config.json").exists():
    pytest.skip("miniworld weights not shipped in this checkout")
  gen = checkpoint.load(WEIGHTS / "generator", role="generator")
  segmenter = checkpoint.load(WEIGHTS / "segmenter", role="segmenter")
  z = np.random.default_rng(0).normal(size=(2, gen.config.z_dim)).astype(np.float32)
  ws = gen.mapping(jnp.asarray(z), jnp.asarray([0, 3], jnp.int32), psi=0.7)
  _, feats = jax.jit(gen.synthesis, static_argnames="return_features")(ws, return_features=True)
  return segmenter, seg.select_features(feats, segmenter.config.feature_layers)


def test_shipped_segmenter_first_layer_and_logits_against_float64(shipped):
  model, maps = shipped
  cfg = model.config
  first = model.layers[0]
  kernel, bias = np.asarray(first.kernel[...]), np.asarray(first.bias[...])
  x = np.asarray(seg.concat_features(maps, cfg.resolution, cfg.feature_margins))
  ref1 = _conv_f64(x, kernel, 1) + bias
  bound1 = _bound(x, kernel, 1) + 2 * EPS * np.abs(bias)
  new1 = np.asarray(jax.jit(lambda ms: uc.resized_concat_conv(
      ms, cfg.feature_margins, cfg.resolution, first.kernel[...], first.bias[...],
      seg.nearest_indices))(maps))
  old1 = np.asarray(jax.jit(lambda a: first(a))(x))
  for out in (new1, old1):  # both paths within the same float32 bound of float64
    assert np.all(np.abs(out - ref1) <= bound1), np.max(np.abs(out - ref1) / bound1)
  # Logits: the head in float64 (old path) as the reference; each float32 path within
  # 4 eps sqrt(K) of the logit scale, K = all products along the 5 layers.
  graphdef, state = nnx.split(model)
  with jax.enable_x64(True):
    state64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
    ref = np.asarray(nnx.merge(graphdef, state64).head(jnp.asarray(x, jnp.float64)))
  new = np.asarray(jax.jit(lambda ms: model(ms))(maps))
  old = np.asarray(jax.jit(lambda a: model.head(a))(jnp.asarray(x)))
  k_total = 9 * sum(conv.kernel.shape[2] for conv in model.layers)
  tol = 4 * EPS * np.sqrt(k_total) * np.abs(ref).max()
  for out in (new, old):
    assert np.max(np.abs(out - ref)) <= tol, np.max(np.abs(out - ref)) / tol
  n_diff, all_ties = _near_tie_disagreements(new, old, ref, tol)
  assert all_ties, n_diff
  masks = np.asarray(seg.predict_masks(model, maps))
  np.testing.assert_array_equal(masks, np.argmax(new, -1))
