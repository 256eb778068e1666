"""Few-shot segmenter: feature selection and resize rule, dilated head, training, checkpoints."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import optax
from flax import nnx

from linkjax import bundle, checkpoint, segmenter_train
from linkjax import masks as masks_lib
from linkjax.models import segmenter as seg


def _torch_nearest_numpy(in_size, out_size):
  # torch upsample_nearest: scale = (float)in / out; src = min(floor(dst * scale), in - 1)
  scale = np.float32(in_size) / np.float32(out_size)
  return np.array([min(int(np.floor(np.float32(d) * scale)), in_size - 1)
                   for d in range(out_size)])


@pytest.mark.parametrize("in_size,out_size", [(36, 128), (52, 128), (16, 128), (128, 128),
                                              (256, 128), (276, 128), (148, 128), (7, 3)])
def test_nearest_indices_torch_rule(in_size, out_size):
  idx = seg.nearest_indices(in_size, out_size)
  np.testing.assert_array_equal(idx, _torch_nearest_numpy(in_size, out_size))
  # for these sizes the float rule equals the exact rational floor(dst * in / out)
  np.testing.assert_array_equal(idx, (np.arange(out_size) * in_size) // out_size)


def test_nearest_matches_torch_if_available():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(1, 2, 36, 52)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x), (128, 128), mode="nearest").numpy()
  np.testing.assert_array_equal(np.asarray(seg.resize_nearest(jnp.asarray(x), 128)), ref)


def test_concat_features_layout():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
  b = rng.normal(size=(2, 4, 12, 12)).astype(np.float32)
  out = np.asarray(seg.concat_features([jnp.asarray(a), jnp.asarray(b)], 8))
  assert out.shape == (2, 8, 8, 7)
  ia, ib = _torch_nearest_numpy(5, 8), _torch_nearest_numpy(12, 8)
  for y in range(8):
    for x in range(8):
      np.testing.assert_array_equal(out[:, y, x, :3], a[:, :, ia[y], ia[x]])
      np.testing.assert_array_equal(out[:, y, x, 3:], b[:, :, ib[y], ib[x]])


def test_concat_features_crops_margins_before_the_resize():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(2, 3, 20, 20)).astype(np.float32)  # rate 16 + 2-pixel margins
  b = rng.normal(size=(2, 2, 8, 8)).astype(np.float32)    # no margin
  out = np.asarray(seg.concat_features([jnp.asarray(a), jnp.asarray(b)], 32, margins=(2, 0)))
  # independent: cut the margins in numpy, then the exact integer nearest rule
  ia, ib = (np.arange(32) * 16) // 32, (np.arange(32) * 8) // 32
  np.testing.assert_array_equal(out[..., :3], a[:, :, 2:18, 2:18][:, :, ia][:, :, :, ia]
                                .transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(out[..., 3:], b[:, :, ib][:, :, :, ib].transpose(0, 2, 3, 1))
  whole = np.asarray(seg.concat_features([jnp.asarray(a), jnp.asarray(b)], 32))
  assert not np.array_equal(whole, out)  # the reference's whole-map resize differs
  with pytest.raises(ValueError, match="margins"):
    seg.concat_features([jnp.asarray(a), jnp.asarray(b)], 32, margins=(2,))
  with pytest.raises(ValueError, match="feature margins"):
    seg.SegmenterConfig(in_channels=5, n_labels=2, feature_layers=("input",),
                        feature_margins=(2, 0))


def test_stylegan_margins_leave_each_layers_image_region():
  from linkjax.miniworld import train_generator as tg
  from linkjax.models import stylegan_xl as sx
  cfg = tg.generator_config(w_dim=16, embed_dim=8, channel_base=128, channel_max=8,
                            stem_layers=4, head_layers=4)
  gen = sx.StyleGANXL(cfg, rngs=nnx.Rngs(0))
  names = gen.layer_names
  margins = seg.stylegan_margins(cfg, names)
  ws = jnp.zeros((1, cfg.num_ws, cfg.w_dim), jnp.float32)
  _, feats = jax.eval_shape(lambda w: gen.synthesis(w, return_features=True), ws)
  rates = {s.name: s.out_sampling_rate for s in cfg.layers} | {"input": cfg.input.sampling_rate}
  for name, m in zip(names, margins):
    h, w = feats[name].shape[-2:]
    assert h - 2 * m == w - 2 * m == rates[name], (name, h, m)
  assert margins[0] > 0 and margins[-1] == 0  # the stem has margins; the last layer none
  with pytest.raises(KeyError):
    seg.stylegan_margins(cfg, ["L99_1_1"])


def test_segmenter_applies_its_stored_margins(tmp_path):
  rng = np.random.default_rng(2)
  maps = [jnp.asarray(rng.normal(size=(3, 2, 12, 12)).astype(np.float32)),
          jnp.asarray(rng.normal(size=(3, 1, 8, 8)).astype(np.float32))]
  feats = seg.concat_features(maps, 8, margins=(2, 0))
  masks = rng.integers(0, 3, size=(3, 8, 8))
  model, _ = segmenter_train.train_segmenter(jax.random.key(0), feats, masks, 3, epochs=2,
                                 feature_layers=("a", "b"), feature_margins=(2, 0))
  assert model.config.feature_margins == (2, 0)
  np.testing.assert_allclose(np.asarray(model(maps)), np.asarray(model.head(feats)), atol=1e-6)
  checkpoint.save(tmp_path / "s", model)
  loaded = checkpoint.load(tmp_path / "s", role="segmenter")
  assert loaded.config.feature_margins == (2, 0)
  np.testing.assert_allclose(np.asarray(loaded(maps)), np.asarray(model(maps)), atol=1e-6)


def test_feature_selection():
  names = ("input", "L0_36_16", "L1_36_16", "L2_36_16", "L3_36_16", "L5_36_16", "L6_52_16",
           "L7_52_16", "L8_32_16", "L9_32_3")
  assert seg.reference_feature_layers(names) == ("input", "L1_36_16", "L3_36_16", "L6_52_16",
                                                 "L8_32_16")
  # an odd count would put ToRGB (3 channels) under the stride: it is not a feature
  assert seg.reference_feature_layers(("input", "L0_8_4", "L1_8_4", "L2_8_4", "L3_8_3")) == (
      "input", "L1_8_4")
  assert seg.all_feature_layers(names) == names[:-1]  # every layer but ToRGB
  assert seg.all_feature_layers(("input", "L0_8_4")) == ("input", "L0_8_4")
  feats = {n: jnp.full((1, 1, 2, 2), float(i)) for i, n in enumerate(names)}
  got = seg.select_features(feats, ["L6_52_16", "input"])
  assert [float(g[0, 0, 0, 0]) for g in got] == [6.0, 0.0]
  with pytest.raises(KeyError):
    seg.select_features(feats, ["L4_36_16"])


def _model(in_channels=5, n_labels=3, size="S", seed=0):
  cfg = seg.SegmenterConfig(in_channels=in_channels, n_labels=n_labels, size=size, resolution=16)
  return seg.FewShotSegmenter(cfg, rngs=nnx.Rngs(seed))


def test_head_architecture():
  for size, dil, widths in [("S", [1, 2, 1, 2, 1], [128, 64, 64, 32]),
                            ("M", [1, 2, 4, 1, 2, 4, 1], [128, 64, 64, 64, 64, 32]),
                            ("L", [1, 2, 4, 8, 1, 2, 4, 8, 1], [128] + [64] * 6 + [32])]:
    m = nnx.eval_shape(lambda size=size: _model(size=size))  # shapes only: no init compute
    assert [c.kernel_dilation for c in m.layers] == [(d, d) for d in dil]
    assert [c.padding for c in m.layers] == [((d, d), (d, d)) for d in dil]
    assert [c.kernel.shape[-1] for c in m.layers] == widths + [3]
  m = _model()
  assert [c.kernel.shape for c in m.layers] == [(3, 3, 5, 128), (3, 3, 128, 64),
                                                      (3, 3, 64, 64), (3, 3, 64, 32),
                                                      (3, 3, 32, 3)]
  # torch default init range U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
  bound = 1 / np.sqrt(9 * 5)
  assert np.abs(m.layers[0].kernel[...]).max() <= bound
  assert np.abs(m.layers[0].bias[...]).max() <= bound
  assert np.abs(m.layers[0].bias[...]).max() > 0.5 * bound
  with pytest.raises(ValueError):
    seg.SegmenterConfig(in_channels=1, n_labels=2, size="XL")


def test_dilated_conv_matches_numpy_correlation():
  m = _model()
  conv = m.layers[1]  # 128 -> 64, dilation 2, padding 2
  x = np.random.default_rng(1).normal(size=(1, 9, 11, 128)).astype(np.float32)
  w = np.asarray(conv.kernel[...], np.float64)
  d = 2
  xp = np.pad(x[0].astype(np.float64), ((d, d), (d, d), (0, 0)))
  ref = np.zeros((9, 11, 64)) + np.asarray(conv.bias[...], np.float64)
  for ky in range(3):
    for kx in range(3):
      ref += xp[ky * d:ky * d + 9, kx * d:kx * d + 11] @ w[ky, kx]
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x)))[0], ref, rtol=1e-4, atol=1e-4)


def test_receptive_field_of_head():
  # S dilations 1, 2, 1, 2, 1: an input pixel reaches exactly the 15x15 square around it.
  m = _model()
  x = np.random.default_rng(2).normal(size=(1, 24, 24, 5)).astype(np.float32)
  x2 = x.copy()
  x2[0, 12, 12] += 1.0
  diff = np.abs(np.asarray(m.head(jnp.asarray(x2)) - m.head(jnp.asarray(x)))).max(-1)[0]
  inside = np.zeros((24, 24), bool)
  inside[12 - 7:12 + 8, 12 - 7:12 + 8] = True
  assert np.all(diff[~inside] == 0)
  assert np.all(diff[inside] > 0)


def test_torch_adam_with_l2_and_step_schedule():
  lr, wd, b1, b2, eps, per = 0.1, 0.01, 0.9, 0.999, 1e-8, 2
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(5, 4))
  p0 = rng.normal(size=4)
  tx = segmenter_train.torch_adam(lr, wd, steps_per_decay=per)
  p = jnp.asarray(p0, jnp.float32)
  state = tx.init(p)
  # reference: torch.optim.Adam(weight_decay) + StepLR(step_size=per, gamma=0.1)
  ref, m, v = p0.copy(), np.zeros(4), np.zeros(4)
  for t in range(1, 6):
    g = grads[t - 1] + wd * ref
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step_lr = lr * 0.1 ** ((t - 1) // per)
    ref = ref - step_lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    with jax.numpy_dtype_promotion("standard"):
      upd, state = tx.update(jnp.asarray(grads[t - 1], jnp.float32), state, p)
    p = p + upd
    np.testing.assert_allclose(np.asarray(p), ref, rtol=1e-5, atol=1e-6)


def _toy_problem(n=2, res=16, n_labels=3, channels=4, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:2 * res, :2 * res]  # masks at twice the feature size: resized with nearest
  masks = np.zeros((n, 2 * res, 2 * res), np.int32)
  for i in range(n):
    masks[i][(yy - res + 3 * i) ** 2 + (xx - res) ** 2 < (res // 2) ** 2] = 1
    masks[i][2:res // 2, 4 + 2 * i:res + 2 * i] = 2
  small = masks_lib.resize_masks(masks, res)
  mix = rng.normal(size=(n_labels, channels)).astype(np.float32)
  feats = np.eye(n_labels, dtype=np.float32)[small] @ mix
  feats += 0.2 * rng.normal(size=feats.shape).astype(np.float32)
  return feats, masks, small


def test_training_learns_linearly_encoded_masks(tmp_path):
  feats, masks, small = _toy_problem()
  model, losses = segmenter_train.train_segmenter(jax.random.key(0), feats, masks, 3, epochs=12, lr=3e-3,
                                      step_epochs=10, feature_layers=("input", "L1"),
                                      label_names=("bg", "a", "b"))
  assert losses.shape == (12,) and losses[-1] < 0.1 * losses[0]
  pred = np.argmax(np.asarray(model.head(jnp.asarray(feats))), -1)
  acc = (pred == small).mean()
  assert acc > 0.95, acc
  assert model.config.feature_layers == ("input", "L1") and model.config.resolution == 16

  # same shapes and hyper-parameters: the jitted step is not retraced
  n = segmenter_train._train_step._cache_size()
  _, losses2 = segmenter_train.train_segmenter(jax.random.key(0), feats, masks, 3, epochs=12, lr=3e-3,
                                   step_epochs=10, feature_layers=("input", "L1"),
                                   label_names=("bg", "a", "b"))
  assert segmenter_train._train_step._cache_size() == n
  np.testing.assert_allclose(losses2, losses, rtol=1e-5)  # same key, same run

  # checkpoint round trip
  checkpoint.save(tmp_path / "seg", model)
  loaded = checkpoint.load(tmp_path / "seg", role="segmenter")
  assert loaded.config == model.config
  np.testing.assert_array_equal(np.asarray(loaded.head(jnp.asarray(feats))),
                                np.asarray(model.head(jnp.asarray(feats))))


class _FakeConfig:
  layer_names = ("input", "L0_8_4", "L1_8_4", "L2_12_4", "L3_12_3")
  num_ws = 2
  w_dim = 6


class _FakeGenerator(nnx.Module):
  """Minimal stand-in with the generator's feature contract (NCHW features keyed by name)."""
  layer_names = _FakeConfig.layer_names
  config = _FakeConfig()

  def __init__(self, *, rngs):
    self.proj = nnx.Linear(6, 4, rngs=rngs)

  def synthesis(self, ws, return_features=False):
    h = self.proj(ws[:, 0])[:, :, None, None]  # [B, 4, 1, 1]
    feats = {}
    for i, name in enumerate(self.layer_names):
      size = int(name.split("_")[1]) if "_" in name else 6
      ramp = jnp.linspace(0.0, 1.0, size, dtype=jnp.float32)
      f = jnp.sin(h * float(i + 1) + ramp[:, None] + 2 * ramp[None, :])
      feats[name] = f[:, :3] if name.endswith("_3") else f
    img = jnp.tanh(feats["L3_12_3"])
    return (img, feats) if return_features else img


