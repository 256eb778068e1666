"""Trains the miniworld's classifier: a Flax ResNet (or VGG) at reduced width on renders.

Data are rendered on the fly inside the jitted training step (a fresh batch of class labels,
theta and images each step), so there is no data set to store and no overfitting to a finite
sample; held-out evaluation uses a disjoint PRNG stream. Images take the same path as generated
images do later: float [0, 1] -> uint8 by truncation (`preprocess.to_uint8` of 2x - 1) ->
`preprocess.classifier_input` with the config's resize/crop (None: the 64x64 image itself,
ImageNet-normalised).

Planted units (`TrainConfig.planted`, for the planted-truth validation): named units of R are
additionally trained to encode one renderer parameter each (`linkjax.miniworld.planted`: the
targets, their scaling and the reports); the whole loss is `cross_entropy + planted_weight *
mean_over_units(MSE)`; with no planted units the step is the plain classification step.

Generated training images (`TrainConfig.generated_fraction`, `generated_pool`): part of every
batch can come from a fixed pool of generated images G(z, c) at psi 1, whose true theta is known
(the generator reproduces render(theta(z, c))). The validation reads the planted units on
generated images, which draw small parts differently from the renders: a within-breed planted
classifier trained on renders only tracked its parameters at r 0.73-0.90 within breed on renders
but 0.28-0.56 on generated images (ear 0.19 / 0.11; BUILD.md section 6). The two options
together lifted the within-breed r on generated images by at most 0.14 over the world-scaled
units' (ear 0.06 -> 0.20, head 0.39 -> 0.51; BUILD.md): the generator draws within-breed part
sizes too faintly (`truth.measurability`).

Families: 'resnet' (the shipped classifier: a bottleneck ResNet, one block per stage) or 'vgg'
(VGG-16 with BatchNorm, torchvision's vgg16_bn layout with every width scaled by width / 64 and
hidden layers of 4 x width), both from the classifier registry, so every pipeline runs on them
unchanged.

BatchNorm: the ports hold BatchNorm in inference mode. Training uses the same modules
through `nnx.view(model, use_running_average=False)`: batch statistics in the forward pass,
running averages (momentum 0.9) updated as a side effect and carried between steps; the saved
model is the ordinary inference-mode ResNet with those running statistics. This is the standard
recipe and needs no code in the model, unlike training with frozen statistics (mean 0, var 1),
which would make BN a plain affine layer and a bottleneck ResNet without normalisation harder
to optimise.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from linkjax import checkpoint, files, models, preprocess
from linkjax import miniworld as world
from linkjax.miniworld import generated_pool
from linkjax.miniworld import planted as planted_lib
from linkjax.models import resnet, vgg


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Classifier training hyper-parameters.

  Attributes:
    family: 'resnet' or 'vgg' (see the module docstring).
    width: ResNet stem/stage-1 width (stage i has width * 2^i; bottleneck expands x4); VGG:
      the first conv's width (VGG-16's 64, 128, 256, 512 scaled by width / 64).
    stage_sizes: ResNet bottleneck blocks per stage.
    r_layer: the representation layer R ('original' or 'penultimate').
    steps: optimiser steps.
    batch_size: rendered images per step.
    learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to 0).
    warmup_steps: warm-up length in steps.
    weight_decay: AdamW decoupled weight decay.
    eval_images: held-out renders for the final accuracy (balanced over classes).
    log_every: steps between progress reports.
    blur_sigma_max: training renders are blurred by a Gaussian of per-image sigma ~ U(0, this)
      pixels (0 disables), so that the classifier does not hinge on edges sharper than a
      64x64 generator draws; evaluation uses unblurred renders.
    noise_std: std of per-pixel Gaussian noise added to training renders (0 disables).
    planted: ((unit, parameter), ...): units of R trained to encode a parameter each (names from
      `planted.PLANTABLE`); empty: a plain classifier.
    planted_weight: weight of the planted units' mean squared error in the loss.
    planted_scale: 'world' (z-score with the class-balanced moments) or 'class' (with the moments
      of the image's class; see the module docstring).
    generated_fraction: share of each batch drawn from a pool of generated images G(z, c) at
      psi 1 with their true theta (`generated_pool`; needs a generator); the rest are renders.
    generated_pool: images in that pool.
  """
  family: str = "resnet"
  width: int = 16
  stage_sizes: tuple[int, ...] = (1, 1, 1, 1)
  r_layer: str = "original"
  steps: int = 300
  batch_size: int = 64
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 1e-4
  eval_images: int = 2000
  log_every: int = 50
  blur_sigma_max: float = 1.2
  noise_std: float = 0.02
  planted: tuple[tuple[int, str], ...] = ()
  planted_weight: float = 1.0
  planted_scale: str = "world"
  generated_fraction: float = 0.0
  generated_pool: int = 20000

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
    planted = tuple((int(u), str(n)) for u, n in self.planted)
    object.__setattr__(self, "planted", planted)
    bad = [n for _, n in planted if n not in planted_lib.PLANTABLE]
    if bad:
      raise ValueError(f"unknown planted parameters {bad}; plantable: {planted_lib.PLANTABLE}")
    units = [u for u, _ in planted]
    if len(set(units)) != len(units) or any(u < 0 for u in units):
      raise ValueError(f"planted units must be distinct and >= 0, got {units}")
    if not np.isfinite(self.planted_weight) or self.planted_weight < 0:
      raise ValueError(f"planted_weight must be finite and >= 0, got {self.planted_weight}")
    if not 0.0 <= self.generated_fraction <= 1.0:
      raise ValueError(f"generated_fraction must be in [0, 1], got {self.generated_fraction}")
    if self.generated_fraction > 0 and self.generated_pool < 1:
      raise ValueError(f"generated_pool must be >= 1, got {self.generated_pool}")
    if self.planted_scale not in planted_lib.PLANTED_SCALES:
      raise ValueError(f"planted_scale must be one of {planted_lib.PLANTED_SCALES}, got "
                       f"{self.planted_scale!r}")


