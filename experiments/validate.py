"""Planted-truth recovery benchmark: does the method find the units we planted in the classifier?

  python -m experiments.validate --out=DIR

With the miniworld classifier whose units 40, 120, 200, 280, 360 and 440 were trained to encode
ear length, tail length, leg length, head size, body luminance and eye size
(linkjax/miniworld/weights/classifier_planted; the map is in its metrics.json), the shipped
generator and segmenter: world checks, pairs, link, a sweep over ALL units of R, counterfactuals
between two breeds, then the scores (linkjax.miniworld.validate). DIR is a demo run directory
(same stages, same layout; a rerun resumes): DIR/validate/validation.json (every number),
DIR/validate/recovery.md and recovery.html (the tables), DIR/validate/strips/ (the planted
units' image strips), DIR/report.html (the validation first).
"""

from absl import flags, logging

from linkjax import cli
from linkjax.miniworld import validate_benchmark

_D = validate_benchmark.BenchmarkConfig()
_OUT = flags.DEFINE_string("out", None, "Output directory (a demo run directory).", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a previous run with other settings "
                               "in --out instead of refusing.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Classifier checkpoint with planted units "
                                  "(metrics.json 'planted'); default: the shipped "
                                  "classifier_planted.")
_GENERATOR = flags.DEFINE_string("generator", None, "Generator checkpoint (default: the built-in "
                                 "world's).")
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Segmenter checkpoint (default: the "
                                 "built-in world's).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of every random choice.")
_PAIRS = flags.DEFINE_integer("pairs_per_class", _D.pairs_per_class,
                              "Correctly classified pairs per class.")
_UNITS = flags.DEFINE_string("units", _D.units, "Units of R to sweep ('all', '0-99', '3,5,7'); "
                             "the planted units must be among them.")
_SPC = flags.DEFINE_integer("samples_per_class", _D.samples_per_class,
                            "Base samples per class of the sweep over all units.")
_STEPS = flags.DEFINE_integer("steps", _D.steps, "Values per unit in the sweep (2: the ends of "
                              "its range over the base samples).")
_CHUNK = flags.DEFINE_integer("chunk", _D.chunk, "Images per compiled sweep call.")
_ORIG = flags.DEFINE_integer("orig", _D.orig, "Breed the counterfactuals start from "
                             "(default: 2, dotted bruiser).")
_TARGET = flags.DEFINE_integer("target", _D.target, "Breed the counterfactuals aim for "
                               "(default: 4, ember foxhound).")
_CF_PAIRS = flags.DEFINE_integer("cf_pairs", _D.cf_pairs, "Counterfactual searches.")
_CF_STEPS = flags.DEFINE_integer("cf_max_steps", _D.cf_max_steps,
                                 "Maximum gradient steps per counterfactual search.")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  cfg = validate_benchmark.BenchmarkConfig(
      classifier=_CLASSIFIER.value, generator=_GENERATOR.value, segmenter=_SEGMENTER.value,
      seed=_SEED.value, pairs_per_class=_PAIRS.value, units=_UNITS.value,
      samples_per_class=_SPC.value,
      steps=_STEPS.value, chunk=_CHUNK.value, orig=_ORIG.value, target=_TARGET.value,
      cf_pairs=_CF_PAIRS.value, cf_max_steps=_CF_STEPS.value)
  logging.warning("out=%s config=%s", _OUT.value, cfg)
  validate_benchmark.run_benchmark(cfg, _OUT.value, overwrite=_OVERWRITE.value,
                         log=lambda line: print(line, flush=True))


if __name__ == "__main__":
  cli.run(main)