def test_extract_and_segment_with_feature_contract():
  gen = _FakeGenerator(rngs=nnx.Rngs(0))
  ws = np.random.default_rng(0).normal(size=(5, 2, 6)).astype(np.float32)
  layers = seg.reference_feature_layers(gen.layer_names)
  assert layers == ("input", "L1_8_4", "L2_12_4") or layers == ("input", "L1_8_4")
  feats = segmenter_train.extract_features(gen, ws, layers, resolution=16, batch_size=2)  # padded last batch
  _, direct = gen.synthesis(jnp.asarray(ws), return_features=True)
  ref = np.asarray(seg.concat_features(seg.select_features(direct, layers), 16))
  np.testing.assert_allclose(feats, ref, rtol=1e-6, atol=1e-6)

  cfg = seg.SegmenterConfig(in_channels=feats.shape[-1], n_labels=3, resolution=16,
                            feature_layers=layers)
  model = seg.FewShotSegmenter(cfg, rngs=nnx.Rngs(1))
  models, params = bundle.ModelBundle.from_models(generator=gen, segmenter=model)
  masks, images = masks_lib.segment_ws(models, params, ws, batch_size=2)
  assert masks.shape == (5, 16, 16) and images.shape == (5, 12, 12, 3)
  assert images.dtype == np.uint8
  np.testing.assert_array_equal(masks, np.argmax(np.asarray(model.head(jnp.asarray(feats))), -1))
  np.testing.assert_array_equal(
      np.asarray(seg.segment_features(model, direct)).argmax(-1), masks)


