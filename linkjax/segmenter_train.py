"""Training the few-shot part segmenter (the reference's recipe, "Repurposing GANs").

`train_segmenter` trains a head on precomputed features of a few labelled images: every epoch
visits the images in a new random order, one image per step, torch-style Adam with L2 weight
decay and a step learning-rate schedule, mean pixel cross-entropy. `train_on_generator` extracts
the generator's features of the labelled samples once and trains.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from linkjax import jobs, masks as masks_lib
from linkjax.models import segmenter as seg


def _step_schedule(lr: float, gamma: float, steps_per_decay: int):
  def schedule(count: jax.Array) -> jax.Array:
    n_decays = (count // steps_per_decay).astype(jnp.float32)
    return -jnp.float32(lr) * jnp.power(jnp.float32(gamma), n_decays)
  return schedule


def torch_adam(lr: float, weight_decay: float, steps_per_decay: int,
               gamma: float = 0.1) -> optax.GradientTransformation:
  """torch.optim.Adam(lr, weight_decay) + StepLR: L2 term added to the gradients before Adam."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(eps=1e-8),
                     optax.scale_by_schedule(_step_schedule(lr, gamma, steps_per_decay)))


def train_segmenter(key: jax.Array, features: jax.Array | np.ndarray, masks: jax.Array | np.ndarray,
                    n_labels: int, size: str = "S", epochs: int = 100, lr: float = 1e-3,
                    weight_decay: float = 1e-3, step_epochs: int = 50,
                    feature_layers: Sequence[str] = (), label_names: Sequence[str] = (),
                    feature_margins: Sequence[int] = (),
                    head: Mapping[str, Any] | None = None
                    ) -> tuple[seg.FewShotSegmenter, np.ndarray]:
  """Trains a segmenter head on precomputed features of a few labelled images.

  Every epoch visits the images in a new random order (key `fold_in(fold_in(key, 1), epoch)`),
  one image per Adam step, mean pixel cross-entropy; the learning rate is multiplied by 0.1 every
  `step_epochs` epochs. One jitted step per image, driven from Python.

  Args:
    key: PRNG key; `fold_in(key, 0)` initialises the head, `fold_in(key, 1)` shuffles.
    features: [N, R, R, C] float32 NHWC, from `seg.concat_features` (fixed per image).
    masks: [N, H, W] int label indices, resized here with nearest to R x R.
    n_labels: number of labels including background.
    size: head size 'S', 'M' or 'L'.
    epochs: passes over the N images.
    lr: initial learning rate.
    weight_decay: L2 coefficient added to the gradients (torch Adam's weight_decay).
    step_epochs: epochs between learning-rate decays (x0.1).
    feature_layers: generator layer names of the features, stored in the config.
    label_names: label names stored in the config.
    feature_margins: the margins `features` were cropped with, stored in the config.
    head: further `SegmenterConfig` fields of the head (`head`, `feature_channels`,
      `proj_channels`, `dilations`, `widths`); None: the reference's dense head of `size`. A
      projected head is trained through `head` (projection after the resize), which equals its
      inference path.
  Returns:
    (trained model, per-epoch mean training loss [epochs] float32).
  """
  features = jnp.asarray(features, jnp.float32)
  n, res, res2, channels = features.shape
  if res != res2:
    raise ValueError(f"features must be square, got {features.shape}")
  masks = masks_lib.resize_masks(np.asarray(masks), res)
  if masks.min() < 0 or masks.max() >= n_labels:
    raise ValueError(f"mask values {masks.min()}..{masks.max()} outside 0..{n_labels - 1}")
  masks = jnp.asarray(masks)
  if masks.shape[0] != n:
    raise ValueError(f"{n} feature maps but {masks.shape[0]} masks")
  config = seg.SegmenterConfig(in_channels=channels, n_labels=n_labels, size=size,
                           feature_layers=tuple(feature_layers), resolution=res,
                           label_names=tuple(label_names),
                           feature_margins=tuple(int(m) for m in feature_margins),
                           **{k: (v if isinstance(v, str) else tuple(int(x) for x in v))
                              for k, v in (head or {}).items()})
  model = seg.FewShotSegmenter(config, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
  graphdef, params = nnx.split(model)
  hparams = (float(lr), float(weight_decay), n * step_epochs)
  opt_state = torch_adam(*hparams).init(params)
  shuffle_key = jax.random.fold_in(key, 1)
  losses = np.zeros(epochs, np.float32)
  for e in range(epochs):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, e), n))
    step_losses = []
    for i in order:
      params, opt_state, loss = _train_step(graphdef, hparams, params, opt_state, features[i],
                                            masks[i])
      step_losses.append(loss)
    losses[e] = np.mean(jax.device_get(step_losses))
  return nnx.merge(graphdef, params), losses


def _loss(graphdef, params, x, y):
  logits = nnx.merge(graphdef, params).head(x[None])[0]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


