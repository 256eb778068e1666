"""Strided micro-batching: same outputs, fallback, and no collectives on a sharded batch."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flax import nnx

from linkjax import batching, bundle, testing
from linkjax.models import resnet, segmenter, stylegan_xl


def _fn(params, x):
  # per-row: a pytree in, a pytree out
  return {"y": jnp.tanh(x["a"] @ params) + x["b"][:, None], "n": jnp.sum(x["a"], axis=1)}


def _data(b):
  rng = np.random.default_rng(0)
  return {"a": jnp.asarray(rng.normal(size=(b, 5)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(b,)), jnp.float32)}


def test_micro_batched_equals_the_whole_batch_and_falls_back():
  params = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
  for b, micro in [(12, 4), (12, 3), (12, 5), (12, None), (4, 8)]:
    x = _data(b)
    ref = jax.jit(_fn)(params, x)
    out = jax.jit(batching.micro_batched(_fn, micro))(params, x)
    for k in ref:
      np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, atol=1e-6, err_msg=f"{b} {micro} {k}")
  # the steps really are sequential: a while loop appears only where the batch is split
  x = _data(12)
  assert "while" in jax.jit(batching.micro_batched(_fn, 4)).lower(params, x).as_text()
  assert "while" not in jax.jit(batching.micro_batched(_fn, 5)).lower(params, x).as_text()


def test_sharded_batch_needs_no_collectives():
  n_dev = len(jax.devices())
  assert n_dev == 4  # conftest: 4 virtual CPU devices
  mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  params = jnp.ones((5, 3), jnp.float32)
  x = _data(32)

  def compiled(fn):
    return jax.jit(fn, in_shardings=(repl, data), out_shardings=data).lower(
        params, x).compile().as_text()

  strided = compiled(batching.micro_batched(_fn, 2 * n_dev))
  assert "while" in strided and "all-gather" not in strided and "all-to-all" not in strided

  def contiguous(params, x):  # a loop over contiguous slices gathers the batch everywhere
    xs = jax.tree.map(lambda a: a.reshape(4, 8, *a.shape[1:]), x)
    out = jax.lax.map(lambda xi: _fn(params, xi), xs)
    return jax.tree.map(lambda a: a.reshape(32, *a.shape[2:]), out)

  assert "all-gather" in compiled(contiguous)
  assert batching.default_micro_batch() == 2 * n_dev  # CPU backend
  assert batching.default_micro_batch(1) == 2


def test_model_pipeline_micro_batched_equals_whole_batch():
  gen = stylegan_xl.StyleGANXL(stylegan_xl.tiny_config(16), rngs=nnx.Rngs(0))
  clf = testing.random_module(resnet.ResNet, resnet.ResNetConfig(
      depth=50, width=2, num_classes=7, stage_sizes=(1, 1, 1, 1), block="bottleneck",
      resize=None, crop=None), 1)
  layers = segmenter.all_feature_layers(gen.layer_names)
  shapes = jax.eval_shape(lambda w: gen.synthesis(w, return_features=True)[1],
                          jnp.zeros((1, gen.config.num_ws, gen.config.w_dim), jnp.float32))
  seg = testing.random_module(segmenter.FewShotSegmenter, segmenter.SegmenterConfig(
      in_channels=sum(shapes[n].shape[1] for n in layers), n_labels=4, feature_layers=layers,
      resolution=16, feature_margins=segmenter.stylegan_margins(gen.config, layers)), 2)
  rng = np.random.default_rng(3)
  r_dim = clf.config.num_features
  link_params = {"kernel": rng.normal(size=(r_dim, gen.config.w_dim)).astype(np.float32) * 0.1,
                 "bias": rng.normal(size=(gen.config.w_dim,)).astype(np.float32)}
  models, params = bundle.ModelBundle.from_models(generator=gen, classifier=clf, segmenter=seg,
                                                  link=link_params)
  r = jnp.asarray(rng.gamma(1.0, 1.0, (8, r_dim)), jnp.float32)
  steps = batching.micro_batched(models.sweep_outputs, 2)
  ref = jax.jit(models.sweep_outputs)(params, r)
  out = jax.jit(steps)(params, r)
  assert "while" in jax.jit(steps).lower(params, r).as_text()
  np.testing.assert_allclose(out["probs"], ref["probs"], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(out["images"], ref["images"])
  np.testing.assert_array_equal(out["masks"], ref["masks"])
