"""The image checks of the counterfactual search: which iterates to render, and the first hit.

Each check takes one window of gradient steps (its iterates in `buf`) and returns, per pair, the
window index of the first iterate whose image is classified as the target (-1: none), with the
render calls and images it cost. 'window' renders every iterate; 'last' renders the window's
last iterate and locates the flip inside the window on a hit; 'head' renders only the iterates a
margin bound passes (see `descent.SearchConfig`). Renders are of the not-done pairs only,
compacted into groups (`over_pending`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any


def predict(models: Any, params: Params, r: Array, shift: Array) -> Array:
  """Class predicted on the image generated from f(relu(r - shift)): [P, R] -> [P] int32."""
  logits = models.render_classify(params, models.link(params, jax.nn.relu(r - shift)))
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def compacted_map(fn: Callable[[Array, Array, int], Array], pending: Array, group: int,
                  out: Array, width: int = 1) -> tuple[Array, Array, Array]:
  """Runs `fn` on the pending rows only, compacted into groups of `group`.

  Args:
    fn: (idx [n], valid [n], n) -> [n, ...] values for n rows (idx clamped into range; rows
      with valid False are padding, their values are dropped).
    pending: [P] bool rows to run.
    group: rows per full group; the tail runs one row at a time (no padded renders).
    out: [P, ...] initial values, kept where not pending.
    width: images rendered per row and call (for the count).
  Returns:
    (out with the pending rows filled, calls, images rendered).
  """
  num_rows = pending.shape[0]

  def run(size):
    def body(s):
      res, todo, n, n_img = s
      idx = jnp.nonzero(todo, size=size, fill_value=num_rows)[0]  # num_rows marks padding
      vals = fn(jnp.minimum(idx, num_rows - 1), idx < num_rows, size)
      return (res.at[idx].set(vals.astype(res.dtype), mode="drop"),
              todo.at[idx].set(False, mode="drop"), n + 1, n_img + width * size)
    return body

  def body(s):
    if group == 1:
      return run(1)(s)
    return jax.lax.cond(jnp.sum(s[1]) >= group, run(group), run(1), s)

  res, _, n, n_img = jax.lax.while_loop(lambda s: jnp.any(s[1]), body,
                                        (out, pending, jnp.int32(0), jnp.int32(0)))
  return res, n, n_img


def over_pending(render_group: Callable[[Array, Array, int], Array], pending: Array,
                 group: int, width: int) -> tuple[Array, Array, Array]:
  """`compacted_map` of a hit search: render_group (gidx [n], valid [n], n) -> first [n] int32
  (-1: no hit); returns (first [P] int32, -1 where not pending, render calls, images)."""
  return compacted_map(render_group, pending, group,
                       jnp.full((pending.shape[0],), -1, jnp.int32), width)


def check_window(models, params, r, target, buf, done, n_valid, group):
  """'window' mode: every iterate of the window rendered, first target hit per pair.

  Returns (first [P] window index of the first hit, -1 for none; render calls; images)."""
  c = buf.shape[0]

  def window_group(gidx, valid, size):
    preds = predict(models, params, jnp.tile(r[gidx], (c, 1)),
                     buf[:, gidx].reshape(c * size, -1))
    hit = jnp.logical_and(preds.reshape(c, size) == target[gidx][None],
                          jnp.arange(c, dtype=jnp.int32)[:, None] < n_valid)
    hit = jnp.logical_and(hit, valid[None])
    return jnp.where(jnp.any(hit, axis=0), jnp.argmax(hit, axis=0).astype(jnp.int32), -1)

  return over_pending(window_group, ~done, group, c)


def check_last(models, params, r, target, buf, done, n_valid, group, locate):
  """'last' mode: the window's last iterate rendered; for hits, the first flipping iterate is
  located by rendering the window's iterates one by one (hits compacted into groups of
  `locate`). Returns (first [P], render calls, images) like `check_window`."""
  num_pairs, c = r.shape[0], buf.shape[0]
  shift = buf[n_valid - 1]

  def last_group(gidx, valid, size):
    hit = jnp.logical_and(valid, predict(models, params, r[gidx], shift[gidx]) == target[gidx])
    return jnp.where(hit, jnp.int32(0), jnp.int32(-1))

  hit_last, n_chk, img_chk = over_pending(last_group, ~done, group, 1)
  found = jnp.logical_and(~done, hit_last >= 0)
  if c == 1:  # the window's only iterate was just checked
    return jnp.where(found, 0, -1), n_chk, img_chk

  def locate_all(_):
    def group_cond(s):
      return jnp.any(jnp.logical_and(found, s[0] < 0))

    def group_body(s):
      first, n, n_img = s
      pending = jnp.logical_and(found, first < 0)
      idx = jnp.nonzero(pending, size=locate, fill_value=num_pairs)[0]
      valid = idx < num_pairs
      gidx = jnp.minimum(idx, num_pairs - 1)
      r_g, t_g = r[gidx], target[gidx]

      def cond(t):
        j, fj, _ = t
        return jnp.logical_and(j < n_valid, jnp.any(jnp.logical_and(valid, fj < 0)))

      def body(t):
        j, fj, n = t
        hit = jnp.logical_and(jnp.logical_and(valid, fj < 0),
                              predict(models, params, r_g, buf[j][gidx]) == t_g)
        return j + 1, jnp.where(hit, j, fj), n + 1

      _, fj, n_g = jax.lax.while_loop(cond, body, (jnp.int32(0),
                                                    jnp.full((locate,), -1, jnp.int32),
                                                    jnp.int32(0)))
      # A member not re-found (only possible if two renders of one iterate disagreed) takes the
      # window's last iterate, so that the group loop always makes progress.
      fj = jnp.where(fj < 0, n_valid - 1, fj)
      return first.at[idx].set(fj, mode="drop"), n + n_g, n_img + n_g * locate

    init = (jnp.full((num_pairs,), -1, jnp.int32), jnp.int32(0), jnp.int32(0))
    return jax.lax.while_loop(group_cond, group_body, init)

  def skip(_):
    return jnp.full((num_pairs,), -1, jnp.int32), jnp.int32(0), jnp.int32(0)

  first, n_loc, img_loc = jax.lax.cond(jnp.any(found), locate_all, skip, None)
  first = jnp.where(jnp.logical_and(found, first >= 0), first, n_valid - 1)
  return jnp.where(found, first, -1), n_chk + n_loc, img_chk + img_loc


def target_margin(logits: Array, target: Array) -> Array:
  """Target logit minus the largest other logit: [..., K], [...] -> [...] (>= 0 at a hit)."""
  k = logits.shape[-1]
  is_t = jnp.arange(k, dtype=jnp.int32) == target[..., None]
  t = jnp.sum(jnp.where(is_t, logits, 0.0), axis=-1)
  return t - jnp.max(jnp.where(is_t, -jnp.inf, logits), axis=-1)


def render_rows(models: Any, params: Params, w: Array, pending: Array, group: int
                ) -> tuple[Array, Array, Array]:
  """render_classify of the pending rows of w only (`compacted_map`).

  Args:
    w: [P, W] latents; pending: [P] bool rows to render.
    group: rows per full group; the tail is rendered one row at a time (no padded renders).
  Returns:
    (logits [P, K] (zeros where not pending), render calls, images rendered).
  """
  k = jax.eval_shape(lambda x: models.render_classify(params, x), w[:1]).shape[-1]
  return compacted_map(lambda idx, valid, size: models.render_classify(params, w[idx]),
                       pending, group, jnp.zeros((w.shape[0], k), jnp.float32))


class Anchor(NamedTuple):
  """'head' mode: each pair's last rendered iterate (the screen's reference point)."""
  img: Array     # [P, K] image logits there
  head: Array    # [P, K] head logits there
  w: Array       # [P, W] linked latent there
  valid: Array   # [P] bool, some iterate was rendered
  since: Array   # [P] int32, windows in a row without a render


def check_head(models, params, config, r, target, buf, done, n_valid, group, anchor):
  """'head' mode: screened, sequential-in-step-order renders (see the module docstring).

  Each round renders, for every pair still searching this window, its next iterate that the
  screen passes (at most one per pair, compacted across pairs), then moves the pair's anchor
  there; rounds repeat until no pair has a screened iterate left in the window.

  Returns (first [P] window index of the first hit, -1 for none; render calls; images; anchor).
  """
  c, num_pairs = buf.shape[0], buf.shape[1]
  rp = (r[None] - buf).reshape(c * num_pairs, -1)
  head = models.head(params, rp).reshape(c, num_pairs, -1).astype(jnp.float32)
  w = models.link(params, jax.nn.relu(rp)).reshape(c, num_pairs, -1).astype(jnp.float32)
  jj = jnp.arange(c, dtype=jnp.int32)[:, None]
  pidx = jnp.arange(num_pairs)
  beta, slack, lip = (jnp.float32(config.screen_head), jnp.float32(config.screen_slack),
                      jnp.float32(config.screen_lipschitz))
  k_force = config.screen_force_every
  force = (jnp.zeros((num_pairs,), bool) if k_force == 0
           else anchor.since >= jnp.int32(k_force - 1))

  def screen(a: Anchor) -> Array:
    pred = a.img[None] + beta * (head - a.head[None])
    dist = jnp.linalg.norm(w - a.w[None], axis=-1)
    ub = target_margin(pred, target[None]) + slack + lip * dist
    return jnp.logical_or(ub >= 0, ~a.valid[None])  # [c, P]

  def candidates(s):
    a, pos, hit, sweep_end, rendered = s[:5]
    searching = jnp.logical_and(~done, hit < 0)
    forced = jnp.logical_and(jj == n_valid - 1, jnp.logical_and(force, ~rendered)[None])
    swept = jnp.logical_and(sweep_end[None] >= 0, jj < sweep_end[None])
    screened = screen(a)
    ok = jnp.logical_or(jnp.logical_or(screened, forced), swept)
    in_range = jnp.logical_and(jj >= pos[None], jj < n_valid)
    return jnp.logical_and(ok, jnp.logical_and(in_range, searching[None])), swept, screened

  def cond(s):
    return jnp.any(candidates(s)[0])

  def body(s):
    a, pos, hit, sweep_end, rendered, n, n_img = s
    cand, swept, screened = candidates(s)
    has = jnp.any(cand, axis=0)
    nxt = jnp.argmax(cand, axis=0).astype(jnp.int32)
    logits, dn, dimg = render_rows(models, params, w[nxt, pidx], has, group)
    is_hit = jnp.logical_and(has, jnp.argmax(logits, axis=-1).astype(jnp.int32) == target)
    # A hit at an iterate the screen did not pass (the safety cap's forced render) means the
    # screen missed this window: render its earlier iterates in order to locate the first flip.
    unscreened = ~screened[nxt, pidx]
    start_sweep = jnp.logical_and(is_hit, jnp.logical_and(unscreened, ~swept[nxt, pidx]))
    hit = jnp.where(jnp.logical_and(is_hit, ~start_sweep), nxt, hit)
    sweep_end = jnp.where(start_sweep, nxt, sweep_end)
    pos = jnp.where(start_sweep, 0, jnp.where(has, nxt + 1, pos))
    # A sweep that reached its forced iterate without an earlier hit stops there.
    hit = jnp.where(jnp.logical_and(jnp.logical_and(hit < 0, sweep_end >= 0), pos >= sweep_end),
                    sweep_end, hit)
    a = Anchor(img=jnp.where(has[:, None], logits, a.img),
                head=jnp.where(has[:, None], head[nxt, pidx], a.head),
                w=jnp.where(has[:, None], w[nxt, pidx], a.w),
                valid=jnp.logical_or(a.valid, has), since=a.since)
    return a, pos, hit, sweep_end, jnp.logical_or(rendered, has), n + dn, n_img + dimg

  zeros = jnp.zeros((num_pairs,), jnp.int32)
  init = (anchor, zeros, zeros - 1, zeros - 1, jnp.zeros((num_pairs,), bool), jnp.int32(0),
          jnp.int32(0))
  a, _, hit, sweep_end, rendered, n, n_img = jax.lax.while_loop(cond, body, init)
  # A sweep that found no earlier hit stops at the forced iterate, which was the target.
  hit = jnp.where(jnp.logical_and(hit < 0, sweep_end >= 0), sweep_end, hit)
  since = jnp.where(rendered, 0, anchor.since + 1)
  return hit, n, n_img, a._replace(since=since)
