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
The head is the paper's size S (in -> 128 -> 64 -> 64 -> 32 -> 10). Features: all synthesis
layers but ToRGB (256 channels for the miniworld generator), as in the original Repurposing-GANs
method; the reference takes every second layer (`feature_layers='reference'`, 160 channels),
which at ImageNet scale saves memory that the miniworld does not need. Training is the
reference's recipe (Adam, lr 1e-3, weight decay 1e-3, one image per step, x0.1 every
`step_epochs`), shortened (`epochs`) to fit the CPU.

Feature alignment. Unlike the reference, the miniworld segmenter crops each feature layer's
StyleGAN3 margin before the nearest resize (`crop_margins`): at 64 px the whole-map resize puts
the 20 x 20 (rate 16) maps 1.25x too large over the image and the 68 x 68 map up to 2 pixels off
at the edges, which costs thin parts.

Measured on the shipped generator (seed 0; mIoU on this module's 200 held-out images / on 1000
other held-out images): reference layers, whole maps 0.598 / 0.595 (on the step-15000 generator);
reference layers, cropped 0.607 / 0.603; all layers, cropped (the default) 0.610 / 0.605.

The 'projected' head (`head`) is ~3-6x cheaper but has not matched the dense head here
(`benchmarks/segmenter_heads.py`, seed 0, all layers cropped; mIoU on the 200 / 1000 held-out
sets, the dense head 0.610 / 0.607 in the same run, 2.10 GFLOP/img): proj_channels 8, stack
32-32-32-32, 40 epochs 0.587 / 0.586 (0.34 GFLOP/img); 16, 40 epochs 0.598 / 0.598 (0.43);
16, 80 epochs (step 60) 0.604 / 0.604 (0.43); 32, 80 epochs 0.604 / 0.603 (0.61); 8 with a
48-48-48-32 stack, 40 epochs 0.588 / 0.587 (0.60). Snout and ear stay ~0.02 below.

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
import numpy as np
from flax import nnx

from linkjax import bundle as bundle_lib
from linkjax import checkpoint, files, segmenter_train
from linkjax import masks as masks_lib
from linkjax import miniworld as world
from linkjax.miniworld import groundtruth
from linkjax.models import segmenter as seg_lib


FEATURE_LAYER_RULES = {"all": seg_lib.all_feature_layers,
                       "reference": seg_lib.reference_feature_layers}


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
    crop_margins: crop the feature layers' StyleGAN3 margins before the resize (see the module
      docstring).
    feature_layers: 'all' synthesis layers but ToRGB, or 'reference' (every second one).
    head: 'dense' (the reference's head of `size`; the default, as the shipped weights) or
      'projected' (per-layer 1x1 projections at each map's resolution, then a narrow 3x3 stack;
      `linkjax.models.segmenter`).
    proj_channels: the projected head's output channels per feature layer.
    dilations, widths: the projected head's 3x3 stack (dilation per convolution; output
      channels of all but the last); the dense head takes `size`'s.
  """
  n_per_class: int = 5
  size: str = "S"
  resolution: int = 64
  epochs: int = 40
  step_epochs: int = 30
  lr: float = 1e-3
  weight_decay: float = 1e-3
  eval_images: int = 200
  crop_margins: bool = True
  feature_layers: str = "all"
  head: str = "dense"
  proj_channels: int = 8
  dilations: tuple[int, ...] = (1, 2, 1, 2, 1)
  widths: tuple[int, ...] = (32, 32, 32, 32)

  def __post_init__(self):
    if self.feature_layers not in FEATURE_LAYER_RULES:
      raise ValueError(f"feature_layers must be one of {sorted(FEATURE_LAYER_RULES)}, "
                       f"got {self.feature_layers!r}")
    if self.head not in seg_lib.HEADS:
      raise ValueError(f"head must be one of {seg_lib.HEADS}, got {self.head!r}")
    if self.head == "projected" and (self.proj_channels < 1 or
                                     len(self.widths) != len(self.dilations) - 1):
      raise ValueError(f"projected head: proj_channels {self.proj_channels} must be >= 1 and "
                       f"widths {self.widths} one fewer than dilations {self.dilations}")

  def head_fields(self, n_layers: int) -> dict[str, Any]:
    """The `SegmenterConfig` head fields for `n_layers` feature layers (feature_channels is
    filled in from the generator by `segmenter_train.train_on_generator`)."""
    if self.head == "dense":
      return {}
    return {"head": "projected", "proj_channels": (self.proj_channels,) * n_layers,
            "dilations": tuple(self.dilations), "widths": tuple(self.widths)}


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
  models, params = bundle_lib.ModelBundle.from_models(generator=generator)
  data = groundtruth.generate_and_segment(models, params, z, c, psi=1.0, batch=n)
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
  models, params = bundle_lib.ModelBundle.from_models(generator=generator, segmenter=segmenter)
  data = groundtruth.generate_and_segment(models, params, z, c, psi=1.0, batch=batch)
  return iou_summary(data["masks"], data["true_masks"], segmenter.config.label_names
                     or world.PART_NAMES)


def iou_summary(pred: np.ndarray, true: np.ndarray, label_names: Any) -> dict[str, Any]:
  """IoU numbers of predicted vs true masks (see `evaluate`)."""
  names = tuple(label_names)
  iou = groundtruth.segmentation_iou(pred, true, len(names))
  if true.shape[-1] != pred.shape[-1]:
    true = masks_lib.resize_masks(true, pred.shape[-1])
  return {"miou": float(np.nanmean(iou)), "miou_parts": float(np.nanmean(iou[1:])),
          "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
          "pixel_accuracy": float(np.mean(pred == true)), "n": int(pred.shape[0])}


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
  log_fn(f"{len(ws)} labelled images; training the {config.head} segmenter at "
         f"{config.resolution}px for {config.epochs} epochs")
  layers = FEATURE_LAYER_RULES[config.feature_layers](generator.layer_names)
  model, losses = segmenter_train.train_on_generator(
      jax.random.fold_in(key, 1), generator, ws, masks, world.PART_NAMES, size=config.size,
      epochs=config.epochs, resolution=config.resolution, batch_size=len(ws),
      crop_margins=config.crop_margins, feature_layers=layers,
      head=config.head_fields(len(layers)), lr=config.lr, weight_decay=config.weight_decay,
      step_epochs=config.step_epochs)
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
  generator = checkpoint.load(generator_dir, role="generator")
  model, metrics = train(generator, config, key=jax.random.key(seed), log_fn=log_fn)
  out_dir = pathlib.Path(out_dir)
  checkpoint.save(out_dir, model)
  record = dict(metrics, seed=seed, train_config=dataclasses.asdict(config),
                generator=str(generator_dir))
  files.write_json(out_dir / "metrics.json", record)
  log_fn(f"saved {out_dir}")
  return metrics