def test_load_masks_png_and_npz(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  m = rng.integers(0, 10, size=(3, 20, 20)).astype(np.uint8)
  for i, idx in enumerate([4, 0, 11]):
    Image.fromarray(m[i], mode="L").save(tmp_path / f"{idx}.png")
  idx, got = masks_lib.load_masks(tmp_path, n=12)
  np.testing.assert_array_equal(idx, [0, 4, 11])
  np.testing.assert_array_equal(got, m[[1, 0, 2]])
  with pytest.raises(ValueError):
    masks_lib.load_masks(tmp_path, n=5)
  np.savez(tmp_path / "masks.npz", masks=m)
  idx, got = masks_lib.load_masks(tmp_path / "masks.npz")
  np.testing.assert_array_equal(idx, [0, 1, 2])
  np.testing.assert_array_equal(got, m)
  grid = masks_lib.overlay_grid(np.zeros((3, 32, 32, 3), np.uint8), got, 10, cols=2)
  assert grid.shape == (40, 80, 3) and grid.dtype == np.uint8


@pytest.mark.slow
def test_end_to_end_with_converted_fixture(fixtures_dir, tmp_path):
  """Binaries on the converted tiny StyleGAN-XL; features checked against the torch reference."""
  sgxl = pytest.importorskip("ports.stylegan_xl")
  ref = np.load(fixtures_dir / "sgxl_tiny_ref.npz")
  gen = sgxl.convert_network_pickle(fixtures_dir / "sgxl_tiny.pkl")
  ws = ref["ws_psi70"].astype(np.float32)
  layers = seg.reference_feature_layers(gen.layer_names)
  assert layers == ("input", "L1_36_16", "L3_36_16", "L6_52_16", "L8_32_16")
  feats = segmenter_train.extract_features(gen, ws, layers, resolution=32, batch_size=4)
  # independent: the reference's per-layer outputs, resized with the integer nearest rule
  expected = []
  for name in layers:
    f = ref[f"feat_psi70_{name}"]
    i = (np.arange(32) * f.shape[-1]) // 32
    expected.append(f[:, :, i][:, :, :, i])
  expected = np.concatenate(expected, axis=1).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(feats, expected, atol=1e-4 * np.abs(expected).max())

  gen_dir, seg_dir, out_dir = tmp_path / "gen", tmp_path / "seg", tmp_path / "pred"
  checkpoint.save(gen_dir, gen)
  np.savez(tmp_path / "samples.npz", ws=ws)
  from PIL import Image
  masks = (np.arange(64)[None, :, None] // 16 + np.zeros((2, 64, 64), int)).astype(np.uint8)
  for i in range(2):
    Image.fromarray(masks[i], mode="L").save(tmp_path / f"{2 * i + 1}.png")
  common = [f"--generator={gen_dir}", f"--samples={tmp_path / 'samples.npz'}"]
  subprocess.run([sys.executable, "-m", "experiments.train_segmenter", *common,
                  f"--masks={tmp_path}", "--labels=background,a,b,c", f"--out={seg_dir}",
                  "--epochs=1", "--resolution=32", "--batch=2"], check=True)
  loaded = checkpoint.load(seg_dir, role="segmenter")
  assert loaded.config.feature_layers == layers and loaded.config.n_labels == 4
  assert loaded.config.in_channels == expected.shape[-1]
  subprocess.run([sys.executable, "-m", "experiments.segment", *common,
                  f"--segmenter={seg_dir}", f"--out={out_dir}", "--batch=4"], check=True)
  pred = np.load(out_dir / "masks.npz")["masks"]
  assert pred.shape == (4, 32, 32)
  direct = np.argmax(np.asarray(loaded.head(jnp.asarray(feats))), -1)
  np.testing.assert_array_equal(pred, direct)
  assert (out_dir / "overlay.png").is_file()


def test_training_loop_equals_a_scanned_reference():
  """The Python-driven step loop equals one jitted scan over epochs and shuffled images."""
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.normal(size=(3, 16, 16, 8)).astype(np.float32))
  masks = rng.integers(0, 4, size=(3, 16, 16)).astype(np.int32)
  key, epochs, step_epochs = jax.random.key(3), 3, 2
  model, losses = segmenter_train.train_segmenter(key, feats, masks, 4, epochs=epochs, step_epochs=step_epochs)

  init = seg.FewShotSegmenter(model.config, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
  graphdef, params = nnx.split(init)
  tx = segmenter_train.torch_adam(1e-3, 1e-3, 3 * step_epochs)
  y_all = jnp.asarray(masks)

  def loss_fn(p, x, y):
    logits = nnx.merge(graphdef, p).head(x[None])[0]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

  def step(carry, i):
    p, s = carry
    loss, g = jax.value_and_grad(loss_fn)(p, feats[i], y_all[i])
    with jax.numpy_dtype_promotion("standard"):
      u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), loss

  def epoch(carry, e):
    order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), e), 3)
    carry, l = jax.lax.scan(step, carry, order)
    return carry, jnp.mean(l)

  (ref_params, _), ref_losses = jax.jit(
      lambda p: jax.lax.scan(epoch, (p, tx.init(p)), jnp.arange(epochs)))(params)
  np.testing.assert_allclose(losses, np.asarray(ref_losses), rtol=1e-5)
  # Loop and scan compile the convolutions differently (float32 summation order). Adam divides
  # each update by the gradient's RMS, so a rounding error delta in a gradient component g moves
  # that weight's step by ~lr * delta / |g|: weights whose gradient nearly cancels amplify
  # rounding. Measured over these 9 steps (lr 1e-3 x6, 1e-4 x3; weights move up to 6.3e-3):
  # +-1 ulp on the initial params moves max|dw| by 3e-6..1.1e-5 (30 draws) with <= 12 of 139 684
  # weights beyond 1e-6 (another machine's loop-vs-scan gap: 1.4e-5 on one weight, which failed
  # the old atol=1e-5). Real mistakes (another shuffle order, decay period, weight decay or eps)
  # move > 98% of the weights by > 1e-5 and the worst by > 2e-3. So: the bulk to 1e-6, every
  # weight to 1e-4 (~10x the rounding tail, a tenth of one lr step).
  d = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                      for a, b in zip(jax.tree.leaves(nnx.state(model)),
                                      jax.tree.leaves(ref_params))])
  assert np.mean(d > 1e-6) < 1e-3, (np.sum(d > 1e-6), d.size)
  assert d.max() < 1e-4, d.max()


