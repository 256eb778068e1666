"""Counterfactual search in the classifier's representation space R (paper Sec. 3.3, Fig. 7).

Given a representation r of an image of class `orig`, find a shift such that the image generated
from the linked latent `f(relu(r'))` is classified as `target`. Following the reference
implementation, the optimised variable is `shift`, initialised from U[0, 1) and applied as

    r' = r - shift,
    L(shift) = -o_target(r') + lambda_orig * o_orig(r') - lambda_cos * cos(f(r), f(r')),

where `o = head(r')` are the classifier logits computed from R (no ReLU inside the loss) and `f`
is the linking network. `Delta r = -shift`. After every gradient step the reference renders
`f(relu(r'))`, classifies the image through the exact input path, and stops when the argmax is
the target (at most `max_steps` steps).

Here the whole search is one jitted pure function over a batch of (sample, target) pairs. The
cheap gradient steps run for every pair in lock-step with a per-pair done mask (done pairs keep
their iterate and optimiser state); the expensive image check is organised in windows of
`check_every` steps, with the window's iterates kept in a buffer. Two check modes:

- 'window' (default): after the window's gradient steps, all its iterates are rendered and
  classified in one batched call and the first target hit is taken. Identical to the reference's
  every-step check by construction; it renders as many images as the every-step check.
- 'last': only the window's last iterate is checked; when it is the target, the window's
  iterates are re-checked one by one to locate the first flipping step. About `check_every`
  times fewer renders; identical to the every-step check unless the prediction touches the
  target and leaves it again inside one window (then a later step is found, or none).
- 'head': the window's iterates are screened with cheap quantities (the classifier's head on
  r', and w = f(relu(r'))) and only those whose image could be the target are rendered, one
  iterate per pair at a time in step order; the first rendered hit is the stop step. The screen
  is an estimated upper bound on the image's target margin (target logit minus the largest other
  logit) at iterate t, from the pair's last rendered iterate s:

      ub(t) = margin(img(s) + screen_head * (head(r'_t) - head(r'_s)))
              + screen_slack + screen_lipschitz * ||w_t - w_s||,

  i.e. the last image's logits moved by the head's logit change since s (the measured gap
  img(s) - head(r'_s) is kept as an offset and refreshed at every render), plus a slack that
  grows with how far the linked latent moved since the last verified image. Iterate t is
  rendered iff ub(t) >= 0; a pair's first iterate is always rendered (no anchor yet). The stop
  step equals the every-step check's whenever the screen passes the first step whose image is
  the target (an image classified as the target has margin >= 0, so a bound that holds there
  always passes it). A safety cap renders a pair's window-last iterate when it has had no render
  for `screen_force_every` windows; if that image is the target, the window's earlier iterates
  are rendered in order to locate the first flip in that window. See `SearchConfig` for the
  defaults and the data behind them.

Why the batch is not a plain `jax.vmap` of a per-pair while-loop: under `vmap`, `lax.cond`
becomes a `select` that executes both branches, so the localisation branch of 'last' would run
at every check. The loop is therefore written on the batch with scalar predicates, while the
per-pair loss and optimiser update are `jax.vmap`-ed over pairs.

Models enter through an object with three methods (all batched and pure, params explicit):

    head(params, r [B, R]) -> logits [B, K]                the classifier from R on
    link(params, r [B, R]) -> w [B, W]                     the linking network f
    render_classify(params, w [B, W]) -> logits [B, K]     w -> image -> classifier

`linkjax.bundle.ModelBundle` is one; `SearchFns` wraps three plain callables. The object is a
static (hashed) argument; `params` is traced, so the compiled search is reused for new weights.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from linkjax.counterfactual import checks

Array = jax.Array
Params = Any


class SearchFns(NamedTuple):
  """Three plain model callables as a search's models; each takes `(params, x)`."""
  head: Callable[[Params, Array], Array]
  link: Callable[[Params, Array], Array]
  render_classify: Callable[[Params, Array], Array]


