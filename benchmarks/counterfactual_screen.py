"""Data behind check_mode='head': how well cheap quantities predict the image's class along paths.

  python -m benchmarks.counterfactual_screen --work=/tmp/cf_speed_builtin --n_samples=6 --seed=0

Shares the flags of benchmarks/counterfactual_speed.py (world, search settings, --n_samples per
ordered class pair, --out); --class_pairs is ignored (all ordered class pairs are used).

On the built-in world (pairs and link built as in benchmarks/counterfactual_speed.py), runs the
search's deterministic path for --max_steps steps for the first --n_samples pairs of every ordered
class pair, renders and classifies the image of EVERY iterate, and reports

- the failure mode of a head-only screen: at the first step whose image is the target (the
  reference's stop step), how often the head on r' does not predict the target, and by how much
  (the head's target margin there);
- a replay of the 'head' screen (`descent._check_head`'s rule, per pair in step order, with the
  safety cap) on the recorded logits for a grid of screen_head x screen_lipschitz: searches whose
  stop step differs from the every-step check (misses), and images rendered vs that check.

Rendering every step is the expensive part (about 36k images for 120 searches of 300 steps).
"""

import itertools
import json
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import counterfactual_speed as speed
from linkjax import bundle, pairs
from linkjax import counterfactual as cf

_OFFSET = flags.DEFINE_integer("offset", 0, "Index of the first sample of each class.")
_BATCH = flags.DEFINE_integer("batch", 200, "Images per render call.")
_HEADS = flags.DEFINE_list("screen_heads", ["0", "1"], "screen_head values replayed.")
_LIPS = flags.DEFINE_list("screen_lipschitzes", ["0", "3", "5", "7", "10"],
                          "screen_lipschitz values replayed.")


def _margin(logits: np.ndarray, target: int) -> np.ndarray:
  other = logits.copy()
  other[..., target] = -np.inf
  return logits[..., target] - other.max(-1)


