"""The shipped miniworld generator reproduces the renderer; training runs; the fast VJPs are exact."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from linkjax import checkpoint
from linkjax import miniworld as world
from linkjax.miniworld import train_generator as tg
from linkjax.models import stylegan_ops as ops
from linkjax.models import stylegan_xl as sx

WEIGHTS = pathlib.Path(tg.__file__).parent / "weights" / "generator"


@pytest.fixture(scope="module")
def shipped():
  if not (WEIGHTS / "config.json").exists():
    pytest.skip("generator weights not shipped in this checkout")
  return checkpoint.load(WEIGHTS, role="generator")


def test_shipped_generator_matches_renders(shipped):
  cfg = shipped.config
  assert cfg.z_dim == world.THETA_DIM and cfg.c_dim == world.NUM_CLASSES
  assert cfg.img_resolution == world.SIZE
  n = 20
  z = jax.random.normal(jax.random.key(1234), (n, cfg.z_dim), jnp.float32)
  c = jnp.arange(n, dtype=jnp.int32) % world.NUM_CLASSES
  graphdef, state = nnx.split(shipped)

  @jax.jit
  def gen(state, z, c):
    return tg.generated_images(nnx.merge(graphdef, state), z, c)

  x1 = np.asarray(gen(state, z, c))
  x2 = np.asarray(gen(state, z, c))
  np.testing.assert_array_equal(x1, x2)  # deterministic
  target = np.asarray(tg.render_target(z, c)[0])
  mse_same = np.mean((x1 - target) ** 2, axis=(1, 2, 3))
  # Renders of other z of the same class (shift by one class cycle).
  other = np.roll(target, world.NUM_CLASSES, axis=0)
  mse_other = np.mean((x1 - other) ** 2, axis=(1, 2, 3))
  ratio = mse_same.mean() / mse_other.mean()
  assert ratio < 0.5, (mse_same.mean(), mse_other.mean())
  # Sample-wise: nearly every image is closer to its own render than to another one.
  assert np.mean(mse_same < mse_other) >= 0.9
  # w_avg was set (per class, distinct) and truncation moves images towards it.
  w_avg = np.asarray(shipped.mapping.w_avg[...])
  assert np.all(np.linalg.norm(w_avg, axis=1) > 0)
  assert np.min(np.linalg.norm(w_avg[:, None] - w_avg[None], axis=-1)
                + np.eye(world.NUM_CLASSES) * 1e9) > 1e-3


@pytest.mark.slow
def test_training_step_learns_and_w_avg_is_class_mean():
  cfg = tg.generator_config(w_dim=16, embed_dim=8, channel_base=128, channel_max=8,
                            stem_layers=4, head_layers=4)
  model = sx.StyleGANXL(cfg, rngs=nnx.Rngs(params=jax.random.key(0)))
  tg.init_magnitudes(model, jax.random.key(1), batch=4)
  mags = [float(getattr(model.synthesis, s.name).magnitude_ema[...]) for s in cfg.layers]
  assert all(np.isfinite(mags)) and mags != [1.0] * len(mags)

  # Three jitted steps on one fixed batch lower the loss on that batch, with one compile.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = tg._optimizer(3e-3, 100, 0)
  opt_state = tx.init(params)
  step = tg.make_train_step(graphdef, tx, 5, 0.0)
  key = jax.random.key(3)
  losses = []
  for _ in range(3):
    params, rest, opt_state, m = step(params, rest, opt_state, key)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0]
  assert step._cache_size() == 1  # no retrace

  # w_avg is the mean mapping output per class (independent estimate with fresh latents).
  model = nnx.merge(graphdef, params, rest)
  tg.compute_w_avg(model, jax.random.key(4), n_per_class=1024, batch=1024)
  z = jax.random.normal(jax.random.key(7), (2000, cfg.z_dim), jnp.float32)
  w = model.mapping(z, jnp.full((2000,), 3, jnp.int32))[:, 0]
  np.testing.assert_allclose(np.asarray(model.mapping.w_avg[...][3]), np.asarray(jnp.mean(w, 0)),
                             atol=0.1 * float(jnp.std(w)) + 1e-6)


@pytest.mark.parametrize("axes,kshape,down", [((2,), (12,), 2), ((1,), (5,), 1),
                                              ((1, 2), (4, 3), 2), ((1,), (7,), 3)])
def test_fir_valid_vjp_matches_direct_sum(axes, kshape, down):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 19, 23, 3)).astype(np.float32)
  k = rng.normal(size=kshape).astype(np.float32)
  y = ops._fir_valid(jnp.asarray(x), jnp.asarray(k), axes, down)
  g = rng.normal(size=y.shape).astype(np.float32)
  dx, dk = jax.grad(lambda x, k: jnp.sum(ops._fir_valid(x, k, axes, down) * g), (0, 1))(
      jnp.asarray(x), jnp.asarray(k))
  # Independent reference: scatter every output's cotangent back onto its input window.
  ref_dx = np.zeros_like(x, np.float64)
  ref_dk = np.zeros(kshape, np.float64)
  for out_idx in np.ndindex(*[y.shape[a] for a in axes]):
    for kidx in np.ndindex(*kshape):
      src = [slice(None)] * 4
      dst = [slice(None)] * 4
      for a, o, i in zip(axes, out_idx, kidx):
        src[a] = o * down + i
        dst[a] = o
      ref_dx[tuple(src)] += g[tuple(dst)] * k[kidx]
      ref_dk[kidx] += np.sum(x[tuple(src)] * g[tuple(dst)])
  np.testing.assert_allclose(np.asarray(dx), ref_dx, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dk), ref_dk, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("k,pad", [(3, 2), (3, 1), (1, 0)])
def test_conv2d_vjp_matches_autodiff_of_xla_conv(k, pad):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
  hi = lax.Precision.HIGHEST
  g = jnp.asarray(rng.normal(size=ops._conv2d(x, w, pad, hi).shape), jnp.float32)
  a = jax.grad(lambda x, w: jnp.sum(ops._conv2d(x, w, pad, hi) * g), (0, 1))(x, w)
  b = jax.grad(lambda x, w: jnp.sum(ops._conv2d_impl(x, w, pad, hi) * g), (0, 1))(x, w)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-4)
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-4)


@pytest.mark.slow
def test_interrupted_then_resumed_run_equals_uninterrupted_and_sums_wall_time(tmp_path):
  cfg = tg.generator_config(w_dim=16, embed_dim=8, channel_base=128, channel_max=8,
                            stem_layers=4, head_layers=4)
  kw = dict(steps=3, batch=4, lr=3e-3, warmup=0, config=cfg, ckpt_every=1, eval_every=1000,
            log=lambda _: None)
  key = jax.random.key(5)
  tg.train_generator(key, work_dir=tmp_path / "straight", **kw)
  # time_limit_s=0: stops after the first step, with a checkpoint.
  tg.train_generator(key, work_dir=tmp_path / "split", time_limit_s=0.0, **kw)
  first = checkpoint.read_tree_meta(tmp_path / "split" / "train_state", tg.TRAIN_STATE_KIND)
  assert first["step"] == 1 and first["elapsed_s"] > 0
  metrics = tg.train_and_save(key, tmp_path / "out", work_dir=tmp_path / "split", resume=True,
                              **kw)
  a, meta_a = checkpoint.load_tree(tmp_path / "straight" / "train_state", tg.TRAIN_STATE_KIND)
  b, meta_b = checkpoint.load_tree(tmp_path / "split" / "train_state", tg.TRAIN_STATE_KIND)
  assert meta_a["step"] == meta_b["step"] == 3
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The total covers both invocations; this invocation's time alone is shorter than it.
  assert metrics["train_wall_s_total"] == pytest.approx(meta_b["elapsed_s"])
  assert first["elapsed_s"] < metrics["train_wall_s_total"]
  assert metrics["train_wall_s_total"] - first["elapsed_s"] <= metrics["train_wall_s"]
  saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert saved["train_wall_s_total"] == pytest.approx(meta_b["elapsed_s"])