# One jitted step driven from Python rather than a scan over epochs and images: on XLA:CPU the
# scanned loop ran the convolutions ~75x slower than the same step outside a loop (5.8 s vs
# 0.076 s per 64x64x160 step), and the per-step dispatch costs nothing next to a step.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(graphdef, hparams, params, opt_state, x, y):
  lr, weight_decay, steps_per_decay = hparams
  tx = torch_adam(lr, weight_decay, steps_per_decay)
  loss, grads = jax.value_and_grad(_loss, argnums=1)(graphdef, params, x, y)
  # optax's Adam bias correction computes float ** int32 count, which strict dtype promotion
  # rejects; the mixing is intended there.
  with jax.numpy_dtype_promotion("standard"):
    updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _features(generator_def: nnx.GraphDef, layers: tuple[str, ...], resolution: int,
              margins: tuple[int, ...], state: nnx.State, ws: jax.Array) -> jax.Array:
  _, feats = nnx.merge(generator_def, state).synthesis(ws, return_features=True)
  return seg.concat_features(seg.select_features(feats, layers), resolution, margins)


def extract_features(generator: nnx.Module, ws: np.ndarray, layer_names: Sequence[str],
                     resolution: int = 128, batch_size: int = 4,
                     margins: Sequence[int] = ()) -> np.ndarray:
  """Concatenated segmenter features of generated images.

  Args:
    generator: a model with `synthesis(ws, return_features=True) -> (images, {name: NCHW})`.
    ws: [N, num_ws, w_dim] float32.
    layer_names: feature layers to use.
    resolution: feature side.
    batch_size: images per synthesis call.
    margins: per-layer margins cropped before the resize (`seg.concat_features`).
  Returns:
    [N, resolution, resolution, C] float32 NHWC (numpy).
  """
  g_def, g_state = nnx.split(generator)
  fn = functools.partial(_features, g_def, tuple(layer_names), int(resolution),
                         tuple(int(m) for m in margins))
  return jobs.map_batches(fn, g_state, np.asarray(ws, np.float32), batch=batch_size,
                          mesh=jobs.data_mesh(1))


def train_on_generator(key: jax.Array, generator: nnx.Module, ws: np.ndarray, masks: np.ndarray,
                       label_names: Sequence[str], size: str = "S", epochs: int = 100,
                       resolution: int = 128, batch_size: int = 4, crop_margins: bool = False,
                       feature_layers: Sequence[str] | None = None,
                       head: Mapping[str, Any] | None = None,
                       **train_kwargs: Any) -> tuple[seg.FewShotSegmenter, np.ndarray]:
  """Extracts the feature layers of the labelled samples once, then trains a head.

  Args:
    key: PRNG key passed to `train_segmenter`.
    generator: model with `layer_names` and `synthesis(ws, return_features=True)`.
    ws: [N, num_ws, w_dim] of the labelled samples.
    masks: [N, H, W] int label indices (any H, W; resized with nearest).
    label_names: the n_labels names, background first.
    size: head size.
    epochs: training epochs.
    resolution: feature / mask side.
    batch_size: images per synthesis call during feature extraction.
    crop_margins: crop each layer's StyleGAN3 margins before the resize (`stylegan_margins`);
      False keeps the reference's whole-map resize.
    feature_layers: generator layers of the features; None: `reference_feature_layers`.
    head: head fields for `train_segmenter`; `feature_channels` is filled in from the
      generator's feature maps when a projected head leaves it out.
    **train_kwargs: lr, weight_decay, step_epochs for `train_segmenter`.
  Returns:
    (model, per-epoch loss [epochs]).
  """
  masks = np.asarray(masks)
  if masks.max() >= len(label_names) or masks.min() < 0:
    raise ValueError(f"mask values span {masks.min()}..{masks.max()}, outside the "
                     f"{len(label_names)} labels {list(label_names)}")
  layers = (seg.reference_feature_layers(generator.layer_names) if feature_layers is None
            else tuple(feature_layers))
  margins = seg.stylegan_margins(generator.config, layers) if crop_margins else ()
  head = dict(head or {})
  if head.get("head") == "projected" and not head.get("feature_channels"):
    head["feature_channels"] = feature_channels(generator, layers)
  feats = extract_features(generator, ws, layers, resolution, batch_size, margins)
  return train_segmenter(key, feats, masks, len(label_names), size=size, epochs=epochs,
                         feature_layers=layers, label_names=label_names,
                         feature_margins=margins, head=head, **train_kwargs)


def feature_channels(generator: nnx.Module, layer_names: Sequence[str]) -> tuple[int, ...]:
  """Channels of the generator's named feature maps (shapes only, no compute)."""
  cfg = generator.config
  ws = jax.ShapeDtypeStruct((1, cfg.num_ws, cfg.w_dim), jnp.float32)
  _, feats = jax.eval_shape(lambda w: generator.synthesis(w, return_features=True), ws)
  return tuple(int(f.shape[1]) for f in seg.select_features(feats, layer_names))