def replay(img, head, w, target, first, *, screen_head, screen_lipschitz, screen_slack=0.0,
           force_every=4, check_every=10):
  """The 'head' screen on one recorded path; returns (stop step or -1, images rendered).

  img, head: [T + 1, K] logits of the image and of the head at every iterate (0 = the start);
  w: [T + 1, W] linked latents; first: the every-step check's stop step (-1: none).
  """
  num_steps = img.shape[0] - 1
  anchor, since, images = None, 0, 0
  for k0 in range(1, num_steps + 1, check_every):
    k1 = min(k0 + check_every, num_steps + 1)
    rendered, forced = False, force_every > 0 and since >= force_every - 1
    for t in range(k0, k1):
      if anchor is None:
        go = True
      else:
        pred = img[anchor] + screen_head * (head[t] - head[anchor])
        go = (_margin(pred, target) + screen_slack
              + screen_lipschitz * np.linalg.norm(w[t] - w[anchor])) >= 0
      if go or (forced and t == k1 - 1 and not rendered):
        images += 1
        anchor, rendered = t, True
        if img[t].argmax() == target:
          if not go:  # forced hit: the window's earlier iterates in order
            for u in range(k0, t):
              images += 1
              if img[u].argmax() == target:
                return u, images
          return t, images
    since = 0 if rendered else since + 1
  return -1, images


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for m in (speed.__name__, __name__)
                             for f in flags.FLAGS.get_flags_for_module(m)})
  # The speed benchmark's flags and world builder (same module family).
  # pylint: disable=protected-access
  world = speed._builtin_world(pathlib.Path(speed._WORK.value))
  n_samples, steps, check_every = speed._N_SAMPLES.value, speed._MAX_STEPS.value, \
      speed._CHECK_EVERY.value
  init_scale, seed, lr, out = (speed._INIT_SCALE.value, speed._SEED.value, speed._LR.value,
                               speed._OUT.value)
  # pylint: enable=protected-access
  data = pairs.load(world["pairs"])
  models, params = bundle.ModelBundle.load(classifier=world["classifier"],
                                           generator=world["generator"], link=world["link"])
  n_classes = int(data["logits"].shape[1])
  rows, orig, target = [], [], []
  for o, t in itertools.permutations(range(n_classes), 2):
    sel = np.nonzero(data["class_idx"] == o)[0][_OFFSET.value:_OFFSET.value + n_samples]
    rows += sel.tolist()
    orig += [o] * len(sel)
    target += [t] * len(sel)
  n = len(rows)
  r = jnp.asarray(data["r"][np.asarray(rows)], jnp.float32)
  shift0 = jnp.float32(init_scale) * cf.initial_shift(jax.random.key(seed), n, r.shape[1])
  cfg = cf.SearchConfig(max_steps=steps, learning_rate=lr)
  _, path = cf.trajectory(models, params, r, jnp.asarray(orig, jnp.int32),
                          jnp.asarray(target, jnp.int32), shift0,
                          jnp.full((n,), steps, jnp.int32), config=cfg, num_steps=steps)
  flat = jnp.reshape(path, (-1, path.shape[-1]))
  head = np.asarray(jax.jit(models.head)(params, flat)).reshape(steps + 1, n, -1)
  w = np.asarray(jax.jit(lambda p, x: models.link(p, jax.nn.relu(x)))(params, flat))
  w = w.reshape(steps + 1, n, -1)
  render = jax.jit(models.render_classify)
  img = np.zeros(head.reshape(-1, head.shape[-1]).shape, np.float32)
  wf = w.reshape(-1, w.shape[-1])
  t0 = time.perf_counter()
  for i in range(0, len(wf), _BATCH.value):
    img[i:i + _BATCH.value] = np.asarray(render(params, jnp.asarray(wf[i:i + _BATCH.value])))
  img = img.reshape(head.shape)
  logging.info("rendered %d images in %.0fs", len(wf), time.perf_counter() - t0)

  hit = img.argmax(-1) == np.asarray(target)[None]
  hit[0] = False
  first = np.where(hit.any(0), hit.argmax(0), -1)
  ok = first > 0
  idx = np.nonzero(ok)[0]
  m_head = np.array([_margin(head[first[p], p], target[p]) for p in idx])
  ref_images = int(np.where(ok, first, steps).sum())
  result = {"searches": n, "solved": int(ok.sum()), "max_steps": steps,
            "stop_steps": first.tolist(),
            "head_margin_at_flip": {
                "negative_fraction": float(np.mean(m_head < 0)), "min": float(m_head.min()),
                "p5": float(np.percentile(m_head, 5)), "median": float(np.median(m_head))},
            "every_step_images": ref_images, "replay": []}
  lines = [f"{n} searches, {int(ok.sum())} solved; head margin at the image's first target step: "
           f"negative in {np.mean(m_head < 0):.0%}, min {m_head.min():.1f}, p5 "
           f"{np.percentile(m_head, 5):.1f}"]
  for bh, lip in itertools.product([float(x) for x in _HEADS.value],
                                   [float(x) for x in _LIPS.value]):
    found, images = zip(*[replay(img[:, p], head[:, p], w[:, p], target[p], first[p],
                                 screen_head=bh, screen_lipschitz=lip,
                                 check_every=check_every)
                          for p in range(n)])
    misses = int(np.sum(np.asarray(found) != first))
    total = int(np.sum(images)) + n  # + the final image of every search, as the search counts
    result["replay"].append({"screen_head": bh, "screen_lipschitz": lip, "misses": misses,
                             "images": total, "every_step_images": ref_images + n})
    lines.append(f"screen_head {bh:g}, screen_lipschitz {lip:g}: {misses}/{n} stop steps differ, "
                 f"{total} images vs {ref_images + n} ({(ref_images + n) / total:.2f}x fewer)")
  # Cross-check of the replay: the compiled search with the default screen on the same inputs.
  default = cf.SearchConfig(max_steps=steps, learning_rate=cfg.learning_rate,
                            check_every=check_every,
                            check_mode="head")
  res = cf.search(models, params, r, jnp.asarray(orig, jnp.int32), jnp.asarray(target, jnp.int32),
                  shift0, config=default)
  found, images = zip(*[replay(img[:, p], head[:, p], w[:, p], target[p], first[p],
                               screen_head=default.screen_head,
                               screen_lipschitz=default.screen_lipschitz,
                               screen_slack=default.screen_slack,
                               force_every=default.screen_force_every,
                               check_every=default.check_every) for p in range(n)])
  same = bool(np.array_equal(np.where(np.asarray(res.success), np.asarray(res.steps), -1), found))
  result["search_default"] = {"images": int(res.num_images), "replay_images": int(sum(images)) + n,
                              "replay_steps_equal": same,
                              "steps_equal_every_step": bool(np.array_equal(
                                  np.where(np.asarray(res.success), np.asarray(res.steps), -1),
                                  first))}
  lines.append(f"search (default screen): {int(res.num_images)} images, replay "
               f"{int(sum(images)) + n}; stop steps = replay: {same}, = every-step check: "
               f"{result['search_default']['steps_equal_every_step']}")
  print("\n".join(lines))
  if out:
    pathlib.Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