# --- the projected head (per-layer 1x1 projections at each map's resolution) -----------------


def _projected_config(**kw):
  fields = dict(in_channels=9, n_labels=3, resolution=32, feature_layers=("a", "b", "c"),
                feature_margins=(2, 2, 0), head="projected", feature_channels=(4, 3, 2),
                proj_channels=(2, 3, 1), dilations=(1, 2, 1), widths=(6, 5))
  return seg.SegmenterConfig(**(fields | kw))


def _projected_maps(rng, batch=2):
  # a 16-rate map with 2-pixel margins (x2), a 32-rate one with margins, one at the output size
  return [jnp.asarray(rng.normal(size=s).astype(np.float32))
          for s in [(batch, 4, 20, 20), (batch, 3, 36, 36), (batch, 2, 32, 32)]]


def _stack_f64(model, x):
  """The 3x3 stack in float64 numpy: 'same' zero padding, LeakyReLU between convolutions."""
  for i, conv in enumerate(model.layers):
    if i:
      x = np.where(x >= 0, x, seg.LEAKY_SLOPE * x)
    d = conv.kernel_dilation[0]
    w = np.asarray(conv.kernel[...], np.float64)
    xp = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (w.shape[-1],)) + np.asarray(conv.bias[...], np.float64)
    for ky in range(3):
      for kx in range(3):
        out += xp[:, ky * d:ky * d + h, kx * d:kx * d + wd] @ w[ky, kx]
    x = out
  return x


