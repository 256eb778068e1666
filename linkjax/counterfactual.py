"""Counterfactual search in the classifier's representation space R (paper Sec. 3.3, 4.5, Fig. 7).

Given a representation r of an image of class `orig`, find a shift such that the image generated from
the linked latent `f(relu(r'))` is classified as `target`. Following the reference implementation, the
optimised variable is `shift`, initialised from U[0, 1) and applied as

    r' = r - shift,
    L(shift) = -o_target(r') + lambda_orig * o_orig(r') - lambda_cos * cos(f(r), f(r')),

where `o = head(r')` are the classifier logits computed from R by its final linear layer (no ReLU inside
the loss) and `f` is the linking network. `Delta r = -shift`; its norm is reported. After every gradient
step the reference renders `f(relu(r'))` with the generator, classifies the image through the exact
classifier input path, and stops when the argmax is the target (at most `max_steps` steps).

Here the whole search is one jitted pure function over a batch of (sample, target) pairs. The cheap
gradient steps run for every pair in lock-step with a per-pair done mask (done pairs keep their iterate
and optimiser state); the expensive image check is organised in windows of `check_every` steps, with
the window's iterates kept in a buffer. Two check modes:

- 'window' (default): after the window's gradient steps, all its iterates are rendered and classified
  in one batched call and the first target hit is taken. Identical to the reference's every-step check
  by construction (same stop steps, same final r'); it saves the per-step host round trips and batches
  the renders over pairs and steps, but renders as many images as the every-step check.
- 'last': only the window's last iterate is checked; when it is the target, the window's iterates are
  re-checked one by one (found pairs compacted into small groups) to locate the first flipping step.
  About `check_every` times fewer renders. Identical to the every-step check unless the prediction
  touches the target and leaves it again inside one window: the reference stops at such a transient
  touch, a sparse check cannot see it (measured on tiny random models with lr 0.5: 11/16 vs 15/16
  solved, see benchmarks/counterfactual_speed.py), so 'last' trades exactness for speed.

Why the batch is not a plain `jax.vmap` of a per-pair while-loop: under `vmap`, `lax.cond` becomes a
`select` that executes both branches, so the localisation branch of 'last' would run at every check and
the sparse checks would save nothing. The loop is therefore written on the batch with scalar predicates
(`any(found)`), while the per-pair loss and optimiser update are `jax.vmap`-ed over pairs.

Models enter only through three callables (all batched, pure, params passed explicitly):

    head(params, r [B, R]) -> logits [B, K]                classifier's final linear layer
    link_predict(params, r [B, R]) -> w [B, W]             linking network f
    render_classify(params, w [B, W]) -> logits [B, K]     w -> ws -> synthesis -> uint8 -> classifier

`params` is one pytree (e.g. a dict of NNX states) shared by the three; it is a traced argument, so the
compiled search is reused for new weights. The callables themselves are static (hashed by identity):
build them once (module-level functions or one `functools.partial`) to avoid retracing.

This module also holds the trajectory/decision-boundary analysis, Grad-CAM, the figure writers and the
experiment driver used by `experiments/counterfactual.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from linkjax import quantify

Array = jax.Array
Params = Any


class SearchFns(NamedTuple):
  """The three model callables of the search (see module docstring); all take `(params, x)`."""
  head: Callable[[Params, Array], Array]
  link_predict: Callable[[Params, Array], Array]
  render_classify: Callable[[Params, Array], Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
  """Hyper-parameters of the search; defaults are the reference's.

  Attributes:
    lambda_orig: weight of the original-class logit (penalised).
    lambda_cos: weight of the cosine similarity between f(r) and f(r') (rewarded).
    optimizer: 'sgd' (plain gradient descent, the reference) or 'adam'.
    learning_rate: optimiser step size.
    max_steps: maximum number of gradient steps per pair.
    check_every: steps per check window (1 = the reference's every-step check).
    check_mode: 'window': every iterate of a window is rendered and classified in one batched call
      after the window's gradient steps; identical to the every-step check by construction.
      'last': only the window's last iterate is checked; when it is the target, the window's iterates
      are re-checked one by one to locate the first flip. About check_every times fewer renders, and
      identical to the every-step check unless the prediction touches the target and leaves it again
      inside a window (then a later step is found, or none).
    check_batch: pairs checked together; only pairs not yet done are rendered, in groups of this
      size (None: ceil(P / 4)). 'window' renders check_every * check_batch images per call.
    locate_batch: pairs rendered together while locating the flip step inside a window
      (None: ceil(P / check_every), at least 1).
  """
  lambda_orig: float = 0.6
  lambda_cos: float = 10.0
  optimizer: str = "sgd"
  learning_rate: float = 0.5
  max_steps: int = 2000
  check_every: int = 10
  check_mode: str = "window"
  check_batch: int | None = None
  locate_batch: int | None = None

  def __post_init__(self):
    if self.optimizer not in ("sgd", "adam"):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
    if self.check_mode not in ("window", "last"):
      raise ValueError(f"check_mode must be 'window' or 'last', got {self.check_mode!r}")
    if self.max_steps < 1 or self.check_every < 1:
      raise ValueError("max_steps and check_every must be >= 1")


class SearchResult(NamedTuple):
  """Per-pair outcome of `search` (P pairs).

  Attributes:
    success: [P] bool, the generated image was classified as the target within max_steps.
    steps: [P] int32, gradient steps taken (the first step whose image is the target; max_steps if
      not successful).
    r_final: [P, R] float32, final r' = r - shift.
    shift: [P, R] float32, final shift (Delta r = -shift).
    pred: [P] int32, class predicted on the final generated image.
    prob_orig: [P] float32, softmax probability of the original class on the final image.
    prob_target: [P] float32, same for the target class.
    delta_norm: [P] float32, ||Delta r||_2 = ||r' - r||_2.
    num_renders: [] int32, number of batched render_classify calls (cost diagnostics).
    num_images: [] int32, number of images rendered and classified in total.
  """
  success: Array
  steps: Array
  r_final: Array
  shift: Array
  pred: Array
  prob_orig: Array
  prob_target: Array
  delta_norm: Array
  num_renders: Array
  num_images: Array


def make_optimizer(config: SearchConfig) -> optax.GradientTransformation:
  """The Optax optimiser named by the config (applied per pair)."""
  if config.optimizer == "sgd":
    return optax.sgd(config.learning_rate)
  return optax.adam(config.learning_rate)


def initial_shift(key: Array, num_pairs: int, dim: int, offset: int = 0) -> Array:
  """Initial shifts ~ U[0, 1), one independent stream per pair index.

  Pair i uses `fold_in(key, offset + i)`, so a pair gets the same start whatever batch it is in.

  Args:
    key: a PRNG key (`jax.random.key(seed)`).
    num_pairs: P.
    dim: R, the representation size.
    offset: index of the first pair.

  Returns:
    [P, R] float32.
  """
  idx = jnp.arange(num_pairs, dtype=jnp.uint32) + jnp.uint32(offset)
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (dim,), jnp.float32))(idx)


def _cosine(a: Array, b: Array) -> Array:
  # torch.nn.functional.cosine_similarity semantics: a.b / max(|a| |b|, eps).
  return jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), jnp.float32(1e-8))


def pair_loss(fns: SearchFns, params: Params, config: SearchConfig, shift: Array, r: Array,
              f_r: Array, orig: Array, target: Array) -> Array:
  """The search loss for one pair.

  Args:
    fns, params, config: models and hyper-parameters.
    shift: [R] current shift; r' = r - shift.
    r: [R] original representation.
    f_r: [W] f(r), precomputed.
    orig, target: [] int32 class indices.

  Returns:
    [] float32 loss.
  """
  rp = r - shift
  logits = fns.head(params, rp[None])[0]
  w = fns.link_predict(params, rp[None])[0]
  return (-logits[target] + jnp.float32(config.lambda_orig) * logits[orig]
          - jnp.float32(config.lambda_cos) * _cosine(f_r, w))


def _where_pairs(mask: Array, new: Any, old: Any) -> Any:
  """Per-pair select on pytrees whose leaves have a leading pair axis."""
  def sel(n, o):
    m = mask.reshape(mask.shape + (1,) * (n.ndim - 1))
    return jnp.where(m, n, o)
  return jax.tree.map(sel, new, old)


def _make_step(fns: SearchFns, params: Params, config: SearchConfig, r: Array, f_r: Array,
               orig: Array, target: Array):
  """One masked optimiser step for the batch: (shift, opt_state, active [P]) -> (shift, opt_state)."""
  opt = make_optimizer(config)
  grad_fn = jax.vmap(jax.grad(functools.partial(pair_loss, fns, params, config)))

  def step(shift, opt_state, active):
    g = grad_fn(shift, r, f_r, orig, target)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes python floats and int counts
      updates, new_state = jax.vmap(opt.update)(g, opt_state, shift)
    new_shift = jax.vmap(optax.apply_updates)(shift, updates)
    # Done pairs (and steps beyond max_steps) keep their iterate and optimiser state unchanged.
    return _where_pairs(active, new_shift, shift), _where_pairs(active, new_state, opt_state)

  return opt, step


def _predict(fns: SearchFns, params: Params, r: Array, shift: Array) -> Array:
  """Class predicted on the image generated from f(relu(r - shift)): [P, R] -> [P] int32."""
  logits = fns.render_classify(params, fns.link_predict(params, jax.nn.relu(r - shift)))
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("fns", "config"))
def search(fns: SearchFns, params: Params, r: Array, orig: Array, target: Array, shift0: Array, *,
           config: SearchConfig) -> SearchResult:
  """Counterfactual search for a batch of (sample, target) pairs; one compiled pure function.

  Args:
    fns: the model callables (static).
    params: pytree of model parameters used by the callables.
    r: [P, R] float32 original representations.
    orig: [P] int32 original classes (the penalised logit).
    target: [P] int32 target classes.
    shift0: [P, R] float32 initial shifts (reference: U[0, 1), see `initial_shift`).
    config: hyper-parameters (static).

  Returns:
    A `SearchResult`; with check_mode 'window', `steps` and `r_final` do not depend on
    `config.check_every` (for 'last', see the transient caveat in the module docstring).
  """
  r = r.astype(jnp.float32)
  orig = orig.astype(jnp.int32)
  target = target.astype(jnp.int32)
  num_pairs = r.shape[0]
  c = min(config.check_every, config.max_steps)
  m = config.locate_batch or max(1, min(num_pairs, -(-num_pairs // c)))
  g = min(config.check_batch or max(1, -(-num_pairs // 4)), num_pairs)
  max_steps = config.max_steps
  f_r = fns.link_predict(params, r)
  opt, step = _make_step(fns, params, config, r, f_r, orig, target)

  def chunk(carry):
    shift, opt_state, k, done, stop_step, renders, images = carry

    def inner(state, j):
      s, o = state
      active = jnp.logical_and(~done, k + j < max_steps)
      s, o = step(s, o, active)
      return (s, o), s

    (shift, opt_state), buf = jax.lax.scan(inner, (shift, opt_state), jnp.arange(c, dtype=jnp.int32))
    n_valid = jnp.minimum(c, max_steps - k)  # real steps in this window

    def over_active(render_group, width):
      # Runs render_group on the not-done pairs only, compacted into groups of g (done pairs are not
      # rendered again). render_group(gidx [n], valid [n], n) -> first [n] int32 (-1: no hit).
      def gcond(s):
        return jnp.any(s[1])

      def group(size):
        def body(s):
          first, pending, n, n_img = s
          idx = jnp.nonzero(pending, size=size, fill_value=num_pairs)[0]  # num_pairs = padding
          valid = idx < num_pairs
          fj = render_group(jnp.minimum(idx, num_pairs - 1), valid, size)
          return (first.at[idx].set(fj, mode="drop"), pending.at[idx].set(False, mode="drop"),
                  n + 1, n_img + width * size)
        return body

      def gbody(s):
        if g == 1:
          return group(1)(s)
        # Full groups while enough pairs remain, then single pairs: no padded renders.
        return jax.lax.cond(jnp.sum(s[1]) >= g, group(g), group(1), s)

      init = (jnp.full((num_pairs,), -1, jnp.int32), ~done, jnp.int32(0), jnp.int32(0))
      first, _, n, n_img = jax.lax.while_loop(gcond, gbody, init)
      return first, n, n_img

    if config.check_mode == "window":
      # Every iterate of the window in one batched render per group: exactly the every-step check.
      def window_group(gidx, valid, size):
        preds = _predict(fns, params, jnp.tile(r[gidx], (c, 1)), buf[:, gidx].reshape(c * size, -1))
        hit = jnp.logical_and(preds.reshape(c, size) == target[gidx][None],
                              jnp.arange(c, dtype=jnp.int32)[:, None] < n_valid)
        hit = jnp.logical_and(hit, valid[None])
        return jnp.where(jnp.any(hit, axis=0), jnp.argmax(hit, axis=0).astype(jnp.int32), -1)

      first, n_calls, n_img = over_active(window_group, c)
      found = jnp.logical_and(~done, first >= 0)
      first = jnp.where(found, first, n_valid - 1)
      located = jnp.take_along_axis(buf, first[None, :, None], axis=0)[0]
      shift = jnp.where(found[:, None], located, shift)
      stop_step = jnp.where(found, k + first + 1, stop_step)
      return (shift, opt_state, k + n_valid, jnp.logical_or(done, found), stop_step,
              renders + n_calls, images + n_img)

    def last_group(gidx, valid, size):
      hit = jnp.logical_and(valid, _predict(fns, params, r[gidx], shift[gidx]) == target[gidx])
      return jnp.where(hit, jnp.int32(0), jnp.int32(-1))

    hit_last, n_chk, img_chk = over_active(last_group, 1)
    found = jnp.logical_and(~done, hit_last >= 0)

    def locate(_):
      # First iterate of the window whose image is the target, for each pair found at the window end.
      # Found pairs are compacted into groups of m (usually a window finds few pairs), so locating
      # costs about m * j image renders instead of P * j.
      def group_cond(s):
        first, _, _ = s
        return jnp.any(jnp.logical_and(found, first < 0))

      def group_body(s):
        first, n, n_img = s
        pending = jnp.logical_and(found, first < 0)
        idx = jnp.nonzero(pending, size=m, fill_value=num_pairs)[0]  # [m]; num_pairs = padding
        valid = idx < num_pairs
        gidx = jnp.minimum(idx, num_pairs - 1)
        r_g, t_g = r[gidx], target[gidx]

        def cond(t):
          j, fj, _ = t
          return jnp.logical_and(j < n_valid, jnp.any(jnp.logical_and(valid, fj < 0)))

        def body(t):
          j, fj, n = t
          hit = jnp.logical_and(jnp.logical_and(valid, fj < 0),
                                _predict(fns, params, r_g, buf[j][gidx]) == t_g)
          return j + 1, jnp.where(hit, j, fj), n + 1

        _, fj, n_g = jax.lax.while_loop(cond, body, (jnp.int32(0), jnp.full((m,), -1, jnp.int32),
                                                      jnp.int32(0)))
        # A member not re-found (only possible if two renders of one iterate disagreed) takes the
        # window's last iterate, so that the group loop always makes progress.
        fj = jnp.where(fj < 0, n_valid - 1, fj)
        return first.at[idx].set(fj, mode="drop"), n + n_g, n_img + n_g * m

      init = (jnp.full((num_pairs,), -1, jnp.int32), jnp.int32(0), jnp.int32(0))
      return jax.lax.while_loop(group_cond, group_body, init)

    def skip(_):
      return jnp.full((num_pairs,), -1, jnp.int32), jnp.int32(0), jnp.int32(0)

    if c == 1:  # the window's only iterate was just checked
      first, n_loc, img_loc = jnp.zeros((num_pairs,), jnp.int32), jnp.int32(0), jnp.int32(0)
    else:
      first, n_loc, img_loc = jax.lax.cond(jnp.any(found), locate, skip, None)
    first = jnp.where(jnp.logical_and(found, first >= 0), first, n_valid - 1)
    located = jnp.take_along_axis(buf, first[None, :, None], axis=0)[0]
    shift = jnp.where(found[:, None], located, shift)
    stop_step = jnp.where(found, k + first + 1, stop_step)
    done = jnp.logical_or(done, found)
    return (shift, opt_state, k + n_valid, done, stop_step, renders + n_chk + n_loc,
            images + img_chk + img_loc)

  def cont(carry):
    _, _, k, done, _, _, _ = carry
    return jnp.logical_and(k < max_steps, ~jnp.all(done))

  shift0 = shift0.astype(jnp.float32)
  init = (shift0, jax.vmap(opt.init)(shift0), jnp.int32(0), jnp.zeros((num_pairs,), bool),
          jnp.full((num_pairs,), max_steps, jnp.int32), jnp.int32(0), jnp.int32(0))
  shift, _, _, done, stop_step, renders, images = jax.lax.while_loop(cont, chunk, init)

  r_final = r - shift
  logits = fns.render_classify(params, fns.link_predict(params, jax.nn.relu(r_final)))
  probs = jax.nn.softmax(logits, axis=-1)
  take = lambda idx: jnp.take_along_axis(probs, idx[:, None], axis=1)[:, 0]
  return SearchResult(
      success=done, steps=stop_step, r_final=r_final, shift=shift,
      pred=jnp.argmax(logits, axis=-1).astype(jnp.int32), prob_orig=take(orig),
      prob_target=take(target), delta_norm=jnp.linalg.norm(shift, axis=-1),
      num_renders=renders + 1, num_images=images + num_pairs)


@functools.partial(jax.jit, static_argnames=("fns", "config", "num_steps", "every"))
def trajectory(fns: SearchFns, params: Params, r: Array, orig: Array, target: Array, shift0: Array,
               stop_steps: Array, *, config: SearchConfig, num_steps: int, every: int = 1
               ) -> tuple[Array, Array]:
  """Re-runs the deterministic search path and records r' along it.

  Pair p is updated for its first `stop_steps[p]` steps and then frozen (as in `search`), so its last
  recorded iterate equals `search(...).r_final[p]` when `stop_steps = search(...).steps`.

  Args:
    fns, params, r, orig, target, shift0, config: as for `search`.
    stop_steps: [P] int32 number of steps per pair (e.g. `SearchResult.steps`).
    num_steps: number of steps to run (static; e.g. max(stop_steps)).
    every: record every `every` steps (static).

  Returns:
    (step_index [T] int32, r_path [T, P, R]) with T = ceil(num_steps / every) + 1; step_index[0] = 0
    (r' = r - shift0) and the last entry is step num_steps.
  """
  r = r.astype(jnp.float32)
  orig = orig.astype(jnp.int32)
  target = target.astype(jnp.int32)
  stop_steps = stop_steps.astype(jnp.int32)
  f_r = fns.link_predict(params, r)
  opt, step = _make_step(fns, params, config, r, f_r, orig, target)
  num_records = -(-num_steps // every)

  def outer(state, t):
    def inner(s, j):
      k = t * every + j
      active = jnp.logical_and(k < stop_steps, k < num_steps)
      return step(*s, active), None
    state, _ = jax.lax.scan(inner, state, jnp.arange(every, dtype=jnp.int32))
    return state, state[0]

  shift0 = shift0.astype(jnp.float32)
  _, shifts = jax.lax.scan(outer, (shift0, jax.vmap(opt.init)(shift0)),
                           jnp.arange(num_records, dtype=jnp.int32))
  shifts = jnp.concatenate([shift0[None], shifts], axis=0)
  idx = jnp.minimum(jnp.arange(num_records + 1, dtype=jnp.int32) * every, num_steps)
  return idx, r[None] - shifts


# --------------------------------------------------------------------------------------------------
# Trajectory analysis: decision boundary, frames, metrics.


def decision_boundary(pred: np.ndarray, start_class: int | None = None) -> int:
  """Index of the first point whose predicted class differs from the start class, or -1.

  Args:
    pred: [T] int predicted classes along a path.
    start_class: the class the path starts from (default pred[0]; `analyse_pair` passes the class of
      the original image f(r), since the search's first iterate r - shift0 may already differ).

  Returns:
    The boundary index b (pred[b] != start, pred[:b] == start); the two frames around the boundary
    are b - 1 and b (b = 0: the point before is the original image).
  """
  pred = np.asarray(pred)
  start = pred[0] if start_class is None else start_class
  changed = np.nonzero(pred != start)[0]
  return int(changed[0]) if changed.size else -1


def frame_indices(num_points: int, boundary: int, n_frames: int) -> np.ndarray:
  """Evenly spaced path indices that include the first, the last and the two around the boundary.

  Args:
    num_points: T, path length.
    boundary: index from `decision_boundary` (-1: none).
    n_frames: desired number of frames (>= 2; fewer if the path is shorter).

  Returns:
    [N] sorted unique int indices in [0, T).
  """
  must = {0, num_points - 1}
  if boundary > 0:
    must |= {boundary - 1, boundary}
  n_free = max(n_frames - len(must), 0)
  even = np.round(np.linspace(0, num_points - 1, n_free + 2)).astype(int)[1:-1] if n_free else []
  idx = set(must) | set(int(i) for i in even)
  # Fill up to n_frames when rounding produced duplicates.
  for i in np.round(np.linspace(0, num_points - 1, num_points)).astype(int):
    if len(idx) >= min(n_frames, num_points):
      break
    idx.add(int(i))
  return np.array(sorted(idx), dtype=np.int64)


def image_distances(images: np.ndarray, ref: np.ndarray,
                    lpips_fn: Callable[[Array, Array], Array] | None = None) -> dict[str, np.ndarray]:
  """Pixel MSE and (optionally) perceptual distance of each image to a reference image.

  Images are clipped to [-1, 1] first (the range the uint8 image shown and classified can express).

  Args:
    images: [T, 3, H, W] float in ~[-1, 1] (NCHW, generator output).
    ref: [3, H, W] the original image.
    lpips_fn: `lpips(a, b) -> [B]` on NCHW [-1, 1] images, or None.

  Returns:
    {'mse': [T] mean squared error on the [0, 1] pixel scale, 'lpips': [T] (only with lpips_fn)}.
  """
  images = np.clip(np.asarray(images, np.float32), -1.0, 1.0)
  ref = np.clip(np.asarray(ref, np.float32), -1.0, 1.0)
  out = {"mse": (((images - ref[None]) * 0.5) ** 2).mean(axis=(1, 2, 3))}
  if lpips_fn is not None:
    refs = np.broadcast_to(ref[None], images.shape)
    out["lpips"] = np.asarray(lpips_fn(jnp.asarray(images), jnp.asarray(refs)), np.float32).reshape(-1)
  return out


def relative_part_metrics(metrics: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """Part metrics normalised to the original image: area as a ratio, the others as differences.

  Args:
    metrics: [T, n_parts, 5] (area, luminance, entropy, eccentricity, angle) along the path.
    ref: [n_parts, 5] the same on the original image.

  Returns:
    [T, n_parts, 5]; area / area_ref (NaN where the part is absent in the original), others minus ref.
  """
  metrics = np.asarray(metrics, np.float64)
  ref = np.asarray(ref, np.float64)
  out = metrics - ref[None]
  with np.errstate(divide="ignore", invalid="ignore"):
    out[..., 0] = np.where(ref[None, :, 0] > 0, metrics[..., 0] / ref[None, :, 0], np.nan)
  return out


# --------------------------------------------------------------------------------------------------
# Grad-CAM.


def grad_cam(head: Callable[[Array], Array], features: Array, class_idx: Array,
             out_size: tuple[int, int] | None = None, normalize: bool = False) -> Array:
  """Grad-CAM on the last convolutional stage, with gradients from `jax.grad`.

  The class logit is `head(mean_hw(features))` (ResNet: global average pooling then the fc layer), so
  its gradient with respect to the feature map is exact; channel weights are the spatial means of the
  gradients and `cam = relu(sum_k w_k A_k)`.

  Args:
    head: r [B, C] -> logits [B, K] (e.g. `model.head`).
    features: [B, h, w, C] NHWC activations of the last stage (acts['layer4']).
    class_idx: [B] int32 class whose logit is explained.
    out_size: (H, W) to upsample to (bilinear), or None for the feature resolution.
    normalize: divide each map by its maximum (maps that are all zero stay zero).

  Returns:
    [B, H, W] float32 class activation maps.
  """
  features = features.astype(jnp.float32)
  class_idx = class_idx.astype(jnp.int32)

  def logit_sum(a):
    logits = head(jnp.mean(a, axis=(1, 2)))
    return jnp.sum(jnp.take_along_axis(logits, class_idx[:, None], axis=1))

  grads = jax.grad(logit_sum)(features)  # per-sample logits are independent, so the sum splits
  weights = jnp.mean(grads, axis=(1, 2))  # [B, C]
  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features, weights))
  if out_size is not None:
    cam = jax.image.resize(cam, (cam.shape[0],) + tuple(out_size), method="bilinear")
  if normalize:
    m = jnp.max(cam, axis=(1, 2), keepdims=True)
    cam = jnp.where(m > 0, cam / jnp.where(m > 0, m, 1.0), 0.0)
  return cam


# --------------------------------------------------------------------------------------------------
# The reference's procedure (baseline for tests and the speed benchmark).


def reference_search(fns: SearchFns, params: Params, r: Array, orig: Array, target: Array,
                     shift0: Array, *, config: SearchConfig) -> SearchResult:
  """The reference's procedure: one pair at a time, a Python loop of jitted steps, image check each step.

  Like the original code, every gradient step is followed by rendering and classifying the image and
  reading the prediction back to the host. Slow by design; `search` must agree with it.

  Args:
    as for `search` (config.check_every is ignored: the check runs after every step).

  Returns:
    A `SearchResult` (num_renders = total number of render calls, all pairs).
  """
  opt = make_optimizer(config)

  @jax.jit
  def step(params, shift, opt_state, r, f_r, orig, target):
    g = jax.grad(lambda s: pair_loss(fns, params, config, s, r, f_r, orig, target))(shift)
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = opt.update(g, opt_state, shift)
    return optax.apply_updates(shift, updates), opt_state

  @jax.jit
  def check(params, r, shift):
    logits = fns.render_classify(params, fns.link_predict(params, jax.nn.relu(r - shift)[None]))[0]
    return jnp.argmax(logits), jax.nn.softmax(logits)

  link = jax.jit(fns.link_predict)
  out = {k: [] for k in SearchResult._fields if k not in ("num_renders", "num_images")}
  renders = 0
  for p in range(r.shape[0]):
    rp, o, t = jnp.asarray(r[p], jnp.float32), jnp.int32(orig[p]), jnp.int32(target[p])
    f_r = link(params, rp[None])[0]
    shift = jnp.asarray(shift0[p], jnp.float32)
    opt_state = opt.init(shift)
    success, steps = False, config.max_steps
    for k in range(config.max_steps):
      shift, opt_state = step(params, shift, opt_state, rp, f_r, o, t)
      pred, _ = check(params, rp, shift)
      renders += 1
      if int(pred) == int(t):
        success, steps = True, k + 1
        break
    pred, probs = check(params, rp, shift)
    out["success"].append(success)
    out["steps"].append(steps)
    out["r_final"].append(rp - shift)
    out["shift"].append(shift)
    out["pred"].append(int(pred))
    out["prob_orig"].append(probs[o])
    out["prob_target"].append(probs[t])
    out["delta_norm"].append(jnp.linalg.norm(shift))
  return SearchResult(
      success=jnp.asarray(out["success"]), steps=jnp.asarray(out["steps"], jnp.int32),
      r_final=jnp.stack(out["r_final"]), shift=jnp.stack(out["shift"]),
      pred=jnp.asarray(out["pred"], jnp.int32), prob_orig=jnp.stack(out["prob_orig"]),
      prob_target=jnp.stack(out["prob_target"]), delta_norm=jnp.stack(out["delta_norm"]),
      num_renders=jnp.int32(renders + r.shape[0]), num_images=jnp.int32(renders + r.shape[0]))


# --------------------------------------------------------------------------------------------------
# Concrete models (ResNet classifier, StyleGAN-XL generator, linking network) behind the callables.


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """The search callables for the contract models; hashable, so equal instances share compilations.

  `params` is {'classifier': nnx.State, 'generator': nnx.State, 'link': link params}.

  Attributes:
    classifier: graphdef of a `linkjax.models.resnet.ResNet`.
    generator: graphdef of a `linkjax.models.stylegan_xl.StyleGANXL`.
    num_ws: the generator's number of ws rows (w is broadcast to all of them).
    resize, crop: the classifier's eval transform geometry.
  """
  classifier: Any
  generator: Any
  num_ws: int
  resize: int | None
  crop: int | None

  def head(self, params: Params, r: Array) -> Array:
    """Classifier fc layer. r: [B, R] -> [B, K]."""
    from flax import nnx
    return nnx.merge(self.classifier, params["classifier"]).head(r)

  def link_predict(self, params: Params, r: Array) -> Array:
    """Linking network. r: [B, R] -> w [B, W]."""
    from linkjax import link
    return link.predict(params["link"], r)

  def images(self, params: Params, w: Array, return_features: bool = False) -> Any:
    """Generator: w [B, W] -> images [B, 3, H, W] in ~[-1, 1] (and features if asked)."""
    from flax import nnx
    from linkjax.models import stylegan_xl
    gen = nnx.merge(self.generator, params["generator"])
    return gen.synthesis(stylegan_xl.broadcast_w(w, self.num_ws), return_features=return_features)

  def classifier_input(self, images: Array) -> Array:
    """The exact input path: [B, 3, H, W] in [-1, 1] -> uint8 -> resize/crop/normalise NHWC."""
    from linkjax import preprocess
    return preprocess.classifier_input(preprocess.to_uint8(images), resize=self.resize, crop=self.crop)

  def classify(self, params: Params, x: Array) -> tuple[Array, dict[str, Array]]:
    """Classifier on a prepared input x [B, h, w, 3] -> (logits, acts)."""
    from flax import nnx
    return nnx.merge(self.classifier, params["classifier"])(x)

  def render_classify(self, params: Params, w: Array) -> Array:
    """w [B, W] -> classifier logits [B, K] of the generated image (uint8 path)."""
    return self.classify(params, self.classifier_input(self.images(params, w)))[0]

  def search_fns(self) -> SearchFns:
    return SearchFns(self.head, self.link_predict, self.render_classify)


def model_fns(classifier: Any, generator: Any, link_params: Any) -> tuple[ModelFns, Params]:
  """Splits contract models into (ModelFns, params) for `search`.

  Args:
    classifier: a ResNet (its config gives resize/crop).
    generator: a StyleGANXL.
    link_params: linking-network params (`linkjax.link.load(...)[0]`).

  Returns:
    (fns, params).
  """
  from flax import nnx
  c_def, c_state = nnx.split(classifier)
  g_def, g_state = nnx.split(generator)
  fns = ModelFns(classifier=c_def, generator=g_def, num_ws=int(generator.config.num_ws),
                 resize=classifier.config.resize, crop=classifier.config.crop)
  params = {"classifier": c_state, "generator": g_state,
            "link": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), link_params)}
  return fns, params


@functools.partial(jax.jit, static_argnames=("fns", "seg_def"))
def _render_analyse(fns: ModelFns, seg_def: Any, params: Params, seg_state: Any,
                    w: Array) -> dict[str, Array]:
  """Renders w: logits, images (NCHW), uint8 (NHWC) and, with a segmenter, masks + images at mask size."""
  from flax import nnx
  from linkjax import preprocess
  images, feats = fns.images(params, w, return_features=True)
  logits = fns.classify(params, fns.classifier_input(images))[0]
  out = {"logits": logits, "images": images, "uint8": preprocess.to_uint8(images)}
  if seg_def is not None:
    from linkjax.models import segmenter as seg_lib
    seg = nnx.merge(seg_def, seg_state)
    masks = seg_lib.predict_masks(seg, seg_lib.select_features(feats, seg.config.feature_layers))
    x01 = out["uint8"].astype(jnp.float32) / jnp.float32(255.0)
    size = masks.shape[-1]
    out["masks"] = masks
    out["metric_images"] = jax.image.resize(x01, (x01.shape[0], size, size, 3), "linear")
  return out


@functools.partial(jax.jit, static_argnames=("fns",))
def _grad_cam_images(fns: ModelFns, params: Params, w: Array, class_idx: Array) -> dict[str, Array]:
  """Grad-CAM (layer4) of class_idx on the image generated from w, at the classifier input size."""
  from flax import nnx
  x = fns.classifier_input(fns.images(params, w))
  _, acts = fns.classify(params, x)
  head = nnx.merge(fns.classifier, params["classifier"]).head
  cam = grad_cam(head, acts["layer4"], class_idx, out_size=x.shape[1:3], normalize=True)
  # The classifier's view (resized, cropped, de-normalised) for display under the map.
  mean = jnp.asarray([0.485, 0.456, 0.406], jnp.float32)
  std = jnp.asarray([0.229, 0.224, 0.225], jnp.float32)
  return {"cam": cam, "view": jnp.clip(x * std + mean, 0.0, 1.0)}


class PairAnalysis(NamedTuple):
  """Analysis of one pair's path (T analysed points, sorted by step)."""
  steps: np.ndarray          # [T] int, step index along the path (0 = r - shift0)
  pred: np.ndarray           # [T] int
  probs: np.ndarray          # [T, K]
  boundary: int              # index into steps of the first class change from the original
                             # image's class (-1: none); exact between analysed points
  frames: np.ndarray         # [N] indices into steps
  frame_images: np.ndarray   # [N, H, W, 3] uint8
  ref_image: np.ndarray      # [H, W, 3] uint8, image of f(r) (the original, no shift)
  ref_pred: int
  distances: dict[str, np.ndarray]   # 'mse', optional 'lpips': [T], to the original image
  part_metrics: np.ndarray | None    # [T, L, 5] relative to the original (see relative_part_metrics)


def analyse_pair(fns: ModelFns, params: Params, r: np.ndarray, r_path: np.ndarray, *,
                 n_frames: int = 8, max_points: int = 200, batch: int = 16, segmenter: Any = None,
                 lpips_fn: Callable[[Array, Array], Array] | None = None) -> PairAnalysis:
  """Renders a pair's path, finds the decision boundary and computes trajectory metrics.

  The path is analysed at up to `max_points` evenly spaced steps; the decision boundary found there
  is then refined by rendering every step between the two points around it, so the boundary step is
  exact (up to a class change that reverses between two analysed points).

  Args:
    fns, params: models (see `model_fns`).
    r: [R] original representation (reference image = f(r)).
    r_path: [S + 1, R] r' at steps 0..S (from `trajectory`, every=1).
    n_frames: frames to render (always including first, last and the two around the boundary).
    max_points: analysed points before boundary refinement.
    batch: renders per call.
    segmenter: optional FewShotSegmenter on the generator's features (enables part metrics).
    lpips_fn: optional perceptual distance lpips(a, b) on NCHW [-1, 1] images.

  Returns:
    A `PairAnalysis`.
  """
  from flax import nnx
  from linkjax import quantify
  seg_def, seg_state = nnx.split(segmenter) if segmenter is not None else (None, None)
  n_labels = segmenter.config.n_labels if segmenter is not None else 0
  num = r_path.shape[0]

  cache: dict[int, dict[str, np.ndarray]] = {}

  # Point -1 is the original image f(r) (r >= 0, so f(relu(r)) = f(r)); others are path steps.
  points = lambda s: np.asarray(r, np.float32) if s < 0 else r_path[s]

  def render(step_list):
    todo = [s for s in step_list if s not in cache]
    for a in range(0, len(todo), batch):
      chunk = todo[a:a + batch]
      chunk_padded = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape
      rp = jnp.asarray(np.stack([points(s) for s in chunk_padded]))
      out = jax.device_get(_render_analyse(fns, seg_def, params, seg_state,
                                           fns.link_predict(params, jax.nn.relu(rp))))
      for i, s in enumerate(chunk):
        cache[s] = {k: v[i] for k, v in out.items()}


  every = max(1, -(-num // max_points))
  coarse = sorted(set(range(0, num, every)) | {num - 1})
  render([-1] + coarse)
  ref = cache.pop(-1)
  ref_pred = int(np.argmax(ref["logits"]))
  preds = [int(np.argmax(cache[s]["logits"])) for s in coarse]
  b = decision_boundary(np.asarray(preds), ref_pred)
  if b > 0 and coarse[b] - coarse[b - 1] > 1:
    render(list(range(coarse[b - 1] + 1, coarse[b])))
  steps = np.array(sorted(cache), dtype=np.int64)
  logits = np.stack([cache[s]["logits"] for s in steps])
  pred = logits.argmax(-1)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  boundary = decision_boundary(pred, ref_pred)
  frames = frame_indices(len(steps), boundary, n_frames)
  images = np.stack([cache[s]["images"] for s in steps])
  distances = image_distances(images, ref["images"], lpips_fn)
  metrics = None
  if segmenter is not None:
    imgs = np.stack([ref["metric_images"]] + [cache[s]["metric_images"] for s in steps])
    masks = np.stack([ref["masks"]] + [cache[s]["masks"] for s in steps])
    pad = -len(imgs) % batch  # fixed batch shape: one compilation
    imgs = np.concatenate([imgs, np.repeat(imgs[-1:], pad, 0)])
    masks = np.concatenate([masks, np.repeat(masks[-1:], pad, 0)])
    m = np.concatenate([np.asarray(quantify.part_metrics(jnp.asarray(imgs[a:a + batch]),
                                                         jnp.asarray(masks[a:a + batch]),
                                                         n_labels=n_labels))
                        for a in range(0, len(imgs), batch)])
    metrics = relative_part_metrics(m[1:len(steps) + 1], m[0])
  return PairAnalysis(steps=steps, pred=pred, probs=probs, boundary=boundary, frames=frames,
                      frame_images=np.stack([cache[int(steps[i])]["uint8"] for i in frames]),
                      ref_image=np.asarray(ref["uint8"]), ref_pred=ref_pred,
                      distances=distances, part_metrics=metrics)


# --------------------------------------------------------------------------------------------------
# Figures (paper Fig. 7) and the experiment driver.


def _class_colour(c: int, orig: int, target: int) -> str:
  return {orig: "tab:blue", target: "tab:orange"}.get(int(c), "tab:grey")


def plot_frames(path: pathlib.Path, a: PairAnalysis, orig: int, target: int) -> None:
  """Original image plus the path frames; inset = target probability, frame colour = predicted class."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(a.frames) + 1
  fig, axes = plt.subplots(1, n, figsize=(1.8 * n, 2.2))
  items = [(a.ref_image, a.ref_pred, None, "original f(r)")]
  for j, i in enumerate(a.frames):
    tag = "boundary" if i == a.boundary else ("before" if i == a.boundary - 1 else "")
    if a.boundary == 0 and i == 0:
      tag = "boundary (original = before)"
    items.append((a.frame_images[j], int(a.pred[i]), float(a.probs[i, target]),
                  f"step {int(a.steps[i])}" + (f"\n{tag}" if tag else "")))
  for ax, (img, pred, p_t, title) in zip(np.atleast_1d(axes), items):
    ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
      side.set_edgecolor(_class_colour(pred, orig, target))
      side.set_linewidth(4)
    if p_t is not None:
      ax.text(0.03, 0.03, f"p={p_t:.2f}", transform=ax.transAxes, fontsize=8, color="white",
              bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))
    ax.set_title(title, fontsize=8)
  fig.suptitle(f"{orig} -> {target} (frame colour: blue = {orig}, orange = {target}, grey = other)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_probability(path: pathlib.Path, a: PairAnalysis, orig: int, target: int) -> None:
  """Probabilities of the original and target class along the path, boundary marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3))
  ax.plot(a.steps, a.probs[:, target], color="tab:orange", label=f"p(target={target})")
  ax.plot(a.steps, a.probs[:, orig], color="tab:blue", label=f"p(orig={orig})")
  if a.boundary > 0:
    ax.axvline(a.steps[a.boundary], color="k", ls="--", lw=1, label="decision boundary")
  ax.set_xlabel("step")
  ax.set_ylabel("probability")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_metrics(path: pathlib.Path, a: PairAnalysis, label_names: tuple[str, ...] = ()) -> None:
  """Image distances and (if available) part metrics along the path, boundary marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [(k, v) for k, v in a.distances.items()]
  if a.part_metrics is not None:
    panels += [(m, a.part_metrics[:, :, j]) for j, m in enumerate(quantify.METRIC_NAMES)]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
  for ax, (name, v) in zip(axes[0], panels):
    if v.ndim == 1:
      ax.plot(a.steps, v, color="k")
      ax.set_title(f"{name} to original", fontsize=9)
    else:
      for l in range(v.shape[1]):
        lab = label_names[l + 1] if len(label_names) == v.shape[1] + 1 else f"part {l + 1}"
        ax.plot(a.steps, v[:, l], lw=1, label=lab)
      ax.set_title(f"{name} ({'ratio' if name == 'area' else 'difference'} to original)", fontsize=9)
    if a.boundary > 0:
      ax.axvline(a.steps[a.boundary], color="k", ls="--", lw=1)
    ax.set_xlabel("step")
  if a.part_metrics is not None:
    axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_grad_cam(path: pathlib.Path, views: np.ndarray, cams: np.ndarray, titles: list[str]) -> None:
  """Grad-CAM panels: each classifier view with its class activation map overlaid."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(titles)
  fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6))
  for ax, v, c, t in zip(np.atleast_1d(axes), views, cams, titles):
    ax.imshow(v)
    ax.imshow(c, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax.set_title(t, fontsize=8)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_pair_csv(path: pathlib.Path, a: PairAnalysis, orig: int, target: int,
                   label_names: tuple[str, ...] = ()) -> None:
  """One row per analysed step: prediction, probabilities, distances, relative part metrics."""
  header = ["step", "pred", "prob_orig", "prob_target", "is_boundary"] + list(a.distances)
  if a.part_metrics is not None:
    n_parts = a.part_metrics.shape[1]
    names = (list(label_names[1:]) if len(label_names) == n_parts + 1
             else [f"part{l + 1}" for l in range(n_parts)])
    header += [f"{p}_{m}" for p in names for m in quantify.METRIC_NAMES]
  with open(path, "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(header)
    for t, s in enumerate(a.steps):
      row = [int(s), int(a.pred[t]), f"{a.probs[t, orig]:.6g}", f"{a.probs[t, target]:.6g}",
             int(t == a.boundary)] + [f"{v[t]:.6g}" for v in a.distances.values()]
      if a.part_metrics is not None:
        row += [f"{x:.6g}" for x in a.part_metrics[t].reshape(-1)]
      wr.writerow(row)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
  """Inputs of `run_experiment` (mirrors experiments/counterfactual.py's flags)."""
  pairs: str
  link: str
  generator: str
  classifier: str
  out: str
  segmenter: str | None = None
  orig_class: int = 254
  target_class: int = 151
  n_samples: int = 8
  seed: int = 0
  n_frames: int = 8
  max_points: int = 200
  lpips: bool = True
  init_scale: float = 1.0  # shift0 ~ init_scale * U[0, 1); the reference uses 1.0
  search: SearchConfig = SearchConfig()


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
  """Loads models and pairs, runs the batched search, analyses every pair, writes figures and tables.

  Picks the first `n_samples` pairs of class `orig_class` and searches towards `target_class`. Writes to
  `cfg.out`: pair{i}_frames.png, pair{i}_probability.png, pair{i}_metrics.png, pair{i}_gradcam.png,
  pair{i}.csv and summary.json.

  Returns:
    The summary dict written to summary.json.
  """
  import time
  from linkjax import checkpoint, link, pairs as pairs_lib
  out = pathlib.Path(cfg.out)
  out.mkdir(parents=True, exist_ok=True)
  data = pairs_lib.load(cfg.pairs)
  rows = np.nonzero(np.asarray(data["class_idx"]) == cfg.orig_class)[0][:cfg.n_samples]
  if rows.size == 0:
    raise ValueError(f"no pairs of class {cfg.orig_class} in {cfg.pairs}")
  classifier = checkpoint.load(cfg.classifier, role="classifier")
  generator = checkpoint.load(cfg.generator, role="generator")
  link_params, _ = link.load(cfg.link)
  segmenter = checkpoint.load(cfg.segmenter, role="segmenter") if cfg.segmenter else None
  label_names = tuple(segmenter.config.label_names) if segmenter is not None else ()
  lpips_fn = None
  if cfg.lpips:
    try:
      from linkjax import perceptual
      if generator.config.img_resolution >= 32:  # LPIPS needs at least 32 px
        lpips_fn = perceptual.lpips
    except Exception as e:  # optional: the figures still carry the pixel MSE
      logging.warning("LPIPS unavailable (%s); skipping the perceptual distance", e)

  fns, params = model_fns(classifier, generator, link_params)
  sfns = fns.search_fns()
  r = jnp.asarray(data["r"][rows], jnp.float32)
  n = r.shape[0]
  orig = jnp.full((n,), cfg.orig_class, jnp.int32)
  target = jnp.full((n,), cfg.target_class, jnp.int32)
  shift0 = jnp.float32(cfg.init_scale) * initial_shift(jax.random.key(cfg.seed), n, r.shape[1])
  t0 = time.perf_counter()
  res = jax.device_get(search(sfns, params, r, orig, target, shift0, config=cfg.search))
  t_search = time.perf_counter() - t0
  logging.info("search: %d/%d solved in %.1fs, steps %s", int(res.success.sum()), n, t_search,
               res.steps.tolist())
  _, path = trajectory(sfns, params, r, orig, target, shift0, jnp.asarray(res.steps),
                       config=cfg.search, num_steps=int(res.steps.max()), every=1)
  path = np.asarray(path)

  # Grad-CAM: original class on f(r)'s image, target (and original) class on the counterfactual.
  w_orig = fns.link_predict(params, r)
  w_cf = fns.link_predict(params, jax.nn.relu(jnp.asarray(res.r_final)))
  cam_o = jax.device_get(_grad_cam_images(fns, params, w_orig, orig))
  cam_t = jax.device_get(_grad_cam_images(fns, params, w_cf, target))
  cam_to = jax.device_get(_grad_cam_images(fns, params, w_cf, orig))

  pairs_out = []
  for i in range(n):
    a = analyse_pair(fns, params, np.asarray(r[i]), path[:int(res.steps[i]) + 1, i],
                     n_frames=cfg.n_frames, max_points=cfg.max_points, segmenter=segmenter,
                     lpips_fn=lpips_fn)
    o, t = cfg.orig_class, cfg.target_class
    plot_frames(out / f"pair{i}_frames.png", a, o, t)
    plot_probability(out / f"pair{i}_probability.png", a, o, t)
    plot_metrics(out / f"pair{i}_metrics.png", a, label_names)
    plot_grad_cam(out / f"pair{i}_gradcam.png",
                  np.stack([cam_o["view"][i], cam_t["view"][i], cam_to["view"][i]]),
                  np.stack([cam_o["cam"][i], cam_t["cam"][i], cam_to["cam"][i]]),
                  [f"original, class {o}", f"counterfactual, class {t}", f"counterfactual, class {o}"])
    write_pair_csv(out / f"pair{i}.csv", a, o, t, label_names)
    pairs_out.append({
        "pair_row": int(rows[i]), "success": bool(res.success[i]), "steps": int(res.steps[i]),
        "pred": int(res.pred[i]), "prob_orig": float(res.prob_orig[i]),
        "prob_target": float(res.prob_target[i]), "delta_norm": float(res.delta_norm[i]),
        "boundary_step": int(a.steps[a.boundary]) if a.boundary > 0 else None,
        "class_at_step0": int(a.pred[0]), "class_of_original": a.ref_pred})
  summary = {
      "orig_class": cfg.orig_class, "target_class": cfg.target_class, "n_pairs": n,
      "success_rate": float(res.success.mean()), "search_seconds": t_search,
      "num_renders": int(res.num_renders), "search_config": dataclasses.asdict(cfg.search),
      "seed": cfg.seed, "shift_convention": "r' = r - shift, shift0 ~ U[0,1) per pair (fold_in(key(seed), i))",
      "pairs": pairs_out}
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary


# --------------------------------------------------------------------------------------------------
# A tiny random world (classifier, generator, pairs, link) for end-to-end tests and the benchmark.


def _random_module(model_cls: type, config: Any, seed: int) -> Any:
  """A model (ResNet, segmenter) with numpy-drawn random weights and randomised BatchNorm statistics.

  Built from `nnx.eval_shape` and filled on the host: the modules' own initialisers compile one
  random-number kernel per parameter shape, which takes tens of seconds on a small CPU machine.
  """
  from flax import nnx
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


def build_tiny_world(out_dir: str | pathlib.Path, *, seed: int = 0, num_classes: int = 10,
                     n_pairs: int = 256, generator_dir: str | pathlib.Path | None = None,
                     batch: int = 64, segmenter_labels: int = 0) -> dict[str, Any]:
  """Writes tiny random models, a pair directory and an OLS link under `out_dir`.

  Classifier: bottleneck ResNet, one block per stage, width 4 (R = 128), `num_classes` outputs, input
  transform resize 72 / crop 64. Generator: `generator_dir` (e.g. the converted fixture) or a random
  `stylegan_xl.tiny_config()` model. Pairs: z ~ N(0, 1), classes 0..num_classes-1, psi 0.7; the pair's
  class is the classifier's prediction on the generated image (so every pair is "correct").

  Args:
    out_dir: directory receiving classifier/, generator/, link/ and pairs/pairs.npz.
    seed: seed of the random weights and latents.
    num_classes: classifier outputs.
    n_pairs: number of pairs.
    generator_dir: optional generator checkpoint to use instead of a random tiny one.
    batch: generation batch size.
    segmenter_labels: if > 0, also write a random segmenter/ (size S, that many labels, the
      reference's feature layers, masks at the generator's resolution).

  Returns:
    {'classifier', 'generator', 'link', 'pairs', 'segmenter' (or None): paths,
     'class_counts': {class: count}}.
  """
  from flax import nnx
  from linkjax import checkpoint, link, pairs as pairs_lib
  from linkjax.models import resnet, stylegan_xl
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  key = jax.random.key(seed)
  if generator_dir is not None:
    gen = checkpoint.load(generator_dir, role="generator")
  else:
    gen = stylegan_xl.StyleGANXL(stylegan_xl.tiny_config(), rngs=nnx.Rngs(seed))
  clf = _random_module(resnet.ResNet, resnet.ResNetConfig(
      depth=50, width=4, num_classes=num_classes, stage_sizes=(1, 1, 1, 1), block="bottleneck",
      resize=72, crop=64), seed + 1)
  g_def, g_state = nnx.split(gen)
  c_def, c_state = nnx.split(clf)

  @jax.jit
  def make(g_state, c_state, z, c):
    g = nnx.merge(g_def, g_state)
    ws = g.mapping(z, c, psi=0.7)
    fns = ModelFns(classifier=c_def, generator=g_def, num_ws=int(gen.config.num_ws),
                   resize=clf.config.resize, crop=clf.config.crop)
    logits, acts = fns.classify({"classifier": c_state}, fns.classifier_input(g.synthesis(ws)))
    return ws[:, 0], acts["r"], logits

  z_all = jax.random.normal(jax.random.fold_in(key, 0), (n_pairs, gen.config.z_dim), jnp.float32)
  c_all = jax.random.randint(jax.random.fold_in(key, 1), (n_pairs,), 0, num_classes, jnp.int32)
  ws, rs, logits = [], [], []
  for a in range(0, n_pairs, batch):
    w, r, lg = make(g_state, c_state, z_all[a:a + batch], c_all[a:a + batch])
    ws.append(np.asarray(w))
    rs.append(np.asarray(r))
    logits.append(np.asarray(lg))
  w, r, logits = np.concatenate(ws), np.concatenate(rs), np.concatenate(logits)
  cls = logits.argmax(-1).astype(np.int32)
  order = np.argsort(cls, kind="stable")
  (out / "pairs").mkdir(exist_ok=True)
  np.savez(out / "pairs" / pairs_lib.PAIRS_FILE, w=w[order], r=r[order], class_idx=cls[order],
           z=np.asarray(z_all)[order], logits=logits[order],
           draw_idx=np.arange(n_pairs, dtype=np.int32)[order])
  checkpoint.save(out / "classifier", clf)
  checkpoint.save(out / "generator", gen)
  link.save(out / "link", link.fit(r, w, model="ols"), {"model": "ols", "tiny_world": True})
  seg_path = None
  if segmenter_labels > 0:
    from linkjax.models import segmenter as seg_lib
    layers = seg_lib.reference_feature_layers(gen.layer_names)
    _, feats = jax.eval_shape(lambda s, w: nnx.merge(g_def, s).synthesis(
        stylegan_xl.broadcast_w(w, gen.config.num_ws), return_features=True),
        g_state, jax.ShapeDtypeStruct((1, gen.config.w_dim), jnp.float32))
    seg = _random_module(seg_lib.FewShotSegmenter, seg_lib.SegmenterConfig(
        in_channels=sum(feats[n].shape[1] for n in layers), n_labels=segmenter_labels,
        feature_layers=layers, resolution=gen.config.img_resolution), seed + 2)
    seg_path = str(out / "segmenter")
    checkpoint.save(seg_path, seg)
  counts = {int(c): int(n) for c, n in zip(*np.unique(cls, return_counts=True))}
  return {"classifier": str(out / "classifier"), "generator": str(out / "generator"),
          "link": str(out / "link"), "pairs": str(out / "pairs"), "segmenter": seg_path,
          "class_counts": counts}