CHECK_MODES = ("window", "last", "head")


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
    check_mode: 'window', 'last' or 'head' (see the module docstring).
    check_batch: pairs checked together; only pairs not yet done are rendered, in groups of this
      size (None: ceil(P / 4)). 'window' renders check_every * check_batch images per call.
    locate_batch: pairs rendered together while locating the flip step inside a window
      (None: ceil(P / check_every), at least 1).
    screen_head: 'head' mode: weight of the head's logit change since the pair's last rendered
      iterate in the margin bound (1: the image logits are assumed to move like the head's).
    screen_slack: 'head' mode: constant added to the bound, in logits.
    screen_lipschitz: 'head' mode: bound slack per unit of ||w_t - w_s|| (logits per unit of W),
      the link's latent distance from the pair's last rendered iterate.
    screen_force_every: 'head' mode safety cap: a pair with no render for this many windows gets
      its window-last iterate rendered (0: never). It costs at most
      ceil(max_steps / (check_every * screen_force_every)) images per pair and guards against a
      screen that never fires (e.g. screen_lipschitz = 0 with a head that lags the image): a
      flip that persists is then still found, exactly if it happened in the forced window.

  The 'head' defaults come from the built-in world (shipped generator and classifier; OLS links
  fitted on 300 and on 1500 generated pairs; the demo's init_scale 0.1, lr 0.5, 300 steps; 360
  searches, 6 samples x all 20 class pairs x 3 (link, samples, seed), every step rendered):
  - the head alone is not a sound screen there: at the step where the image first becomes the
    target the head's margin is negative in 33% / 48% (1500 pairs' link, two sample sets) and
    56% (300 pairs' link) of solved searches, down to -14 / -21 / -16 logits; the image runs
    ahead of the head in the first steps (w jumps by ~15 per step) and lags it later;
  - the latent-distance term bounds the image's margin: |change of the image margin| /
    ||change of w|| between steps has p99 ~5.5 and max ~24 (the largest at tiny moves);
  - replayed on those paths (same rule as here), screen_lipschitz 7 (with screen_head 1, or 0)
    changed no search's stop step, at 2.0-2.1x (2.1-2.3x) fewer images than the every-step
    check; 5 missed 0-1 and 3-4 missed 1-4 of each 120 searches (found later). The head term is
    kept (screen_head 1), the conservative choice: here it costs ~8% more renders, but where the
    image does follow the head (the toy world of the tests) it alone makes an exact screen
    (screen_lipschitz 0: ~10% of the images), while without it the distance slack must cover
    the margin's rise (screen_head 0, screen_lipschitz 2 missed a flip there).
  - the safety cap (4 windows) never fired there: the distance term renders more often.
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
  screen_head: float = 1.0
  screen_slack: float = 0.0
  screen_lipschitz: float = 7.0
  screen_force_every: int = 4

  def __post_init__(self):
    if self.optimizer not in ("sgd", "adam"):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
    if self.check_mode not in CHECK_MODES:
      raise ValueError(f"check_mode must be one of {CHECK_MODES}, got {self.check_mode!r}")
    if self.max_steps < 1 or self.check_every < 1:
      raise ValueError("max_steps and check_every must be >= 1")
    if self.screen_force_every < 0:
      raise ValueError(f"screen_force_every must be >= 0, got {self.screen_force_every}")
    if self.screen_lipschitz < 0:
      raise ValueError(f"screen_lipschitz must be >= 0, got {self.screen_lipschitz}")
    for name in ("lambda_orig", "lambda_cos", "learning_rate", "screen_head", "screen_slack",
                 "screen_lipschitz"):
      v = getattr(self, name)
      if not v == v or v in (float("inf"), float("-inf")):  # NaN or infinite
        raise ValueError(f"{name} must be finite, got {v}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


class SearchResult(NamedTuple):
  """Per-pair outcome of `search` (P pairs).

  Attributes:
    success: [P] bool, the generated image was classified as the target within max_steps.
    steps: [P] int32, gradient steps taken (the first step whose image is the target; max_steps
      if not successful).
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
  return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (dim,),
                                               jnp.float32))(idx)


def _cosine(a: Array, b: Array) -> Array:
  # torch.nn.functional.cosine_similarity semantics: a.b / max(|a| |b|, eps).
  return jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), jnp.float32(1e-8))


def pair_loss(models: Any, params: Params, config: SearchConfig, shift: Array, r: Array,
              f_r: Array, orig: Array, target: Array) -> Array:
  """The search loss for one pair.

  Args:
    models, params, config: models and hyper-parameters.
    shift: [R] current shift; r' = r - shift.
    r: [R] original representation.
    f_r: [W] f(r), precomputed.
    orig, target: [] int32 class indices.
  Returns:
    [] float32 loss.
  """
  rp = r - shift
  logits = models.head(params, rp[None])[0]
  w = models.link(params, rp[None])[0]
  return (-logits[target] + jnp.float32(config.lambda_orig) * logits[orig]
          - jnp.float32(config.lambda_cos) * _cosine(f_r, w))


def _where_pairs(mask: Array, new: Any, old: Any) -> Any:
  """Per-pair select on pytrees whose leaves have a leading pair axis."""
  def sel(n, o):
    m = mask.reshape(mask.shape + (1,) * (n.ndim - 1))
    return jnp.where(m, n, o)
  return jax.tree.map(sel, new, old)


def _make_step(models: Any, params: Params, config: SearchConfig, r: Array, f_r: Array,
               orig: Array, target: Array):
  """One masked optimiser step: (shift, opt_state, active [P]) -> (shift, opt_state)."""
  opt = make_optimizer(config)
  grad_fn = jax.vmap(jax.grad(functools.partial(pair_loss, models, params, config)))

  def step(shift, opt_state, active):
    g = grad_fn(shift, r, f_r, orig, target)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes python floats and int counts
      updates, new_state = jax.vmap(opt.update)(g, opt_state, shift)
    new_shift = jax.vmap(optax.apply_updates)(shift, updates)
    # Done pairs (and steps beyond max_steps) keep their iterate and optimiser state unchanged.
    return _where_pairs(active, new_shift, shift), _where_pairs(active, new_state, opt_state)

  return opt, step


@functools.partial(jax.jit, static_argnames=("models", "config"))
def search(models: Any, params: Params, r: Array, orig: Array, target: Array, shift0: Array, *,
           config: SearchConfig) -> SearchResult:
  """Counterfactual search for a batch of (sample, target) pairs; one compiled pure function.

  Args:
    models: head / link / render_classify (static; see the module docstring).
    params: pytree of model parameters used by them.
    r: [P, R] float32 original representations.
    orig: [P] int32 original classes (the penalised logit).
    target: [P] int32 target classes.
    shift0: [P, R] float32 initial shifts (reference: U[0, 1), see `initial_shift`).
    config: hyper-parameters (static).
  Returns:
    A `SearchResult`; with check_mode 'window', `steps` and `r_final` do not depend on
    `config.check_every` (for 'last', see the transient caveat in the module docstring; 'head'
    gives the same as 'window' whenever its screen passes every pair's first flip step, and
    depends on check_every only through the safety cap's period).
  """
  r = r.astype(jnp.float32)
  orig = orig.astype(jnp.int32)
  target = target.astype(jnp.int32)
  num_pairs = r.shape[0]
  c = min(config.check_every, config.max_steps)
  locate = config.locate_batch or max(1, min(num_pairs, -(-num_pairs // c)))
  group = min(config.check_batch or max(1, -(-num_pairs // 4)), num_pairs)
  max_steps = config.max_steps
  f_r = models.link(params, r)
  opt, step = _make_step(models, params, config, r, f_r, orig, target)

  def window(carry):
    shift, opt_state, k, done, stop_step, renders, images, anchor = carry

    def inner(state, j):
      s, o = state
      active = jnp.logical_and(~done, k + j < max_steps)
      s, o = step(s, o, active)
      return (s, o), s

    (shift, opt_state), buf = jax.lax.scan(inner, (shift, opt_state),
                                           jnp.arange(c, dtype=jnp.int32))
    n_valid = jnp.minimum(c, max_steps - k)  # real steps in this window
    if config.check_mode == "window":
      first, n_calls, n_img = checks.check_window(models, params, r, target, buf, done, n_valid, group)
    elif config.check_mode == "last":
      first, n_calls, n_img = checks.check_last(models, params, r, target, buf, done, n_valid, group,
                                          locate)
    else:
      first, n_calls, n_img, anchor = checks.check_head(models, params, config, r, target, buf, done,
                                                  n_valid, group, anchor)
    found = jnp.logical_and(~done, first >= 0)
    first = jnp.where(found, first, n_valid - 1)
    located = jnp.take_along_axis(buf, first[None, :, None], axis=0)[0]
    shift = jnp.where(found[:, None], located, shift)
    stop_step = jnp.where(found, k + first + 1, stop_step)
    return (shift, opt_state, k + n_valid, jnp.logical_or(done, found), stop_step,
            renders + n_calls, images + n_img, anchor)

  def cont(carry):
    k, done = carry[2], carry[3]
    return jnp.logical_and(k < max_steps, ~jnp.all(done))

  shift0 = shift0.astype(jnp.float32)
  if config.check_mode == "head":  # the screen's state; the first iterate is always rendered
    num_classes = jax.eval_shape(lambda x: models.head(params, x), r[:1]).shape[-1]
    anchor0 = checks.Anchor(img=jnp.zeros((num_pairs, num_classes), jnp.float32),
                      head=jnp.zeros((num_pairs, num_classes), jnp.float32),
                      w=jnp.zeros(f_r.shape, jnp.float32), valid=jnp.zeros((num_pairs,), bool),
                      since=jnp.zeros((num_pairs,), jnp.int32))
  else:
    anchor0 = None
  init = (shift0, jax.vmap(opt.init)(shift0), jnp.int32(0), jnp.zeros((num_pairs,), bool),
          jnp.full((num_pairs,), max_steps, jnp.int32), jnp.int32(0), jnp.int32(0), anchor0)
  shift, _, _, done, stop_step, renders, images, _ = jax.lax.while_loop(cont, window, init)

  r_final = r - shift
  logits = models.render_classify(params, models.link(params, jax.nn.relu(r_final)))
  probs = jax.nn.softmax(logits, axis=-1)
  take = lambda idx: jnp.take_along_axis(probs, idx[:, None], axis=1)[:, 0]  # noqa: E731
  return SearchResult(
      success=done, steps=stop_step, r_final=r_final, shift=shift,
      pred=jnp.argmax(logits, axis=-1).astype(jnp.int32), prob_orig=take(orig),
      prob_target=take(target), delta_norm=jnp.linalg.norm(shift, axis=-1),
      num_renders=renders + 1, num_images=images + num_pairs)


@functools.partial(jax.jit, static_argnames=("models", "config", "num_steps", "every"))
def trajectory(models: Any, params: Params, r: Array, orig: Array, target: Array, shift0: Array,
               stop_steps: Array, *, config: SearchConfig, num_steps: int, every: int = 1
               ) -> tuple[Array, Array]:
  """Re-runs the deterministic search path and records r' along it.

  Pair p is updated for its first `stop_steps[p]` steps and then frozen (as in `search`), so its
  last recorded iterate equals `search(...).r_final[p]` when `stop_steps = search(...).steps`.

  Args:
    models, params, r, orig, target, shift0, config: as for `search`.
    stop_steps: [P] int32 number of steps per pair (e.g. `SearchResult.steps`).
    num_steps: number of steps to run (static; e.g. max(stop_steps)).
    every: record every `every` steps (static).
  Returns:
    (step_index [T] int32, r_path [T, P, R]) with T = ceil(num_steps / every) + 1;
    step_index[0] = 0 (r' = r - shift0) and the last entry is step num_steps.
  """
  r = r.astype(jnp.float32)
  orig = orig.astype(jnp.int32)
  target = target.astype(jnp.int32)
  stop_steps = stop_steps.astype(jnp.int32)
  f_r = models.link(params, r)
  opt, step = _make_step(models, params, config, r, f_r, orig, target)
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


def reference_search(models: Any, params: Params, r: Array, orig: Array, target: Array,
                     shift0: Array, *, config: SearchConfig) -> SearchResult:
  """The reference's procedure: one pair at a time, jitted steps, an image check after each.

  Like the original code, every gradient step is followed by rendering and classifying the image
  and reading the prediction back to the host. Slow by design; `search` must agree with it.

  Args:
    as for `search` (config.check_every is ignored: the check runs after every step).
  Returns:
    A `SearchResult` (num_renders = total number of render calls, all pairs).
  """
  opt = make_optimizer(config)
  step, check, link = _reference_fns(models, config)
  out: dict[str, list[Any]] = {k: [] for k in SearchResult._fields
                               if k not in ("num_renders", "num_images")}
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


@functools.lru_cache(maxsize=8)
def _reference_fns(models: Any, config: SearchConfig):
  """The reference procedure's jitted step, image check and link (cached per models/config)."""
  opt = make_optimizer(config)

  @jax.jit
  def step(params, shift, opt_state, r, f_r, orig, target):
    g = jax.grad(lambda s: pair_loss(models, params, config, s, r, f_r, orig, target))(shift)
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = opt.update(g, opt_state, shift)
    return optax.apply_updates(shift, updates), opt_state

  @jax.jit
  def check(params, r, shift):
    logits = models.render_classify(params, models.link(params, jax.nn.relu(r - shift)[None]))[0]
    return jnp.argmax(logits), jax.nn.softmax(logits)

  return step, check, jax.jit(models.link)