def test_projected_head_equals_projection_after_the_resize():
  cfg = _projected_config()
  model = seg.FewShotSegmenter(cfg, rngs=nnx.Rngs(3))
  assert [lin.kernel.shape for lin in model.proj] == [(4, 2), (3, 3), (2, 1)]
  assert [c.kernel.shape for c in model.layers] == [(3, 3, 6, 6), (3, 3, 6, 5), (3, 3, 5, 3)]
  maps = _projected_maps(np.random.default_rng(0))
  # independent reference in float64: crop, integer nearest resize, then each 1x1 projection
  parts = []
  for f, m, lin in zip(maps, cfg.feature_margins, model.proj):
    f = np.asarray(f, np.float64)[:, :, m:f.shape[2] - m, m:f.shape[3] - m]
    i = (np.arange(32) * f.shape[2]) // 32
    up = f[:, :, i][:, :, :, i].transpose(0, 2, 3, 1)
    parts.append(up @ np.asarray(lin.kernel[...], np.float64) + np.asarray(lin.bias[...]))
  ref = _stack_f64(model, np.concatenate(parts, axis=-1))
  new = np.asarray(jax.jit(lambda ms: model(ms))(maps))  # projection before the resize
  x = seg.concat_features(maps, 32, cfg.feature_margins)
  old = np.asarray(jax.jit(lambda a: model.head(a))(x))  # projection after it (training)
  tol = 1e-5 * np.abs(ref).max()
  np.testing.assert_allclose(new, ref, atol=tol, rtol=0)
  np.testing.assert_allclose(old, ref, atol=tol, rtol=0)
  # a projection mistake (e.g. maps swapped between projections) is far outside that
  swapped = [lin.kernel[...] for lin in model.proj]
  model.proj[0].kernel[...] = swapped[0][:, ::-1]
  assert np.abs(np.asarray(model(maps)) - ref).max() > 100 * tol


