"""Trains the miniworld generator: the project's Flax StyleGAN-XL at a tiny config, by regression.

Target. For z ~ N(0, I) of dim THETA_DIM and a breed c, the generator must produce
`render(theta_from_noise(normalize_2nd_moment(z), c))`. The renderer sees the *normalised* z
because the mapping network normalises z before anything else; the radial part of z never
reaches the generator, so a target that depended on it could not be learned.

Why regression and not a GAN. The world is a deterministic function of (z, c), so the
generator can be taught the exact correspondence with a per-pixel loss: the objective is
stable (no discriminator, no mode collapse, no tuning of R1/augmentation), cheap on a 2-core
CPU, and -- unlike a GAN -- makes G(z, c) and render(theta(z, c)) the *same* animal, which is
what the miniworld's ground-truth checks need (the true part masks of a generated image are the
renderer's masks for the same z). Regression to a deterministic target has no multi-modality
to average over, so blur only reflects under-fitting, which training time reduces.

Loss: mask-weighted pixel MSE in [0, 1] between `(G(mapping(z, c)) + 1) / 2` and the render.
The weights come from the render's part mask (`PART_LOSS_WEIGHTS`): small parts (eye, nose,
tongue) cover ~0.2 % of the pixels each and would contribute almost nothing to a plain MSE,
yet the classifier and the few-shot segmenter depend on them; up-weighting them (and the animal
over the background) moves capacity to where it matters. An optional finite-difference
(gradient) MSE term (`edge_weight`) sharpens edges. Reported fidelity is the plain MSE.

Model state beyond the parameters, handled as the reference's training loop does:
- `magnitude_ema` of every synthesis layer (StyleGAN3's input normalisation) is tracked as an
  EMA of the mean square of the layer's input with beta = 0.5 ** (batch / 20000), and is
  initialised from one batch before training (layer by layer), so that early steps already see
  unit-scale activations.
- `w_avg[c]`: the reference tracks an EMA of the mapping output during training; here the
  mapping output is not used by the loss through w_avg, so it is computed once after training
  as the exact mean of w over many z per class (`compute_w_avg`), which is what the EMA
  estimates.

The mapping network uses `mapping_lr_multiplier` 1.0 instead of StyleGAN's 0.01 (which damps the
mapping to stabilise adversarial training); with a regression target the mapping must learn a
real non-linear z -> w map quickly.

Data are rendered inside the jitted training step from `fold_in(data_key, step)`, so a run is a
pure function of the seed and resuming from a checkpoint continues the identical batch stream.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from linkjax import checkpoint, files
from linkjax import miniworld as world
from linkjax.miniworld import groundtruth
from linkjax.models import stylegan_xl as sx

# Per-label loss weights, labels in PART_NAMES order:
# background, leg, body, tail, tongue, eye, nose, snout, ear, head.
PART_LOSS_WEIGHTS = (1.0, 3.0, 2.0, 4.0, 6.0, 6.0, 6.0, 3.0, 4.0, 2.0)
TRAIN_STATE_KIND = "miniworld_generator_train_state"


def generator_config(*, w_dim: int = 64, embed_dim: int = 32, channel_base: int = 1024,
                     channel_max: int = 32, stem_layers: int = 4, head_layers: int = 4,
                     margin_size: int = 2, mapping_layers: int = 2,
                     mapping_lr_multiplier: float = 1.0) -> sx.StyleGANXLConfig:
  """The miniworld generator's geometry: StyleGAN-XL, 16x16 stem, x2 heads to 32 and 64.

  Args:
    w_dim: width of W (and of the mapping MLP).
    embed_dim: width of the class-embedding table.
    channel_base, channel_max: per-layer channels min(channel_base / 2 / cutoff, channel_max).
    stem_layers: layers of the 16x16 StyleGAN3 stem (2 critically sampled ones are cut).
    head_layers: layers per x2 head; 4 is the smallest that keeps a 32x32 stage (3 or less
      collapses the 32x32 head into the 64x64 one).
    margin_size: extra pixels around the non-critical feature maps.
    mapping_layers: depth of the mapping MLP.
    mapping_lr_multiplier: equalised learning-rate multiplier of the mapping layers.
  Returns:
    StyleGANXLConfig with z_dim = THETA_DIM, c_dim = NUM_CLASSES, 64x64 output.
  """
  config = sx.superres_config(
      resolution=world.SIZE, stem_resolution=16, z_dim=world.THETA_DIM, w_dim=w_dim,
      c_dim=world.NUM_CLASSES, embed_dim=embed_dim, channel_base=channel_base,
      channel_max=channel_max, stem_layers=stem_layers, head_layers=head_layers,
      margin_size=margin_size)
  return config.replace(mapping_layers=mapping_layers,
                        mapping_lr_multiplier=mapping_lr_multiplier)


def sample_batch(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Draws (z, class) and renders their targets.

  Args:
    key: PRNG key.
    batch: number of samples B.
  Returns:
    z [B, THETA_DIM] float32 (unnormalised, as fed to the mapping), class_idx [B] int32,
    images [B, 64, 64, 3] float32 in [0, 1], masks [B, 64, 64] int32.
  """
  kc, kz = jax.random.split(key)
  class_idx = jax.random.randint(kc, (batch,), 0, world.NUM_CLASSES, dtype=jnp.int32)
  z = jax.random.normal(kz, (batch, world.THETA_DIM), jnp.float32)
  images, masks = render_target(z, class_idx)
  return z, class_idx, images, masks


