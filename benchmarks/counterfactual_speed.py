"""Time per solved (sample, target) pair: batched counterfactual search vs the reference's procedure.

  python -m benchmarks.counterfactual_speed --world=/tmp/cf_world --n_samples=16 --max_steps=200 \
      --check_every=10

Both run on the same tiny models (a tiny ResNet, the converted StyleGAN-XL fixture generator, or a
random tiny generator if the fixture is absent, and an OLS link fitted on 256 generated pairs), the
same (sample, target) pairs, the same initial shifts and hyper-parameters:

- batched: `linkjax.counterfactual.descent`, all pairs in one compiled while-loop, in both check modes
  ('window': all iterates of each --check_every window rendered in one batch, exact; 'last': only the
  window's last iterate, flip located inside the window);
- reference: `linkjax.counterfactual.reference_search`, one pair at a time, a Python loop of a jitted
  gradient step followed by a jitted render + classify check and a host read-back after every step.

All are warmed up (compiled) on the same shapes before timing. Reports wall time, success rate,
whether the stop steps agree with the reference, and the time-per-solved-pair ratio.
"""

import dataclasses
import json
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from linkjax import bundle, checkpoint, pairs, testing
from linkjax import counterfactual as cf
from ports import stylegan_xl as port

_WORLD = flags.DEFINE_string("world", "/tmp/cf_speed_world", "Directory of the tiny world (built if "
                             "missing: models, pairs, link).")
_FIXTURE = flags.DEFINE_string("fixture", str(pathlib.Path(__file__).resolve().parents[2] / "shared"
                                              / "fixtures" / "sgxl_tiny.pkl"),
                               "StyleGAN-XL fixture pickle to convert for the generator (a random "
                               "tiny generator is used if the file is absent).")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 16, "Samples of the most frequent class.")
_N_TARGETS = flags.DEFINE_integer("n_targets", 1, "Targets per sample (the next most frequent "
                                  "classes of the pairs, then the lowest other class indices).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 200, "Maximum gradient steps per pair.")
_CHECK_EVERY = flags.DEFINE_integer("check_every", 10, "Image check period of the batched search.")
_LR = flags.DEFINE_float("lr", 0.5, "Learning rate (sgd).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initial shifts.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def _world(path: pathlib.Path) -> dict:
  if not (path / "pairs" / pairs.PAIRS_FILE).exists():
    gen_dir = None
    if pathlib.Path(_FIXTURE.value).exists():
      gen_dir = path / "generator_fixture"
      checkpoint.save(gen_dir, port.convert_network_pickle(_FIXTURE.value))
    testing.build_tiny_world(path, seed=0, n_pairs=256, generator_dir=gen_dir)
  return {k: str(path / k) for k in ("classifier", "generator", "link", "pairs")}


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__name__)})
  world = _world(pathlib.Path(_WORLD.value))
  data = pairs.load(world["pairs"])
  classes, counts = np.unique(data["class_idx"], return_counts=True)
  by_freq = [int(c) for c in classes[np.argsort(-counts, kind="stable")]]
  orig_class = by_freq[0]
  num_classes = int(data["logits"].shape[1])
  targets = (by_freq[1:] + [c for c in range(num_classes) if c not in by_freq])[:_N_TARGETS.value]
  rows = np.nonzero(data["class_idx"] == orig_class)[0][:_N_SAMPLES.value]
  r = jnp.asarray(np.repeat(data["r"][rows], len(targets), axis=0), jnp.float32)
  target = jnp.asarray(np.tile(targets, len(rows)), jnp.int32)
  orig = jnp.full_like(target, orig_class)
  n = r.shape[0]
  shift0 = cf.initial_shift(jax.random.key(_SEED.value), n, r.shape[1])

  sfns, params = bundle.ModelBundle.load(classifier=world["classifier"],
                                         generator=world["generator"], link=world["link"])
  cfg = cf.SearchConfig(max_steps=_MAX_STEPS.value, check_every=_CHECK_EVERY.value,
                        learning_rate=_LR.value)
  modes = ("window", "last")
  cfgs = {m: dataclasses.replace(cfg, check_mode=m) for m in modes}

  # Warm-up: compile everything on the timed shapes (the reference compiles for one pair's shapes).
  for m in modes:
    jax.block_until_ready(cf.search(sfns, params, r, orig, target, shift0, config=cfgs[m]))
  warm_cfg = cf.SearchConfig(max_steps=2, learning_rate=_LR.value)
  cf.reference_search(sfns, params, r[:1], orig[:1], target[:1], shift0[:1], config=warm_cfg)

  t0 = time.perf_counter()
  ref = jax.device_get(cf.reference_search(sfns, params, r, orig, target, shift0, config=cfg))
  t_ref = time.perf_counter() - t0
  n_ok_ref = int(ref.success.sum())
  per_r = t_ref / max(n_ok_ref, 1)
  result = {
      "pairs": n, "orig_class": orig_class, "targets": targets, "max_steps": cfg.max_steps,
      "check_every": cfg.check_every, "lr": cfg.learning_rate, "device": str(jax.devices()[0]),
      "reference": {"seconds": t_ref, "solved": n_ok_ref, "success_rate": n_ok_ref / n,
                    "seconds_per_solved": per_r, "render_calls": int(ref.num_renders),
                    "images_rendered": int(ref.num_images), "steps": ref.steps.tolist()}}
  lines = [f"reference: {t_ref:.2f}s, {n_ok_ref}/{n} solved, {per_r:.3f}s per solved pair"]
  for m in modes:
    t0 = time.perf_counter()
    res = jax.device_get(jax.block_until_ready(cf.search(sfns, params, r, orig, target, shift0,
                                                          config=cfgs[m])))
    t_b = time.perf_counter() - t0
    n_ok = int(res.success.sum())
    per_b = t_b / max(n_ok, 1)
    result[f"batched_{m}"] = {
        "seconds": t_b, "solved": n_ok, "success_rate": n_ok / n, "seconds_per_solved": per_b,
        "render_calls": int(res.num_renders), "images_rendered": int(res.num_images),
        "same_stop_steps_as_reference": bool(np.array_equal(res.steps, ref.steps)),
        "speedup_per_solved_pair": per_r / per_b, "steps": res.steps.tolist()}
    lines.append(f"batched {m}: {t_b:.2f}s, {n_ok}/{n} solved, {per_b:.3f}s per solved pair, "
                 f"same stop steps as reference: {np.array_equal(res.steps, ref.steps)}, "
                 f"ratio {per_r / per_b:.1f}x")
  print(json.dumps(result, indent=2))
  print("\n".join(lines))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