def test_projected_head_config_checks():
  with pytest.raises(ValueError, match="head must be"):
    _projected_config(head="sparse")
  with pytest.raises(ValueError, match="one per feature map"):
    _projected_config(proj_channels=(2, 3))
  with pytest.raises(ValueError, match="sum to"):
    _projected_config(feature_channels=(4, 3, 3))
  with pytest.raises(ValueError, match="one fewer"):
    _projected_config(widths=(6,))
  with pytest.raises(ValueError, match="only for the projected head"):
    seg.SegmenterConfig(in_channels=9, n_labels=3, proj_channels=(2,))
  dense = seg.SegmenterConfig(in_channels=9, n_labels=3, dilations=(1, 3), widths=(7,))
  m = nnx.eval_shape(lambda: seg.FewShotSegmenter(dense, rngs=nnx.Rngs(0)))
  assert [c.kernel.shape for c in m.layers] == [(3, 3, 9, 7), (3, 3, 7, 3)]
  assert [c.kernel_dilation for c in m.layers] == [(1, 1), (3, 3)]


def test_projected_head_trains_round_trips_and_does_not_retrace(tmp_path):
  feats, masks, small = _toy_problem()  # features [2, 16, 16, 4]: two 'layers' of 2 channels
  head = dict(head="projected", feature_channels=(2, 2), proj_channels=(3, 2),
              dilations=(1, 2, 1), widths=(16, 16))
  kw = dict(epochs=12, lr=1e-2, step_epochs=10, feature_layers=("input", "L1"),
            label_names=("bg", "a", "b"), head=head)
  model, losses = segmenter_train.train_segmenter(jax.random.key(0), feats, masks, 3, **kw)
  assert model.config.head == "projected" and model.config.proj_channels == (3, 2)
  assert losses[-1] < 0.1 * losses[0], losses
  pred = np.argmax(np.asarray(model.head(jnp.asarray(feats))), -1)
  assert (pred == small).mean() > 0.95
  n = segmenter_train._train_step._cache_size()
  _, losses2 = segmenter_train.train_segmenter(jax.random.key(0), feats, masks, 3, **kw)
  assert segmenter_train._train_step._cache_size() == n
  np.testing.assert_allclose(losses2, losses, rtol=1e-5)
  # the inference path on per-layer maps (here already at the output size) agrees
  maps = [jnp.asarray(feats[..., :2].transpose(0, 3, 1, 2)),
          jnp.asarray(feats[..., 2:].transpose(0, 3, 1, 2))]
  np.testing.assert_allclose(np.asarray(model(maps)), np.asarray(model.head(jnp.asarray(feats))),
                             atol=1e-5)
  checkpoint.save(tmp_path / "seg", model)
  loaded = checkpoint.load(tmp_path / "seg", role="segmenter")
  assert loaded.config == model.config
  np.testing.assert_array_equal(np.asarray(loaded(maps)), np.asarray(model(maps)))


