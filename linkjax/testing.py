"""Test fixtures: toy worlds behind the bundle's interface, random models, a tiny world on disk.

Nothing here is part of the method. The toys implement the `ModelBundle` methods a job calls
(`pair_outputs` for pair generation, `sweep_outputs` for sweeps) with a few numpy-drawn weights,
so the job engine can be tested (and benchmarked) in milliseconds, and `build_tiny_world` writes
small random real models, pairs and a link for end-to-end tests.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from linkjax import bundle as bundle_lib
from linkjax import checkpoint, jobs, link, pairs
from linkjax.models import alexnet, densenet, resnet, segmenter, stylegan_xl, vgg


@dataclasses.dataclass(frozen=True)
class ToyPairs:
  """A tiny stand-in for generator + classifier in pair generation.

  w = tanh(z A) + 0.1 b[class], r = w B, logits = (r C) / |r| + bias * onehot(class). Given r the
  unbiased logits are independent standard normals across classes and, r being nearly symmetric,
  each class's own logit is centred near 0; the class bias is the median of the maximum of
  num_classes - 1 standard normals, so argmax(logits) == class for roughly `acceptance` of the
  draws of every class. psi is ignored.
  """
  z_dim: int = 8
  w_dim: int = 6
  r_dim: int = 5
  num_classes: int = 10
  seed: int = 0
  acceptance: float = 0.5

  def params(self) -> dict[str, jax.Array]:
    # numpy weights: no XLA compilation (threefry compiles for about a second per shape on CPU).
    rng = np.random.default_rng(self.seed)
    p = {"a": rng.standard_normal((self.z_dim, self.w_dim)) / np.sqrt(self.z_dim),
         "b": rng.standard_normal((self.num_classes, self.w_dim)),
         "bm": rng.standard_normal((self.w_dim, self.r_dim)),
         "c": rng.standard_normal((self.r_dim, self.num_classes))}
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}

  def describe(self) -> dict[str, Any]:
    return {"toy_pairs": [self.z_dim, self.w_dim, self.r_dim, self.num_classes, self.seed]}

  def pair_outputs(self, params, z, class_idx, psi: float = 1.0) -> dict[str, jax.Array]:
    del psi
    m = self.num_classes - 1
    bias = jnp.float32(statistics.NormalDist().inv_cdf((1.0 - self.acceptance) ** (1.0 / m))
                       if m >= 1 else 0.0)
    w = jnp.tanh(z @ params["a"]) + jnp.float32(0.1) * params["b"][class_idx]
    r = w @ params["bm"]
    norm = jnp.sqrt(jnp.sum(r * r, axis=-1, keepdims=True)) + jnp.float32(1e-6)
    logits = (r @ params["c"]) / norm + bias * jax.nn.one_hot(class_idx, self.num_classes,
                                                              dtype=jnp.float32)
    return {"w": w, "r": r, "logits": logits}


@dataclasses.dataclass(frozen=True)
class FnPairs:
  """A plain traceable `fn(z, class_idx) -> {'w', 'r', 'logits'}` as pair-generation models."""
  fn: Callable[[jax.Array, jax.Array], Mapping[str, jax.Array]]
  z_dim: int

  def describe(self) -> dict[str, Any]:
    return {"fn": getattr(self.fn, "__name__", "fn"), "z_dim": self.z_dim}

  def pair_outputs(self, params, z, class_idx, psi: float = 1.0) -> dict[str, jax.Array]:
    del params, psi
    return dict(self.fn(z, class_idx))


@dataclasses.dataclass(frozen=True)
class ToySweep:
  """A tiny stand-in for link + generator + classifier + segmenter in sweeps.

  Link: w = r @ K + b with K[:, 0] = e_0 and b[0] = 0, so w[0] = r[0]. Image and masks: label 1 is
  a centred square of half-side `2 + 3 * w[0]` pixels (so unit 0, and only unit 0, controls its
  area), label 2 the bottom 3 rows; grey level sigmoid(w[1]) inside the square, a fixed ramp
  elsewhere. Probabilities: softmax(w @ C).
  """
  r_dim: int = 6
  w_dim: int = 4
  num_classes: int = 5
  resolution: int = 16
  seed: int = 0
  n_labels: int = 3
  label_names: tuple[str, ...] = ("background", "square", "floor")

  @property
  def mask_resolution(self) -> int:
    return self.resolution

  def params(self) -> dict[str, jax.Array]:
    rng = np.random.default_rng(self.seed)
    k = (rng.standard_normal((self.r_dim, self.w_dim)) / np.sqrt(self.r_dim)).astype(np.float32)
    k[:, 0] = 0.0
    k[0, 0] = 1.0
    b = rng.standard_normal(self.w_dim).astype(np.float32)
    b[0] = 0.0
    c = rng.standard_normal((self.w_dim, self.num_classes)).astype(np.float32)
    return {"k": jnp.asarray(k), "b": jnp.asarray(b), "c": jnp.asarray(c)}

  def describe(self) -> dict[str, Any]:
    return {"toy_sweep": [self.r_dim, self.w_dim, self.num_classes, self.resolution, self.seed]}

  def sweep_outputs(self, params, r) -> dict[str, jax.Array]:
    res = self.resolution
    w = r @ params["k"] + params["b"]
    pos = jnp.abs(jnp.arange(res, dtype=jnp.float32) - jnp.float32((res - 1) / 2))
    half = (jnp.float32(2.0) + jnp.float32(3.0) * w[:, 0])[:, None, None]
    square = (pos[None, :, None] < half) & (pos[None, None, :] < half)
    bottom = jnp.arange(res)[None, :, None] >= res - 3
    masks = jnp.where(square, 1, jnp.where(bottom, 2, 0)).astype(jnp.int32)
    masks = jnp.broadcast_to(masks, (r.shape[0], res, res))
    ramp = jnp.linspace(0.0, 1.0, res, dtype=jnp.float32)[None, None, :]
    grey = jnp.where(square, jax.nn.sigmoid(w[:, 1])[:, None, None], ramp)
    images = jnp.round(jnp.float32(255.0) * grey).astype(jnp.uint8)
    images = jnp.broadcast_to(images[..., None], (r.shape[0], res, res, 3))
    return {"probs": jax.nn.softmax(w @ params["c"], axis=-1), "masks": masks, "images": images}


@dataclasses.dataclass(frozen=True)
class FnSweep:
  """A plain traceable `apply(params, r) -> {'probs', 'masks', 'images'}` as sweep models."""
  apply: Callable[[Any, jax.Array], Mapping[str, jax.Array]]
  n_labels: int
  mask_resolution: int = 0
  label_names: tuple[str, ...] = ()

  def describe(self) -> dict[str, Any]:
    return {"fn": getattr(self.apply, "__name__", "apply"), "n_labels": self.n_labels}

  def sweep_outputs(self, params, r) -> dict[str, jax.Array]:
    return dict(self.apply(params, r))


def random_module(model_cls: type, config: Any, seed: int) -> Any:
  """A model with numpy-drawn random weights and randomised BatchNorm statistics.

  Built from `nnx.eval_shape` and filled on the host: the modules' own initialisers compile one
  random-number kernel per parameter shape, which takes tens of seconds on a small CPU machine.
  """
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0))))

  def fill(path, leaf):
    name = str(path[-2].key) if len(path) >= 2 else ""
    shape = leaf.shape
    if name == "kernel":
      x = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name in ("scale", "var"):
      x = 1.0 + 0.2 * rng.uniform(size=shape)
    else:  # bias, mean
      x = 0.1 * rng.normal(size=shape)
    return jnp.asarray(x, leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def tiny_resnet_config(num_classes: int = 10, width: int = 4) -> resnet.ResNetConfig:
  """Bottleneck ResNet, one block per stage (R = 32 x width), input transform 72 / 64."""
  return resnet.ResNetConfig(depth=50, width=width, num_classes=num_classes,
                             stage_sizes=(1, 1, 1, 1), block="bottleneck", resize=72, crop=64)


def tiny_classifier(family: str, num_classes: int = 10, r_layer: str = "original"
                    ) -> tuple[type, Any]:
  """(model class, config) of a tiny random-weight classifier of a family, input 72 / 64.

  Args:
    family: 'resnet', 'vgg', 'vgg_bn', 'alexnet' or 'densenet' (torchvision's layouts at small
      widths).
    num_classes: outputs.
    r_layer: 'original' or 'penultimate'.
  """
  geometry = {"num_classes": num_classes, "resize": 72, "crop": 64, "r_layer": r_layer}
  if family == "resnet":
    return resnet.ResNet, dataclasses.replace(tiny_resnet_config(num_classes), r_layer=r_layer)
  if family in ("vgg", "vgg_bn"):
    return vgg.VGG, vgg.VGGConfig(layers=(4, "M", 8, "M", 8, 8, "M"), hidden=16,
                                  batch_norm=family == "vgg_bn", **geometry)
  if family == "alexnet":
    return alexnet.AlexNet, alexnet.AlexNetConfig(widths=(4, 8, 8, 6, 8), hidden=16, **geometry)
  if family == "densenet":
    return densenet.DenseNet, densenet.DenseNetConfig(
        growth_rate=4, block_config=(2, 2, 1, 1), num_init_features=8, bn_size=2, **geometry)
  raise ValueError(f"unknown classifier family {family!r}")


def build_tiny_world(out_dir: str | pathlib.Path, *, seed: int = 0, num_classes: int = 10,
                     n_pairs: int = 256, generator_dir: str | pathlib.Path | None = None,
                     batch: int = 64, segmenter_labels: int = 0, classifier: str = "resnet",
                     r_layer: str = "original") -> dict[str, Any]:
  """Writes tiny random models, a pair directory and an OLS link under `out_dir`.

  Classifier: `tiny_classifier(classifier, num_classes, r_layer)`. Generator: `generator_dir`
  (e.g. the converted
  fixture) or a random `stylegan_xl.tiny_config()` model. Pairs: z ~ N(0, 1), classes
  0..num_classes-1, psi 0.7; the pair's class is the classifier's prediction on the generated
  image (so every pair is "correct").

  Args:
    out_dir: directory receiving classifier/, generator/, link/ and pairs/pairs.npz.
    seed: seed of the random weights and latents.
    num_classes: classifier outputs.
    n_pairs: number of pairs.
    generator_dir: optional generator checkpoint to use instead of a random tiny one.
    batch: generation batch size.
    segmenter_labels: if > 0, also write a random segmenter/ (size S, that many labels, the
      reference's feature layers, masks at the generator's resolution).
    classifier, r_layer: the classifier family and its representation layer.
  Returns:
    {'classifier', 'generator', 'link', 'pairs', 'segmenter' (or None): paths,
     'class_counts': {class: count}}.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  key = jax.random.key(seed)
  if generator_dir is not None:
    gen = checkpoint.load(generator_dir, role="generator")
  else:
    gen = stylegan_xl.StyleGANXL(stylegan_xl.tiny_config(), rngs=nnx.Rngs(seed))
  clf = random_module(*tiny_classifier(classifier, num_classes, r_layer), seed + 1)
  models, params = bundle_lib.ModelBundle.from_models(generator=gen, classifier=clf)
  z_all = jax.random.normal(jax.random.fold_in(key, 0), (n_pairs, gen.config.z_dim), jnp.float32)
  c_all = jax.random.randint(jax.random.fold_in(key, 1), (n_pairs,), 0, num_classes, jnp.int32)
  out_pairs = _pair_outputs(models, params, z_all, c_all, batch)
  w, r, logits = out_pairs["w"], out_pairs["r"], out_pairs["logits"]
  cls = logits.argmax(-1).astype(np.int32)
  order = np.argsort(cls, kind="stable")
  (out / "pairs").mkdir(exist_ok=True)
  np.savez(out / "pairs" / pairs.PAIRS_FILE, w=w[order], r=r[order], class_idx=cls[order],
           z=np.asarray(z_all)[order], logits=logits[order],
           draw_idx=np.arange(n_pairs, dtype=np.int32)[order])
  checkpoint.save(out / "classifier", clf)
  checkpoint.save(out / "generator", gen)
  link.save(out / "link", link.fit(r, w, model="ols"), {"model": "ols", "tiny_world": True})
  seg_path = None
  if segmenter_labels > 0:
    layers = segmenter.reference_feature_layers(gen.layer_names)
    _, feats = jax.eval_shape(lambda p, w: models.render(p, w, features=True), params,
                              jax.ShapeDtypeStruct((1, gen.config.w_dim), jnp.float32))
    seg = random_module(segmenter.FewShotSegmenter, segmenter.SegmenterConfig(
        in_channels=sum(feats[n].shape[1] for n in layers), n_labels=segmenter_labels,
        feature_layers=layers, resolution=gen.config.img_resolution), seed + 2)
    seg_path = str(out / "segmenter")
    checkpoint.save(seg_path, seg)
  counts = {int(c): int(n) for c, n in zip(*np.unique(cls, return_counts=True))}
  return {"classifier": str(out / "classifier"), "generator": str(out / "generator"),
          "link": str(out / "link"), "pairs": str(out / "pairs"), "segmenter": seg_path,
          "class_counts": counts}


@functools.partial(jax.jit, static_argnums=0)
def _tiny_pairs(models, params, z, c):
  return models.pair_outputs(params, z, c, psi=0.7)


def _pair_outputs(models, params, z, c, batch) -> dict[str, np.ndarray]:
  return jobs.map_batches(functools.partial(_tiny_pairs, models), params, np.asarray(z),
                          np.asarray(c), batch=batch, mesh=jobs.data_mesh(1))
