"""How well do planted units, and the part metrics the method measures, track their parameters
within a breed, on renders and on generated images? (issue 18)

For each classifier with planted units (its metrics.json map): the Pearson r of every planted
unit with its parameter, pooled and within breed (`planted_lib.planted_report` with the
classes), on held-out renders (`representations`, key `--seed` + 2) and on generated images at
psi 1 (`validate.generated_representations`, key `--seed`). Then, once, the ceiling that the
generator and segmenter set (`truth.measurability`): the within-breed r of each parameter with
its expected part metric measured on G(z) with the segmenter's mask and on the render with the
true mask (key `--seed` + 1), for each `--segmenters`.

  python -m benchmarks.planted_tracking --classifiers=linkjax/miniworld/weights/classifier_planted,DIR2 \
      --segmenters=linkjax/miniworld/weights/segmenter,DIR3 --out=FILE.json
"""

from __future__ import annotations

import jax
from absl import app, flags

from linkjax import bundle as bundle_lib
from linkjax import checkpoint, demo, files
from linkjax.miniworld import planted as planted_lib
from linkjax.miniworld import train_classifier, truth, validate

_CLASSIFIERS = flags.DEFINE_list("classifiers", [str(validate.PLANTED_DIR)],
                                 "Classifier checkpoints with planted units.")
_SEGMENTERS = flags.DEFINE_list("segmenters", [str(demo.BUILTIN["segmenter"])],
                                "Segmenters for the measurability ceiling ('' for none).")
_GENERATOR = flags.DEFINE_string("generator", str(demo.BUILTIN["generator"]),
                                 "The miniworld generator.")
_RENDERS = flags.DEFINE_integer("renders", 2000, "Held-out renders per classifier.")
_GENERATED = flags.DEFINE_integer("generated", 1000, "Generated images per classifier.")
_MEASURE = flags.DEFINE_integer("measure_images", 2000, "Generated images for the ceiling.")
_MIN_AREA = flags.DEFINE_float("min_area", 5.0, "Minimum part area (px at 64 x 64).")
_SEED = flags.DEFINE_integer("seed", 7, "Seed of the latents and renders.")
_OUT = flags.DEFINE_string("out", None, "JSON to write.", required=True)


def main(argv):
  del argv
  key = jax.random.key(_SEED.value)
  out: dict = {"classifiers": {}, "measurability": {}}
  maps = {d: validate.read_planted(d) for d in _CLASSIFIERS.value}  # checked before any work
  missing = [d for d, m in maps.items() if not m]
  if missing:
    raise app.UsageError(f"--classifiers: no planted units in the metrics.json of {missing}")
  params_seen = {p for m in maps.values() for _, p in m}
  for d, planted in maps.items():
    model = checkpoint.load(d, role="classifier")
    r, theta, c = train_classifier.representations(model, jax.random.fold_in(key, 2),
                                                   _RENDERS.value)
    renders = planted_lib.planted_report(r, theta, planted, c)
    models, params = bundle_lib.ModelBundle.load(generator=_GENERATOR.value, classifier=d)
    r, theta, c = validate.generated_representations(models, params, key=key,
                                                     n=_GENERATED.value)
    generated = planted_lib.planted_report(r, theta, planted, c)
    out["classifiers"][d] = {"renders": renders, "generated": generated}
    print(d)
    for a, b in zip(renders, generated):
      print(f"  unit {a['unit']:4d} {a['param']:15s} renders r {a['r']:+.2f} within "
            f"{a['r_within_class']:+.2f} | generated r {b['r']:+.2f} within "
            f"{b['r_within_class']:+.2f}")
  for s in (x for x in _SEGMENTERS.value if x):
    models, params = bundle_lib.ModelBundle.load(generator=_GENERATOR.value, segmenter=s)
    m = truth.measurability(models, params, sorted(params_seen), key=jax.random.fold_in(key, 1),
                            n=_MEASURE.value, min_area=_MIN_AREA.value)
    out["measurability"][s] = m
    print(f"measurability with {s} (within-breed r: G + segmenter / render + true mask)")
    for name, v in m.items():
      print(f"  {name:15s} {v['part']} {v['metric']}: {v['r_generated_segmenter']:+.2f} / "
            f"{v['r_render_true']:+.2f} (n {v['n']})")
  files.write_json(_OUT.value, files.json_safe(out))


if __name__ == "__main__":
  app.run(main)
