"""Trains the miniworld's few-shot part segmenter: 5 labelled generated images per class.

Labels. The paper labels ~5 generated images per class by hand. Here the labels of a generated
image G(mapping(z, c)) are the renderer's masks for the same (z, c) (`groundtruth.true_render`),
which are exact for the generated image to the extent that the generator reproduces the render
(it is trained by regression to do so). The labelled images are drawn at psi = 1 (no
truncation), the only setting in which the render is the image's true counterpart.

Resolution 64 (the paper: 128). The miniworld's images are 64 x 64 and its true masks are
64 x 64; predicting at 128 would upsample both the 64 x 64 features and the labels with the
nearest rule (no new information) while making the head's convolutions 4x as expensive, on the
CPU where the whole demo must run. Part metrics are then measured on the 64 x 64 image itself.
The head is the paper's size S (in -> 128 -> 64 -> 64 -> 32 -> 10); the features are the
reference's layer selection (every second synthesis layer), 160 channels for the miniworld
generator. Training is the reference's recipe (Adam, lr 1e-3, weight decay 1e-3, one image
per step, x0.1 every `step_epochs`), shortened (`epochs`) to fit the CPU.

Quality: mean IoU against the renderer's masks of held-out generated images (psi 1), from a
PRNG stream disjoint from the labelled one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from linkjax import checkpoint
from linkjax.miniworld import groundtruth
from linkjax import miniworld as world
from linkjax.models import segmenter as seg_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmenterTrainConfig:
  """Few-shot segmenter training on the miniworld.

  Attributes:
    n_per_class: labelled generated images per class.
    size: head size ('S', 'M', 'L').
    resolution: feature / mask side (64: the world's own resolution).
    epochs: passes over the labelled images (one Adam step per image).
    step_epochs: epochs between learning-rate decays (x0.1).
    lr: initial Adam learning rate.
    weight_decay: L2 coefficient (torch Adam's weight_decay).
    eval_images: held-out generated images for the IoU.
  """
  n_per_class: int = 5
  size: str = "S"
  resolution: int = 64
  epochs: int = 40
  step_epochs: int = 30
  lr: float = 1e-3
  weight_decay: float = 1e-3
  eval_images: int = 200


def labelled_set(generator: nnx.Module, key: jax.Array, n_per_class: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The labelled images: ws of G(z, c) at psi 1 and the renderer's masks of the same (z, c).

  Args:
    generator: the miniworld generator.
    key: PRNG key of the labelled latents.
    n_per_class: images per class.
  Returns:
    (ws [N, num_ws, w_dim], masks [N, 64, 64] int32, class_idx [N] int32), N = 5 n_per_class.
  """
  n = n_per_class * world.NUM_CLASSES
  z, c = groundtruth.heldout_latents(key, n, generator.config.z_dim)
  data = groundtruth.generate_and_segment(generator, None, z, c, psi=1.0, batch=n)
  return data["ws"], data["true_masks"], c


def evaluate(generator: nnx.Module, segmenter: nnx.Module, key: jax.Array, n: int = 200,
             batch: int = 50) -> dict[str, Any]:
  """Mean IoU of the segmenter against the true masks of held-out generated images (psi 1).

  Args:
    generator, segmenter: the models.
    key: PRNG key of the held-out latents.
    n: images (class-balanced).
    batch: images per compiled call.
  Returns:
    {'miou': mean over all labels incl. background, 'miou_parts': mean over the 9 parts,
     'iou': {label: IoU}, 'pixel_accuracy', 'n'}.
  """
  z, c = groundtruth.heldout_latents(key, n, generator.config.z_dim)
  data = groundtruth.generate_and_segment(generator, segmenter, z, c, psi=1.0, batch=batch)
  return iou_summary(data["masks"], data["true_masks"], segmenter.config.label_names
                     or world.PART_NAMES)


def iou_summary(pred: np.ndarray, true: np.ndarray, label_names: Any) -> dict[str, Any]:
  """IoU numbers of predicted vs true masks (see `evaluate`)."""
  names = tuple(label_names)
  iou = groundtruth.segmentation_iou(pred, true, len(names))
  if true.shape[-1] != pred.shape[-1]:
    true = seg_lib.resize_masks(true, pred.shape[-1])
  return {"miou": float(np.nanmean(iou)), "miou_parts": float(np.nanmean(iou[1:])),
          "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
          "pixel_accuracy": float(np.mean(pred == true)), "n": int(pred.shape[0])}


def _pixel_loss(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = nnx.merge(graphdef, params).head(x[None])[0]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def fit_head(key: jax.Array, features: np.ndarray, masks: np.ndarray, n_labels: int, *,
             size: str = "S", epochs: int = 100, lr: float = 1e-3, weight_decay: float = 1e-3,
             step_epochs: int = 50, feature_layers: tuple[str, ...] = (),
             label_names: tuple[str, ...] = ()) -> tuple[seg_lib.FewShotSegmenter, np.ndarray]:
  """`segmenter.train_segmenter` with the steps driven from Python instead of a scan.

  Same initialisation (fold_in(key, 0)), shuffling (fold_in(fold_in(key, 1), epoch)),
  optimiser (`segmenter.torch_adam`) and loss, hence the same result up to float rounding; but
  each step is one call of a jitted function. On XLA:CPU the scanned loop of
  `train_segmenter` runs the convolutions ~75x slower than the same step outside a loop
  (measured: 5.8 s vs 0.076 s per 64x64x160 step), which made 25-image training take ~10 min
  per 4 epochs on 2 cores.

  Args:
    key: PRNG key.
    features: [N, R, R, C] float32 NHWC (`segmenter.extract_features`).
    masks: [N, H, W] int labels (resized to R with the nearest rule).
    n_labels: labels including background.
    size, epochs, lr, weight_decay, step_epochs: as `segmenter.train_segmenter`.
    feature_layers, label_names: stored in the config.
  Returns:
    (model, per-epoch mean loss [epochs] float32).
  """
  features = np.asarray(features, np.float32)
  n, res, _, channels = features.shape
  masks = seg_lib.resize_masks(np.asarray(masks), res)
  if masks.min() < 0 or masks.max() >= n_labels:
    raise ValueError(f"mask values {masks.min()}..{masks.max()} outside 0..{n_labels - 1}")
  config = seg_lib.SegmenterConfig(in_channels=channels, n_labels=n_labels, size=size,
                                   feature_layers=tuple(feature_layers), resolution=res,
                                   label_names=tuple(label_names))
  model = seg_lib.FewShotSegmenter(config, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
  graphdef, params = nnx.split(model)
  tx = seg_lib.torch_adam(lr, weight_decay, n * step_epochs)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(_pixel_loss, argnums=1)(graphdef, params, x, y)
    # optax's Adam bias correction mixes a float with the int32 step count (as in segmenter.py).
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  shuffle_key = jax.random.fold_in(key, 1)
  feats_dev, masks_dev = jnp.asarray(features), jnp.asarray(masks)
  losses = []
  for e in range(epochs):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, e), n))
    epoch_losses = []
    for i in order:
      params, opt_state, loss = step(params, opt_state, feats_dev[i], masks_dev[i])
      epoch_losses.append(loss)
    losses.append(float(jnp.mean(jnp.stack(epoch_losses))))
  return nnx.merge(graphdef, params), np.asarray(losses, np.float32)


def train(generator: nnx.Module, config: SegmenterTrainConfig, *, key: jax.Array,
          log_fn: Callable[[str], None] = print) -> tuple[seg_lib.FewShotSegmenter, dict[str, Any]]:
  """Labels 5 x n_per_class generated images with the renderer's masks, trains and evaluates.

  Args:
    generator: the miniworld generator.
    config: training settings.
    key: PRNG key; fold_in 0: labelled latents, 1: head init and shuffling, 2: held-out set.
    log_fn: progress sink.
  Returns:
    (segmenter, metrics) with the `evaluate` numbers plus 'loss_per_epoch', 'train_seconds'.
  """
  t0 = time.time()
  ws, masks, _ = labelled_set(generator, jax.random.fold_in(key, 0), config.n_per_class)
  log_fn(f"{len(ws)} labelled images; training segmenter {config.size} at "
         f"{config.resolution}px for {config.epochs} epochs")
  layers = seg_lib.reference_feature_layers(generator.layer_names)
  feats = seg_lib.extract_features(generator, ws, layers, config.resolution, batch_size=len(ws))
  model, losses = fit_head(jax.random.fold_in(key, 1), feats, masks, len(world.PART_NAMES),
                           size=config.size, epochs=config.epochs, lr=config.lr,
                           weight_decay=config.weight_decay, step_epochs=config.step_epochs,
                           feature_layers=layers, label_names=world.PART_NAMES)
  train_s = time.time() - t0
  log_fn(f"trained in {train_s:.1f} s, final loss {float(losses[-1]):.4f}")
  metrics = evaluate(generator, model, jax.random.fold_in(key, 2), config.eval_images)
  metrics.update(loss_per_epoch=[float(x) for x in losses], train_seconds=train_s)
  log_fn(f"held-out mIoU {metrics['miou']:.3f} (parts only {metrics['miou_parts']:.3f}); "
         f"per label {json.dumps({k: round(v, 3) for k, v in metrics['iou'].items() if v is not None})}")
  return model, metrics


def train_and_save(generator_dir: str | pathlib.Path, out_dir: str | pathlib.Path,
                   config: SegmenterTrainConfig, *, seed: int,
                   log_fn: Callable[[str], None] = print) -> dict[str, Any]:
  """Loads the generator, trains (key = jax.random.key(seed)), saves model + metrics.json.

  Args:
    generator_dir: miniworld generator checkpoint.
    out_dir: segmenter checkpoint directory (`linkjax.checkpoint.save`) plus metrics.json.
    config: training settings.
    seed: PRNG seed.
    log_fn: progress sink.
  Returns:
    the metrics dict.
  """
  generator = checkpoint.load(generator_dir, expected_arch="stylegan_xl")
  model, metrics = train(generator, config, key=jax.random.key(seed), log_fn=log_fn)
  out_dir = pathlib.Path(out_dir)
  checkpoint.save(out_dir, model)
  record = dict(metrics, seed=seed, train_config=dataclasses.asdict(config),
                generator=str(generator_dir))
  (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
  log_fn(f"saved {out_dir}")
  return metrics