FAMILIES = ("resnet", "vgg")
def model_config(config: TrainConfig) -> Any:
  """The classifier architecture trained by `config`: 64x64 input, no resize or crop."""
  common = {"num_classes": world.NUM_CLASSES, "resize": None, "crop": None,
            "r_layer": config.r_layer}
  if config.family == "vgg":
    scale = config.width / 64
    layers = tuple(v if v == "M" else max(1, round(v * scale)) for v in vgg.LAYERS[16])
    return vgg.VGGConfig(layers=layers, batch_norm=True, hidden=4 * config.width, **common)
  return resnet.ResNetConfig(depth=50, width=config.width, stage_sizes=tuple(config.stage_sizes),
                             block="bottleneck", **common)


def images_to_uint8(images: jax.Array) -> jax.Array:
  """Rendered images -> uint8 as generated images are quantised (`preprocess.to_uint8`).

  Args:
    images: [B, H, W, 3] float32 in [0, 1].
  Returns:
    [B, H, W, 3] uint8 (floor(255 x)).
  """
  x = jnp.transpose(images, (0, 3, 1, 2)) * jnp.float32(2.0) - jnp.float32(1.0)
  return preprocess.to_uint8(x)


def augment(key: jax.Array, images: jax.Array, blur_sigma_max: float,
            noise_std: float) -> jax.Array:
  """Random Gaussian blur (per-image sigma ~ U(0, blur_sigma_max)) and pixel noise.

  Args:
    key: PRNG key.
    images: [B, H, W, 3] float32 in [0, 1].
    blur_sigma_max: largest blur sigma in pixels (7-tap separable kernel, edge padding).
    noise_std: std of the added Gaussian noise.
  Returns:
    [B, H, W, 3] float32 clipped to [0, 1].
  """
  k_sigma, k_noise = jax.random.split(key)
  b, h, w, _ = images.shape
  if blur_sigma_max > 0:
    sigma = jax.random.uniform(k_sigma, (b,), jnp.float32, 1e-3, blur_sigma_max)
    t = jnp.arange(-3, 4, dtype=jnp.float32)
    taps = jnp.exp(-jnp.square(t)[None, :] / (2.0 * jnp.square(sigma)[:, None]))
    taps = taps / jnp.sum(taps, axis=1, keepdims=True)  # [B, 7]
    x = jnp.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    x = sum(taps[:, i, None, None, None] * x[:, :, i:i + w, :] for i in range(7))
    images = sum(taps[:, i, None, None, None] * x[:, i:i + h, :, :] for i in range(7))
  if noise_std > 0:
    images = images + jnp.float32(noise_std) * jax.random.normal(k_noise, images.shape)
  return jnp.clip(images, 0.0, 1.0)


