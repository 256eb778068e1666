"""Time per solved (sample, target) pair: batched counterfactual search vs the reference's procedure.

  # The built-in world's shipped models with the demo's search settings (default):
  python -m benchmarks.counterfactual_speed --world=builtin --work=/tmp/cf_speed_builtin \
      --class_pairs=0:1,1:0,2:3,3:4,4:2 --n_samples=6 --repeats=2
  # Tiny random models:
  python -m benchmarks.counterfactual_speed --world=tiny --work=/tmp/cf_world --n_samples=16 \
      --max_steps=200 --init_scale=1

World 'builtin': the shipped miniworld generator and classifier (linkjax/miniworld/weights), pairs
generated from them (--pairs_per_class per class, psi 0.7, seed 0, correctly classified ones: the
demo's pair stage) and the OLS link fitted on them (the demo's link stage); both are built once in
--work and reused. The searched pairs are the first --n_samples pairs of each `orig:target` class
pair of --class_pairs, all in one batch. World 'tiny': a tiny ResNet, the converted StyleGAN-XL
fixture generator (or a random tiny generator if the fixture is absent) and an OLS link on 256 pairs;
--n_samples pairs of the most frequent class towards the next --n_targets classes.

Every method runs on the same pairs, initial shifts (init_scale * U[0, 1), pair i from
fold_in(key(seed), i)) and hyper-parameters:

- reference: `linkjax.counterfactual.reference_search`, one pair at a time, a Python loop of a jitted
  gradient step followed by a jitted render + classify check and a host read-back after every step;
- batched modes of `linkjax.counterfactual.search`, all pairs in one compiled while-loop: 'window'
  (all iterates of each --check_every window rendered, exact), 'head' (iterates screened with the
  head and the latent distance since the last rendered iterate, only those rendered), and with
  --modes also 'last'.

All are compiled on the timed shapes before timing; each repeat runs every method once, in turn
(the machine may be shared: compare the ratios of one repeat, and the CPU times). Reports wall and
CPU seconds, time per solved pair, render calls, images, success and whether the stop steps equal
the reference's, and the time-per-solved-pair ratios vs the reference and vs 'window'.
"""

import dataclasses
import json
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from linkjax import bundle, checkpoint, link, pairs, testing
from linkjax import counterfactual as cf
from linkjax.counterfactual import descent
from linkjax.demo import config as demo_config
from ports import stylegan_xl as port

_WORLD = flags.DEFINE_enum("world", "builtin", ["builtin", "tiny"], "Models: the shipped "
                           "miniworld ('builtin') or tiny random ones ('tiny').")
_WORK = flags.DEFINE_string("work", "/tmp/cf_speed_builtin", "Work directory (pairs, link and, "
                            "for 'tiny', the models; built if missing, reused otherwise).")
_FIXTURE = flags.DEFINE_string("fixture", str(pathlib.Path(__file__).resolve().parents[2] / "shared"
                                              / "fixtures" / "sgxl_tiny.pkl"),
                               "'tiny': StyleGAN-XL fixture pickle to convert for the generator (a "
                               "random tiny generator is used if the file is absent).")
_PAIRS_PER_CLASS = flags.DEFINE_integer("pairs_per_class", 300, "'builtin': generated pairs per "
                                        "class for the link (the demo's: 300).")
_CLASS_PAIRS = flags.DEFINE_list("class_pairs", ["0:1", "1:0", "2:3", "3:4", "4:2"],
                                 "'builtin': orig:target class pairs searched.")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 6, "Samples per class pair ('builtin'), or of the "
                                  "most frequent class ('tiny').")
