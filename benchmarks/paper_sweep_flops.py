r"""FLOPs of the paper's full unit sweep, from XLA's cost analysis of the real architectures.

  python -m benchmarks.paper_sweep_flops [--chunk=8]

Builds the sweep's chunk step for the paper's geometry without weights (abstract shapes only:
nothing is allocated or run): StyleGAN-XL ImageNet-256 (`stylegan_xl.imagenet_config(256)`),
torchvision ResNet-50 (resize 256, crop 224), the few-shot segmenter (size S, the reference's
feature layers, masks at 128 x 128, 10 labels), an OLS link 2048 -> 512, and the part metrics on
the 128 x 128 images. Prints GFLOP per image and the paper's full sweep (2048 units x 100 samples
x 5 classes x 3 steps) in PFLOP, with the time on N accelerators at an assumed sustained
throughput (an assumption, printed as such: measure with `experiments.plan` on the real
machine).
"""

import functools

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from linkjax import bundle, sweep
from linkjax.models import resnet, segmenter, stylegan_xl

_CHUNK = flags.DEFINE_integer("chunk", 8, "Images per step (FLOPs are per image).")
_GPUS = flags.DEFINE_integer("gpus", 8, "Accelerators for the time estimate.")
_TFLOPS = flags.DEFINE_float("sustained_tflops", 25.0, "Assumed sustained TFLOP/s per "
                             "accelerator (fp32 convolutions; an H100/H200 peaks at ~67 fp32, "
                             "~990 bf16).")


def _abstract(model_cls, config):
  return nnx.split(nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0))))


def _gflop(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / 1e9


def main(argv):
  del argv
  g_cfg = stylegan_xl.imagenet_config(256)
  c_cfg = resnet.ResNetConfig(depth=50)
  g_def, g_state = _abstract(stylegan_xl.StyleGANXL, g_cfg)
  layers = segmenter.reference_feature_layers(g_cfg.layer_names)
  _, feats = jax.eval_shape(
      lambda s, w: nnx.merge(g_def, s).synthesis(w, return_features=True), g_state,
      jax.ShapeDtypeStruct((1, g_cfg.num_ws, g_cfg.w_dim), jnp.float32))
  s_cfg = segmenter.SegmenterConfig(in_channels=sum(feats[n].shape[1] for n in layers),
                                    n_labels=10, feature_layers=layers, resolution=128)
  c_def, c_state = _abstract(resnet.ResNet, c_cfg)
  s_def, s_state = _abstract(segmenter.FewShotSegmenter, s_cfg)
  models = bundle.ModelBundle(generator=g_def, classifier=c_def, segmenter=s_def,
                              generator_config=g_cfg, classifier_config=c_cfg,
                              segmenter_config=s_cfg)
  r_dim, b = c_cfg.num_features, _CHUNK.value
  link = {"kernel": jax.ShapeDtypeStruct((r_dim, g_cfg.w_dim), jnp.float32),
          "bias": jax.ShapeDtypeStruct((g_cfg.w_dim,), jnp.float32)}
  params = {"generator": g_state, "classifier": c_state, "segmenter": s_state, "link": link}
  fn = jax.jit(functools.partial(sweep.sweep_chunk, models, classes=(0,), micro_batch=None))
  idx = jax.ShapeDtypeStruct((b,), jnp.int32)
  gflop = _gflop(fn, params, jax.ShapeDtypeStruct((b, r_dim), jnp.float32),
                 jax.ShapeDtypeStruct((r_dim, 3), jnp.float32), idx, idx, idx) / b
  ws = jax.ShapeDtypeStruct((b, g_cfg.num_ws, g_cfg.w_dim), jnp.float32)
  parts = {
      "generator (image + features)": _gflop(
          jax.jit(lambda s, w: nnx.merge(g_def, s).synthesis(w, return_features=True)),
          g_state, ws),
      "classifier (exact input path)": _gflop(
          jax.jit(lambda p, u8: models.classify_uint8(p, u8)[0]), params,
          jax.ShapeDtypeStruct((b, 256, 256, 3), jnp.uint8)),
      "segmenter": _gflop(jax.jit(lambda p, f: models.segment(p, f)), params,
                          {n: jax.ShapeDtypeStruct((b, *feats[n].shape[1:]), jnp.float32)
                           for n in layers}),
  }
  for name, v in parts.items():
    print(f"  {name}: {v / b:.1f} GFLOP per image")
  images = 2048 * 100 * 5 * 3
  pflop = images * gflop / 1e6
  hours = pflop * 1e15 / (_GPUS.value * _TFLOPS.value * 1e12) / 3600
  print(f"per image: {gflop:.1f} GFLOP (link + StyleGAN-XL 256 + ResNet-50 + segmenter at 128 + "
        "part metrics)")
  print(f"paper's full sweep: {images} images, {pflop:.1f} PFLOP; on {_GPUS.value} accelerators "
        f"at an assumed {_TFLOPS.value:g} TFLOP/s sustained each: {hours:.1f} h")


if __name__ == "__main__":
  app.run(main)