def render_target(z: jax.Array, class_idx: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The render the generator must reproduce for (z, class).

  Args:
    z: [B, THETA_DIM] latents; class_idx: [B] int32.
  Returns:
    images [B, 64, 64, 3] float32 in [0, 1], masks [B, 64, 64] int32.
  """
  return groundtruth.true_render(z, class_idx)


def generated_images(model: sx.StyleGANXL, z: jax.Array, class_idx: jax.Array,
                     psi: float | jax.Array = 1.0) -> jax.Array:
  """Generator output as NHWC images in [0, 1] (no quantisation, no clipping).

  Args:
    model: generator; z: [B, THETA_DIM]; class_idx: [B] int32; psi: truncation.
  Returns:
    [B, 64, 64, 3] float32.
  """
  img = model.synthesis(model.mapping(z, class_idx, psi=psi))
  return (jnp.transpose(img, (0, 2, 3, 1)) + 1.0) * 0.5


def _loss_terms(model: sx.StyleGANXL, z, class_idx, target, mask, edge_weight: float):
  """Weighted loss, plain MSE and every synthesis layer's input mean square."""
  c = model.config
  ws = model.mapping(z, class_idx)
  img, feats = model.synthesis(ws, return_features=True)
  x = (jnp.transpose(img, (0, 2, 3, 1)) + 1.0) * 0.5
  err = jnp.square(x - target)
  weights = jnp.asarray(PART_LOSS_WEIGHTS, jnp.float32)[mask][..., None]
  loss = jnp.mean(weights * err)
  if edge_weight:
    def grads(a):
      return a[:, 1:, :, :] - a[:, :-1, :, :], a[:, :, 1:, :] - a[:, :, :-1, :]
    (gy, gx), (ty, tx) = grads(x), grads(target)
    loss = loss + jnp.float32(edge_weight) * (
        jnp.mean(jnp.square(gy - ty)) + jnp.mean(jnp.square(gx - tx)))
  names = c.layer_names
  mags = {spec.name: jax.lax.stop_gradient(jnp.mean(jnp.square(feats[names[i]])))
          for i, spec in enumerate(c.layers)}
  return loss, (jnp.mean(err), mags)


def _set_magnitudes(model: sx.StyleGANXL, mags: dict[str, jax.Array], beta: float) -> None:
  for name, m in mags.items():
    layer = getattr(model.synthesis, name)
    old = layer.magnitude_ema[...]
    layer.magnitude_ema[...] = m + (old - m) * jnp.float32(beta)


def init_magnitudes(model: sx.StyleGANXL, key: jax.Array, batch: int = 16) -> None:
  """Sets every layer's `magnitude_ema` to its input's mean square on one batch, in order.

  Args:
    model: generator (modified in place).
    key: PRNG key for the batch.
    batch: samples used.
  """
  z, class_idx, target, mask = sample_batch(key, batch)
  graphdef, state = nnx.split(model)

  @jax.jit
  def measure(state):
    g = nnx.merge(graphdef, state)
    return _loss_terms(g, z, class_idx, target, mask, 0.0)[1][1]

  # A layer's input depends on the gains of the layers before it: fix them one at a time.
  for spec in model.config.layers:
    mags = measure(nnx.state(model))
    getattr(model.synthesis, spec.name).magnitude_ema[...] = mags[spec.name]


def compute_w_avg(model: sx.StyleGANXL, key: jax.Array, n_per_class: int = 4096,
                  batch: int = 1024) -> None:
  """Sets `mapping.w_avg[c]` to the mean mapping output over n_per_class z per class.

  Args:
    model: generator (modified in place).
    key: PRNG key for the latents.
    n_per_class: latents per class.
    batch: latents per jitted call.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def mean_w(state, key, c):
    g = nnx.merge(graphdef, state)
    z = jax.random.normal(key, (batch, g.config.z_dim), jnp.float32)
    return jnp.mean(g.mapping(z, jnp.full((batch,), c, jnp.int32))[:, 0], axis=0)

  n_batches = max(1, math.ceil(n_per_class / batch))
  rows = []
  for c in range(model.config.c_dim):
    acc = [mean_w(state, jax.random.fold_in(jax.random.fold_in(key, c), i), jnp.int32(c))
           for i in range(n_batches)]
    rows.append(jnp.mean(jnp.stack(acc), axis=0))
  model.mapping.w_avg[...] = jnp.stack(rows)


def generator_fidelity(model: sx.StyleGANXL, key: jax.Array, n: int = 500,
                       psi: float = 1.0, batch: int = 100) -> dict[str, Any]:
  """How closely the generator reproduces the renders of the same (z, class).

  Args:
    model: generator.
    key: PRNG key for the held-out (z, class) (use a stream disjoint from training).
    n: number of samples (classes balanced: i % NUM_CLASSES).
    psi: truncation for the generated images (the render always uses the untruncated z).
    batch: samples per jitted call.
  Returns:
    dict with 'mse' (pixel MSE in [0, 1] vs the render of the same z), 'psnr',
    'mse_other' (vs the render of another z of the same class: the scale of "unrelated"),
    'ratio' (mse / mse_other), 'mse_animal' / 'mse_background' (split by the true mask),
    'mse_small_parts' (eye, nose, tongue pixels), 'mse_per_class' [NUM_CLASSES].
  """
  graphdef, state = nnx.split(model)
  small = jnp.asarray([world.PART_NAMES.index(p) for p in ("tongue", "eye", "nose")], jnp.int32)

  @jax.jit
  def stats(state, z, c):
    g = nnx.merge(graphdef, state)
    x = generated_images(g, z, c, psi=psi)
    target, mask = render_target(z, c)
    err = jnp.mean(jnp.square(x - target), axis=-1)  # [B, H, W]
    # Another z of the same class: roll by NUM_CLASSES within the (class-cycled) batch.
    other = jnp.roll(target, world.NUM_CLASSES, axis=0)
    err_other = jnp.mean(jnp.square(x - other), axis=(1, 2, 3))
    fg = (mask > 0).astype(jnp.float32)
    sm = jnp.any(mask[..., None] == small, axis=-1).astype(jnp.float32)
    return (jnp.mean(err, axis=(1, 2)), err_other, jnp.sum(err * fg, (1, 2)), jnp.sum(fg, (1, 2)),
            jnp.sum(err * (1 - fg), (1, 2)), jnp.sum(1 - fg, (1, 2)), jnp.sum(err * sm, (1, 2)),
            jnp.sum(sm, (1, 2)))

  if batch % world.NUM_CLASSES:
    raise ValueError("batch must be a multiple of NUM_CLASSES")
  n_batches = math.ceil(n / batch)
  outs = []
  for i in range(n_batches):
    kb = jax.random.fold_in(key, i)
    z = jax.random.normal(kb, (batch, model.config.z_dim), jnp.float32)
    c = jnp.arange(batch, dtype=jnp.int32) % world.NUM_CLASSES
    outs.append([np.asarray(o) for o in stats(state, z, c)])
  cols = [np.concatenate([o[j] for o in outs])[:n] for j in range(8)]
  mse_i, other_i, e_fg, n_fg, e_bg, n_bg, e_sm, n_sm = cols
  classes = np.arange(n) % world.NUM_CLASSES
  mse = float(np.mean(mse_i))
  return {
      "n": n, "psi": psi, "mse": mse, "psnr": float(-10 * np.log10(mse)),
      "mse_other": float(np.mean(other_i)), "ratio": mse / float(np.mean(other_i)),
      "mse_animal": float(e_fg.sum() / n_fg.sum()),
      "mse_background": float(e_bg.sum() / n_bg.sum()),
      "mse_small_parts": float(e_sm.sum() / max(n_sm.sum(), 1.0)),
      "mse_per_class": [float(np.mean(mse_i[classes == k])) for k in range(world.NUM_CLASSES)],
  }


def _optimizer(lr: float, steps: int, warmup: int) -> optax.GradientTransformation:
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, max(steps - 1, 1)),
                                             max(steps, 2), end_value=lr * 0.02)
  # Betas as StyleGAN's (0, 0.99) would be noisier; regression prefers the usual 0.9 momentum.
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched, b1=0.9, b2=0.99))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, batch: int,
                    edge_weight: float) -> Callable:
  """Builds the jitted step (params, rest, opt_state, key) -> (params, rest, opt_state, metrics)."""
  beta = 0.5 ** (batch / 20000.0)

  def step(params, rest, opt_state, key):
    z, c, target, mask = sample_batch(key, batch)

    def loss_fn(params):
      g = nnx.merge(graphdef, params, rest)
      return _loss_terms(g, z, c, target, mask, edge_weight)

    (loss, (mse, mags)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # optax's Adam bias correction computes float ** int32 step count, which strict dtype
    # promotion (as in the tests) rejects.
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    g = nnx.merge(graphdef, params, rest)
    _set_magnitudes(g, mags, beta)
    _, _, rest = nnx.split(g, nnx.Param, ...)
    return params, rest, opt_state, {"loss": loss, "mse": mse}

  return jax.jit(step, donate_argnums=(0, 1, 2))


def _save_train_state(path: pathlib.Path, params, rest, opt_state, step: int,
                      meta: dict[str, Any]) -> None:
  leaves = jax.tree.leaves((params, rest, opt_state))
  tree = {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
  checkpoint.save_tree(path, tree, dict(meta, step=step, n_leaves=len(leaves)), TRAIN_STATE_KIND)


def _load_train_state(path: pathlib.Path, template) -> tuple[Any, int, dict[str, Any]]:
  tree, meta = checkpoint.load_tree(path, TRAIN_STATE_KIND)
  treedef = jax.tree.structure(template)
  t_leaves = jax.tree.leaves(template)
  if meta["n_leaves"] != len(t_leaves):
    raise checkpoint.CheckpointError(f"{path}: {meta['n_leaves']} leaves, expected {len(t_leaves)}")
  leaves = [jnp.asarray(tree[f"{i:05d}"], t.dtype) for i, t in enumerate(t_leaves)]
  return jax.tree.unflatten(treedef, leaves), int(meta["step"]), meta


def train_generator(key: jax.Array, *, steps: int, batch: int, lr: float,
                    config: sx.StyleGANXLConfig | None = None, warmup: int = 200,
                    edge_weight: float = 0.0, work_dir: str | pathlib.Path | None = None,
                    resume: bool = False, ckpt_every: int = 500, eval_every: int = 500,
                    log_every: int = 50, time_limit_s: float | None = None,
                    log: Callable[[str], None] = print) -> sx.StyleGANXL:
  """Trains the generator by regression onto the renders and sets its per-class w_avg.

  Args:
    key: PRNG key; fold_in(key, 0) initialises, 1 drives the batches, 2 w_avg, 3 the
      held-out checks during training (disjoint from `generator_fidelity`'s caller keys as
      long as the caller does not reuse these folds).
    steps: optimiser steps (the learning-rate schedule's length).
    batch: rendered images per step.
    lr: peak Adam learning rate (warm-up, cosine decay to 2 % of it).
    config: generator geometry (default `generator_config()`).
    warmup: warm-up steps.
    edge_weight: weight of the image-gradient MSE term (0 disables it).
    work_dir: directory for resumable training state (`train_state/`) and the best model so far
      (`best/`, by held-out MSE on 100 samples every eval_every steps); None: no checkpoints.
    resume: continue from work_dir/train_state if it exists.
    ckpt_every: steps between training-state checkpoints.
    eval_every: steps between held-out checks.
    log_every: steps between log lines.
    time_limit_s: stop early (after a checkpoint) once this much wall time has passed.
    log: progress sink.
  Returns:
    The trained StyleGANXL (with w_avg set); if work_dir is given, the best held-out model.
  """
  t_start = time.time()
  config = config if config is not None else generator_config()
  k_init, k_data, k_wavg, k_eval = (jax.random.fold_in(key, i) for i in range(4))
  model = sx.StyleGANXL(config, rngs=nnx.Rngs(params=k_init))
  init_magnitudes(model, jax.random.fold_in(k_init, 1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = _optimizer(lr, steps, warmup)
  opt_state = tx.init(params)
  start = 0
  work = pathlib.Path(work_dir) if work_dir is not None else None
  meta = {"steps": steps, "batch": batch, "lr": lr, "warmup": warmup,
          "edge_weight": edge_weight, "config": config.to_dict()}
  best = math.inf
  # Wall time of earlier invocations of a resumed run; None when the state predates the record.
  elapsed_before: float | None = 0.0
  if work is not None and resume and (work / "train_state").exists():
    (params, rest, opt_state), start, saved = _load_train_state(
        work / "train_state", (params, rest, opt_state))
    best = saved.get("best_mse")  # None (JSON null): no evaluation yet
    best = math.inf if best is None else best
    elapsed_before = saved.get("elapsed_s")
    log(f"resumed at step {start} (best held-out mse {best:.5f})")
  train_step = make_train_step(graphdef, tx, batch, edge_weight)

  def evaluate(params, rest) -> float:
    g = nnx.merge(graphdef, params, rest)
    return generator_fidelity(g, k_eval, n=100, batch=100)["mse"]

  t0 = time.time()
  t_last, s_last = t0, start
  mse_acc, n_acc = 0.0, 0
  step = start
  while step < steps:
    params, rest, opt_state, metrics = train_step(params, rest, opt_state,
                                                  jax.random.fold_in(k_data, step))
    step += 1
    mse_acc += float(metrics["mse"])
    n_acc += 1
    if step % log_every == 0 or step == steps:
      now = time.time()
      log(f"step {step}/{steps} train_mse {mse_acc / n_acc:.5f} "
          f"{(step - s_last) * batch / (now - t_last):.1f} img/s elapsed {now - t0:.0f}s")
      t_last, s_last, mse_acc, n_acc = now, step, 0.0, 0
    out_of_time = time_limit_s is not None and time.time() - t0 > time_limit_s
    if work is not None and (step % eval_every == 0 or step == steps or out_of_time):
      mse = evaluate(params, rest)
      log(f"step {step} held-out mse {mse:.5f} (best {best:.5f})")
      if mse < best:
        best = mse
        checkpoint.save(work / "best", nnx.merge(graphdef, params, rest))
    if work is not None and (step % ckpt_every == 0 or step == steps or out_of_time):
      elapsed = None if elapsed_before is None else elapsed_before + time.time() - t_start
      _save_train_state(work / "train_state", params, rest, opt_state, step,
                        dict(meta, best_mse=best if math.isfinite(best) else None,
                             elapsed_s=elapsed))
    if out_of_time:
      log(f"time limit reached at step {step}")
      break
  if work is not None and (work / "best").exists():
    model = checkpoint.load(work / "best", role="generator")
  else:
    model = nnx.merge(graphdef, params, rest)
  compute_w_avg(model, k_wavg)
  return model


def train_and_save(key: jax.Array, out: str | pathlib.Path, **kw: Any) -> dict[str, Any]:
  """Trains, saves the model to `out` plus `out/metrics.json` (held-out fidelity).

  metrics.json's `train_wall_s` is this invocation's wall time; `train_wall_s_total` sums the
  training wall time of every invocation of a resumed run (recorded in the training state;
  null when the run was resumed from a state written before that record existed).

  Args:
    key: PRNG key (held-out evaluation uses fold_in(key, 10), disjoint from training).
    out: checkpoint directory to write.
    **kw: passed to `train_generator`.
  Returns:
    The metrics dict.
  """
  log = kw.get("log", print)
  t0 = time.time()
  model = train_generator(key, **kw)
  train_s = time.time() - t0
  total_s = train_s
  state_dir = pathlib.Path(kw["work_dir"]) / "train_state" if kw.get("work_dir") else None
  if state_dir is not None and state_dir.exists():
    total_s = checkpoint.read_tree_meta(state_dir, TRAIN_STATE_KIND).get("elapsed_s")
  out = pathlib.Path(out)
  checkpoint.save(out, model)
  k_eval = jax.random.fold_in(key, 10)
  metrics = {"train_wall_s": train_s, "train_wall_s_total": total_s,
             "fidelity_psi1": generator_fidelity(model, k_eval, n=500, psi=1.0),
             "fidelity_psi0.7": generator_fidelity(model, k_eval, n=500, psi=0.7),
             "train_args": {k: v for k, v in kw.items() if k not in ("log", "config")}}
  files.write_json(out / "metrics.json", metrics)
  log(json.dumps(metrics["fidelity_psi1"]))
  return metrics