def render_batch(key: jax.Array, batch_size: int, blur_sigma_max: float = 0.0,
                 noise_std: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Renders a labelled batch with uniformly drawn classes.

  Args:
    key: PRNG key.
    batch_size: number of images.
    blur_sigma_max, noise_std: augmentation (see `augment`); 0 and 0 give the plain renders.
  Returns:
    images_uint8 [B, 64, 64, 3] and labels [B] int32.
  """
  images, labels, _ = render_batch_with_theta(key, batch_size, blur_sigma_max, noise_std)
  return images, labels


def render_batch_with_theta(key: jax.Array, batch_size: int, blur_sigma_max: float = 0.0,
                            noise_std: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`render_batch` (the same images for the same key) plus the theta that rendered them.

  Returns:
    images_uint8 [B, 64, 64, 3], labels [B] int32, theta [B, THETA_DIM] float32.
  """
  k_class, k_theta, k_aug = jax.random.split(key, 3)
  labels = jax.random.randint(k_class, (batch_size,), 0, world.NUM_CLASSES, jnp.int32)
  theta = world.sample_theta(k_theta, labels)
  images, _ = world.render(theta)
  if blur_sigma_max > 0 or noise_std > 0:
    images = augment(k_aug, images, blur_sigma_max, noise_std)
  return images_to_uint8(images), labels, theta


def training_batch(key: jax.Array, batch_size: int, blur_sigma_max: float, noise_std: float,
                   n_generated: int = 0, pool: tuple[jax.Array, ...] | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One training batch: renders, and with n_generated > 0 that many pool images at the end.

  Args:
    key: PRNG key (with n_generated 0 the batch is `render_batch_with_theta(key, ...)`).
    batch_size: images in all.
    blur_sigma_max, noise_std: augmentation of both kinds of images (`augment`).
    n_generated: images drawn from the pool (0..batch_size).
    pool: (images uint8, labels, theta) of a `generated_pool.Pool`, needed with n_generated.
  Returns:
    images_uint8 [B, 64, 64, 3], labels [B] int32, theta [B, THETA_DIM] float32.
  """
  if not n_generated:
    return render_batch_with_theta(key, batch_size, blur_sigma_max, noise_std)
  if pool is None or not 0 < n_generated <= batch_size:
    raise ValueError(f"{n_generated} generated images of {batch_size} need a pool")
  k_render, k_pool, k_aug = jax.random.split(key, 3)
  gx, gl, gt = generated_pool.draw(k_pool, *pool, n_generated)
  if blur_sigma_max > 0 or noise_std > 0:
    gx = augment(k_aug, gx, blur_sigma_max, noise_std)
  parts = [(images_to_uint8(gx), gl, gt)]
  if batch_size > n_generated:
    parts.insert(0, render_batch_with_theta(k_render, batch_size - n_generated,
                                            blur_sigma_max, noise_std))
  return tuple(jnp.concatenate(p) for p in zip(*parts))


def _make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                     batch_size: int, resize: int | None, crop: int | None,
                     blur_sigma_max: float = 0.0, noise_std: float = 0.0,
                     planted: tuple[tuple[int, str], ...] = (),
                     planted_weight: float = 0.0, planted_scale: str = "world",
                     n_generated: int = 0) -> Callable:
  """A jitted step (params, stats, opt_state, key, pool) -> (params, stats, opt_state, loss, acc,
  planted_mse); loss is the total loss, planted_mse 0 without planted units. With n_generated >
  0 that many images of the batch are drawn from pool = (images, labels, theta) of a
  `generated_pool.Pool` (augmented like the renders); without, pool is None and the step is
  the renders-only step."""
  units = jnp.asarray([u for u, _ in planted], jnp.int32)
  names = tuple(n for _, n in planted)

  @jax.jit
  def step(params, stats, opt_state, key, pool=None):
    images, labels, theta = training_batch(key, batch_size, blur_sigma_max, noise_std,
                                           n_generated, pool)
    x = preprocess.classifier_input(images, resize=resize, crop=crop)

    model = nnx.merge(graphdef, params, stats)

    def loss_fn(model):
      logits, acts = model(x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
      mse = jnp.float32(0.0)
      if planted:  # without planted units the step is exactly the classification step
        target = jax.lax.stop_gradient(
            planted_lib.planted_targets(theta, names, labels, planted_scale))
        mse = jnp.mean(jnp.square(acts["r"][:, units] - target))
        loss = loss + jnp.float32(planted_weight) * mse
      return loss, (acc, mse)

    # nnx.value_and_grad differentiates the Params and lets BatchNorm update its running
    # statistics on the model in place (a plain jax.grad would see them as foreign tracers).
    (loss, (acc, mse)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    new_stats = nnx.state(model, nnx.BatchStat)
    # optax's Adam bias correction computes float ** int32 step count, which strict dtype
    # promotion (as in the tests) rejects; the optimiser's internals are not ours to retype.
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, new_stats, opt_state, loss, acc, mse

  return step


@functools.partial(jax.jit, static_argnames=("graphdef", "batch_size", "resize", "crop"))
def _eval_batch(graphdef: nnx.GraphDef, state: nnx.State, key: jax.Array, batch_size: int,
                resize: int | None, crop: int | None) -> tuple[jax.Array, jax.Array]:
  images, labels = render_batch(key, batch_size)
  model = nnx.merge(graphdef, state)
  logits, _ = model(preprocess.classifier_input(images, resize=resize, crop=crop))
  return jnp.argmax(logits, -1).astype(jnp.int32), labels


def evaluate(model: nnx.Module, key: jax.Array, num_images: int,
             batch_size: int = 250) -> dict[str, Any]:
  """Accuracy of an inference-mode classifier on fresh renders.

  Args:
    model: a classifier with `num_classes == NUM_CLASSES` (inference-mode BatchNorm).
    key: PRNG key of the evaluation stream (disjoint from training's).
    num_images: images to render (rounded up to whole batches).
    batch_size: images per jitted call.
  Returns:
    {'accuracy': float, 'per_class': [NUM_CLASSES] floats, 'n': int}.
  """
  graphdef, state = nnx.split(model)
  batch_size = min(batch_size, num_images)
  preds, labels = [], []
  for i in range(-(-num_images // batch_size)):
    p, l = _eval_batch(graphdef, state, jax.random.fold_in(key, i), batch_size,
                       model.config.resize, model.config.crop)
    preds.append(np.asarray(p))
    labels.append(np.asarray(l))
  return accuracy(np.concatenate(preds), np.concatenate(labels))


def accuracy(preds: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """{'accuracy', 'per_class' ([NUM_CLASSES], NaN for a class absent from labels), 'n'} of [N]
  predicted and true classes."""
  correct = preds == labels
  per_class = [float(correct[labels == c].mean()) if np.any(labels == c) else float("nan")
               for c in range(world.NUM_CLASSES)]
  return {"accuracy": float(correct.mean()), "per_class": per_class, "n": int(labels.shape[0])}


@functools.partial(jax.jit, static_argnames=("graphdef", "batch_size", "resize", "crop"))
def _r_batch(graphdef: nnx.GraphDef, state: nnx.State, key: jax.Array, batch_size: int,
             resize: int | None, crop: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  images, labels, theta = render_batch_with_theta(key, batch_size)
  model = nnx.merge(graphdef, state)
  _, acts = model(preprocess.classifier_input(images, resize=resize, crop=crop))
  return acts["r"], theta, labels


def representations(model: nnx.Module, key: jax.Array, num_images: int,
                    batch_size: int = 250) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """R, the true theta and the class of fresh (unaugmented) renders, classes drawn uniformly.

  Args:
    model: an inference-mode classifier.
    key: PRNG key of the stream.
    num_images: images (rounded up to whole batches).
    batch_size: images per jitted call.
  Returns:
    (r [N, R] float32, theta [N, THETA_DIM] float32, class_idx [N] int32).
  """
  graphdef, state = nnx.split(model)
  batch_size = min(batch_size, num_images)
  out = []
  for i in range(-(-num_images // batch_size)):
    out.append(jax.device_get(_r_batch(graphdef, state, jax.random.fold_in(key, i), batch_size,
                                       model.config.resize, model.config.crop)))
  r, theta, labels = (np.concatenate(x) for x in zip(*out))
  return r, theta, labels.astype(np.int32)


def train(config: TrainConfig, *, key: jax.Array, generator: nnx.Module | None = None,
          log_fn: Callable[[str], None] = print) -> tuple[nnx.Module, dict[str, Any]]:
  """Trains the classifier on on-the-fly renders and evaluates it on held-out renders.

  Args:
    config: hyper-parameters.
    key: PRNG key; fold_in 0 initialises, 1 draws training batches, 2 draws the held-out set,
      3 the held-out renders of the planted units' correlations, 4 the generated training
      pool, 5 the held-out generated images.
    generator: the miniworld generator; needed with `config.generated_fraction` > 0, and then
      the metrics also hold 'generated' (`evaluate_generated` on `eval_images` held-out
      generated images).
    log_fn: receives progress lines.
  Returns:
    (inference-mode classifier, metrics) with metrics 'accuracy', 'per_class', 'train_seconds',
    'final_train_loss', 'final_train_accuracy', 'steps', 'images_seen'; with planted units also
    'planted' (`planted.planted_report` on `eval_images` held-out renders, plus each parameter's
    z-score moments), 'planted_target' ([mean, std] of the targets), 'planted_weight' and
    'final_planted_mse'.
  """
  mconf = model_config(config)
  model_cls, _ = models.ARCHITECTURES[models.arch_of(mconf)].classes()
  model = model_cls(mconf, rngs=nnx.Rngs(jax.random.fold_in(key, 0)))
  train_view = nnx.view(model, use_running_average=False)
  graphdef, params, stats = nnx.split(train_view, nnx.Param, nnx.BatchStat)
  cosine = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                              max(config.steps, config.warmup_steps + 1))

  def schedule(count: jax.Array) -> jax.Array:
    # optax mixes the int32 step count with Python floats, which strict promotion rejects.
    return cosine(count.astype(jnp.float32))

  tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  opt_state = tx.init(params)
  r_dim = _r_dim(model)
  bad = [u for u, _ in config.planted if u >= r_dim]
  if bad:
    raise ValueError(f"planted units {bad} outside R's {r_dim} units")
  n_generated = int(round(config.batch_size * config.generated_fraction))
  pool = None
  if n_generated:
    if generator is None:
      raise ValueError("generated_fraction > 0 needs a generator")
    t_pool = time.time()
    pool = tuple(jnp.asarray(x) for x in generated_pool.build(
        generator, jax.random.fold_in(key, 4), config.generated_pool))
    log_fn(f"{config.generated_pool} generated training images in {time.time() - t_pool:.1f} s; "
           f"{n_generated} of every {config.batch_size} training images drawn from them")
  step_fn = _make_train_step(graphdef, tx, config.batch_size, mconf.resize, mconf.crop,
                             config.blur_sigma_max, config.noise_std, config.planted,
                             config.planted_weight, config.planted_scale, n_generated)
  data_key = jax.random.fold_in(key, 1)

  t0 = time.time()
  loss = acc = mse = jnp.float32(0.0)
  run_loss, run_acc, run_mse = 0.0, 0.0, 0.0
  for step in range(config.steps):
    params, stats, opt_state, loss, acc, mse = step_fn(params, stats, opt_state,
                                                       jax.random.fold_in(data_key, step), pool)
    run_loss += float(loss)
    run_acc += float(acc)
    run_mse += float(mse)
    if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
      n = (step % config.log_every) + 1
      log_fn(f"step {step + 1}/{config.steps}: loss {run_loss / n:.4f} "
             f"train acc {run_acc / n:.3f}"
             + (f" planted mse {run_mse / n:.4f}" if config.planted else "")
             + f" ({time.time() - t0:.1f} s)")
      run_loss, run_acc, run_mse = 0.0, 0.0, 0.0
  train_seconds = time.time() - t0

  nnx.update(model, params, stats)  # the inference-mode model shares the trained state
  metrics = evaluate(model, jax.random.fold_in(key, 2), config.eval_images)
  metrics.update(train_seconds=train_seconds, final_train_loss=float(loss),
                 final_train_accuracy=float(acc), steps=config.steps,
                 images_seen=config.steps * config.batch_size)
  log_fn(f"held-out accuracy {metrics['accuracy']:.4f} on {metrics['n']} renders; "
         f"per class {[round(a, 3) for a in metrics['per_class']]}; "
         f"training {train_seconds:.1f} s")
  if config.planted:
    r, theta, labels = representations(model, jax.random.fold_in(key, 3), config.eval_images)
    report = planted_lib.planted_report(r, theta, config.planted, labels, config.planted_scale)
    mean, std = planted_lib.param_moments(tuple(n for _, n in config.planted))
    for k, entry in enumerate(report):
      entry.update(param_mean=float(mean[k]), param_std=float(std[k]))
      log_fn(f"planted unit {entry['unit']} ({entry['param']}): r = {entry['r']:.3f}, within "
             f"class {entry['r_within_class']:.3f} on {entry['n']} held-out renders (best other "
             f"unit within class {entry['best_other_unit_within_class']}: "
             f"r = {entry['best_other_r_within_class']:.3f})")
    metrics.update(planted=report,
                   planted_target=[planted_lib.PLANTED_TARGET_MEAN, planted_lib.PLANTED_TARGET_STD],
                   planted_weight=config.planted_weight, planted_scale=config.planted_scale,
                   final_planted_mse=float(mse))
  if generator is not None:
    held = generated_pool.build(generator, jax.random.fold_in(key, 5), config.eval_images)
    metrics["generated"] = evaluate_generated(model, held, config.planted, config.planted_scale)
    log_fn(f"held-out accuracy {metrics['generated']['accuracy']:.4f} on "
           f"{metrics['generated']['n']} generated images (psi 1)" + "".join(
               f"; unit {e['unit']} ({e['param']}) r within class {e['r_within_class']:.3f}"
               for e in metrics["generated"].get("planted", [])))
  return model, metrics


@functools.partial(jax.jit, static_argnames=("graphdef", "resize", "crop"))
def _classify_uint8(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array,
                    resize: int | None, crop: int | None) -> tuple[jax.Array, jax.Array]:
  logits, acts = nnx.merge(graphdef, state)(
      preprocess.classifier_input(images, resize=resize, crop=crop))
  return jnp.argmax(logits, -1).astype(jnp.int32), acts["r"]


def evaluate_generated(model: nnx.Module, pool: generated_pool.Pool,
                       planted: tuple[tuple[int, str], ...] = (), scale: str = "world",
                       batch_size: int = 250) -> dict[str, Any]:
  """Accuracy (and the planted units' report) of a classifier on generated images.

  Args:
    model: an inference-mode classifier.
    pool: generated images with their classes and true theta (`generated_pool.build`).
    planted: ((unit, parameter), ...) to report (`planted.planted_report` with the classes).
    scale: the planted targets' z-scoring.
    batch_size: images per compiled call (the last batch is a second compilation).
  Returns:
    {'accuracy', 'per_class', 'n'} and, with planted units, 'planted'.
  """
  graphdef, state = nnx.split(model)
  preds, rs = [], []
  for i in range(0, len(pool.labels), batch_size):
    p, r = _classify_uint8(graphdef, state, jnp.asarray(pool.images[i:i + batch_size]),
                           model.config.resize, model.config.crop)
    preds.append(np.asarray(p))
    rs.append(np.asarray(r))
  r = np.concatenate(rs)
  out = accuracy(np.concatenate(preds), pool.labels)
  if planted:
    out["planted"] = planted_lib.planted_report(r, pool.theta, planted, pool.labels, scale)
  return out


def _r_dim(model: nnx.Module) -> int:
  """Width of R of a freshly built classifier (one tiny forward pass, shapes only)."""
  x = jax.ShapeDtypeStruct((1, world.SIZE, world.SIZE, 3), jnp.float32)
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x)[1]["r"], state, x)
  return int(out.shape[-1])


def train_and_save(config: TrainConfig, out_dir: str | pathlib.Path, *, seed: int,
                   generator_dir: str | pathlib.Path | None = None,
                   log_fn: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains (see `train`, key = jax.random.key(seed)), saves the model and metrics.

  Args:
    config: hyper-parameters.
    out_dir: checkpoint directory (`linkjax.checkpoint.save`), plus `metrics.json` beside
      `config.json` holding the metrics, the training config and the seed.
    seed: PRNG seed.
    generator_dir: a miniworld generator checkpoint (needed with generated_fraction > 0; with
      one the metrics include held-out generated images).
    log_fn: receives progress lines.
  Returns:
    the metrics dict.
  """
  if config.generated_fraction > 0 and generator_dir is None:
    raise ValueError("generated_fraction > 0 needs a generator checkpoint")
  generator = (None if generator_dir is None
               else checkpoint.load(generator_dir, role="generator"))
  model, metrics = train(config, key=jax.random.key(seed), generator=generator, log_fn=log_fn)
  out_dir = pathlib.Path(out_dir)
  checkpoint.save(out_dir, model)
  record = dict(metrics, seed=seed, train_config=dataclasses.asdict(config))
  if generator_dir is not None:
    record["generator"] = str(generator_dir)
  files.write_json(out_dir / "metrics.json", record)
  log_fn(f"saved {out_dir}")
  return metrics