_N_TARGETS = flags.DEFINE_integer("n_targets", 1, "'tiny': targets per sample (the next most "
                                  "frequent classes of the pairs, then the lowest other indices).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 300, "Maximum gradient steps per pair (demo: 300).")
_CHECK_EVERY = flags.DEFINE_integer("check_every", 10, "Window of the batched search (demo: 10).")
_LR = flags.DEFINE_float("lr", 0.5, "Learning rate (sgd; demo: 0.5).")
_INIT_SCALE = flags.DEFINE_float("init_scale", 0.1, "Initial shift ~ init_scale * U[0, 1) (demo on "
                                 "the built-in world: 0.1; the reference: 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initial shifts.")
_MODES = flags.DEFINE_list("modes", ["window", "head"], "Batched check modes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repeats of every method.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the results.")


def _tiny_world(path: pathlib.Path) -> dict:
  if not (path / "pairs" / pairs.PAIRS_FILE).exists():
    gen_dir = None
    if pathlib.Path(_FIXTURE.value).exists():
      gen_dir = path / "generator_fixture"
      checkpoint.save(gen_dir, port.convert_network_pickle(_FIXTURE.value))
    testing.build_tiny_world(path, seed=0, n_pairs=256, generator_dir=gen_dir)
  return {k: str(path / k) for k in ("classifier", "generator", "link", "pairs")}


def _builtin_world(path: pathlib.Path) -> dict:
  """The demo's pair and link stages on the shipped models (built once)."""
  models_paths = {k: str(demo_config.BUILTIN[k]) for k in ("generator", "classifier")}
  if not (path / "link" / "config.json").exists():
    models, params = bundle.ModelBundle.load(**models_paths)
    n_classes = int(models.generator_config.c_dim)
    p = demo_config.PairsStage(per_class=_PAIRS_PER_CLASS.value)
    pairs.generate_pairs(models, params, path / "pairs", pairs.PairConfig(
        classes=tuple(range(n_classes)), n_per_class=p.per_class, seed=0, batch=p.batch, psi=p.psi,
        keep="correct", max_draws_per_class=p.max_draws * p.per_class), overwrite=True)
    link.fit_from_pairs(path / "pairs", path / "link", link.LinkConfig(seed=0))
  return {**models_paths, "link": str(path / "link"), "pairs": str(path / "pairs")}


def _select(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
  """Rows, orig and target classes of the searched pairs, and a description."""
  if _WORLD.value == "builtin":
    rows, orig, target = [], [], []
    for cp in _CLASS_PAIRS.value:
      o, t = (int(x) for x in cp.split(":"))
      sel = np.nonzero(data["class_idx"] == o)[0][:_N_SAMPLES.value]
      rows += sel.tolist()
      orig += [o] * len(sel)
      target += [t] * len(sel)
    return np.asarray(rows), np.asarray(orig), np.asarray(target), {
        "class_pairs": _CLASS_PAIRS.value}
  classes, counts = np.unique(data["class_idx"], return_counts=True)
  by_freq = [int(c) for c in classes[np.argsort(-counts, kind="stable")]]
  num_classes = int(data["logits"].shape[1])
  targets = (by_freq[1:] + [c for c in range(num_classes) if c not in by_freq])[:_N_TARGETS.value]
  sel = np.nonzero(data["class_idx"] == by_freq[0])[0][:_N_SAMPLES.value]
  rows = np.repeat(sel, len(targets))
  return (rows, np.full(len(rows), by_freq[0]), np.tile(targets, len(sel)),
          {"orig_class": by_freq[0], "targets": targets})


def _timed(fn):
  t0, c0 = time.perf_counter(), time.process_time()
  res = jax.device_get(jax.block_until_ready(fn()))
  return res, time.perf_counter() - t0, time.process_time() - c0


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(__name__)})
  work = pathlib.Path(_WORK.value)
  world = _builtin_world(work) if _WORLD.value == "builtin" else _tiny_world(work)
  data = pairs.load(world["pairs"])
  rows, orig_np, target_np, described = _select(data)
  r = jnp.asarray(data["r"][rows], jnp.float32)
  orig, target = jnp.asarray(orig_np, jnp.int32), jnp.asarray(target_np, jnp.int32)
  n = r.shape[0]
  shift0 = jnp.float32(_INIT_SCALE.value) * cf.initial_shift(jax.random.key(_SEED.value), n,
                                                             r.shape[1])
  sfns, params = bundle.ModelBundle.load(classifier=world["classifier"],
                                         generator=world["generator"], link=world["link"])
  cfg = cf.SearchConfig(max_steps=_MAX_STEPS.value, check_every=_CHECK_EVERY.value,
                        learning_rate=_LR.value)
  modes = list(_MODES.value)
  cfgs = {m: dataclasses.replace(cfg, check_mode=m) for m in modes}

  # Warm-up: compile everything on the timed shapes (the reference: its step and check, with the
  # timed config, on one pair's shapes).
  for m in modes:
    jax.block_until_ready(cf.search(sfns, params, r, orig, target, shift0, config=cfgs[m]))
  step, check, link_fn = descent._reference_fns(sfns, cfg)  # pylint: disable=protected-access
  opt = descent.make_optimizer(cfg)
  f_r = link_fn(params, r[:1])[0]
  jax.block_until_ready(step(params, shift0[0], opt.init(shift0[0]), r[0], f_r, orig[0],
                             target[0]))
  jax.block_until_ready(check(params, r[0], shift0[0]))

  runs: dict[str, list] = {m: [] for m in ["reference"] + modes}
  for rep in range(_REPEATS.value):
    res, wall, cpu = _timed(lambda: cf.reference_search(sfns, params, r, orig, target, shift0,
                                                        config=cfg))
    runs["reference"].append((res, wall, cpu))
    for m in modes:
      res, wall, cpu = _timed(lambda m=m: cf.search(sfns, params, r, orig, target, shift0,
                                                    config=cfgs[m]))
      runs[m].append((res, wall, cpu))
    logging.info("repeat %d: %s", rep, {k: round(v[-1][1], 2) for k, v in runs.items()})

  ref0 = runs["reference"][0][0]
  result = {"world": _WORLD.value, **described, "pairs": n, "max_steps": cfg.max_steps,
            "check_every": cfg.check_every, "lr": cfg.learning_rate,
            "init_scale": _INIT_SCALE.value, "seed": _SEED.value, "repeats": _REPEATS.value,
            "device": str(jax.devices()[0]), "reference_steps": ref0.steps.tolist()}
  per_solved = {}
  for name, rs in runs.items():
    res = rs[0][0]
    solved = int(res.success.sum())
    walls, cpus = [w for _, w, _ in rs], [c for _, _, c in rs]
    per_solved[name] = [w / max(solved, 1) for w in walls]
    result[name] = {
        "wall_seconds": walls, "cpu_seconds": cpus, "solved": solved, "success_rate": solved / n,
        "seconds_per_solved": per_solved[name], "render_calls": int(res.num_renders),
        "images_rendered": int(res.num_images),
        "same_success_as_reference": bool(np.array_equal(res.success, ref0.success)),
        "same_stop_steps_as_reference": bool(np.array_equal(res.steps, ref0.steps)),
        "steps": res.steps.tolist()}
  lines = []
  for name in runs:
    d = result[name]
    ratio_ref = [a / b for a, b in zip(per_solved["reference"], per_solved[name])]
    d["speedup_vs_reference"] = ratio_ref
    line = (f"{name:9s}: {d['solved']}/{n} solved, {d['images_rendered']} images in "
            f"{d['render_calls']} calls, wall {'/'.join(f'{w:.2f}' for w in d['wall_seconds'])}s "
            f"(cpu {'/'.join(f'{c:.2f}' for c in d['cpu_seconds'])}s), "
            f"{np.median(per_solved[name]):.3f}s per solved pair, stop steps = reference: "
            f"{d['same_stop_steps_as_reference']}, x{'/'.join(f'{x:.2f}' for x in ratio_ref)} vs "
            "reference")
    if name != "window" and "window" in per_solved:
      d["speedup_vs_window"] = [a / b for a, b in zip(per_solved["window"], per_solved[name])]
      line += f", x{'/'.join(f'{x:.2f}' for x in d['speedup_vs_window'])} vs window"
    lines.append(line)
  print(json.dumps(result, indent=2))
  print("\n".join(lines))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