def test_old_checkpoints_load_as_the_dense_head(tmp_path):
  """A config.json written before the head fields existed loads as today's dense head."""
  model = seg.FewShotSegmenter(seg.SegmenterConfig(in_channels=5, n_labels=3, resolution=8),
                               rngs=nnx.Rngs(0))
  checkpoint.save(tmp_path / "s", model)
  meta = json.loads((tmp_path / "s" / "config.json").read_text())
  for k in ("head", "feature_channels", "proj_channels", "dilations", "widths"):
    del meta["config"][k]
  (tmp_path / "s" / "config.json").write_text(json.dumps(meta))
  loaded = checkpoint.load(tmp_path / "s", role="segmenter")
  assert loaded.config == model.config and loaded.config.head == "dense"
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 8, 5)).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(loaded.head(x)), np.asarray(model.head(x)))


def test_train_on_generator_with_projected_head_and_bundle_segment():
  gen = _FakeGenerator(rngs=nnx.Rngs(0))
  ws = np.random.default_rng(0).normal(size=(3, 2, 6)).astype(np.float32)
  layers = ("input", "L1_8_4", "L2_12_4")
  masks = np.random.default_rng(1).integers(0, 3, size=(3, 16, 16))
  model, _ = segmenter_train.train_on_generator(
      jax.random.key(0), gen, ws, masks, ("bg", "a", "b"), epochs=1, resolution=16,
      feature_layers=layers, head=dict(head="projected", proj_channels=(2, 1, 2),
                                       dilations=(1, 1), widths=(4,)))
  assert model.config.feature_channels == (4, 4, 4)  # filled in from the generator
  models, params = bundle.ModelBundle.from_models(generator=gen, segmenter=model)
  got, _ = masks_lib.segment_ws(models, params, ws, batch_size=2)
  feats = segmenter_train.extract_features(gen, ws, layers, resolution=16)
  np.testing.assert_array_equal(got, np.argmax(np.asarray(model.head(jnp.asarray(feats))), -1))
