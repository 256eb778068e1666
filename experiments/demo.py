"""The whole method offline: pairs -> link -> Figs. 3-7 -> report.html and summary.json.

  python -m experiments.demo --out=DIR            # the built-in miniature world
  python -m experiments.demo --out=DIR --tiny     # CI: minimal sizes, asserts the quality numbers
  python -m experiments.demo --out=DIR --generator=G --classifier=C --segmenter=S \
      --classes=232,254,151,197,178               # converted official checkpoints

Every stage writes its outputs and then DIR/<stage>/DONE.json; rerunning the same command skips
finished stages (pair generation and the sweep also resume inside the stage). See linkjax.demo.
"""

from absl import flags, logging

from linkjax import cli, demo

_D = demo.DemoConfig()
_T = demo.tiny_config()
_OUT = flags.DEFINE_string("out", None, "Output directory (report.html, summary.json, one "
                           "sub-directory per stage).", required=True)
_TINY = flags.DEFINE_bool("tiny", False, "CI preset: the same path with minimal sizes "
                          f"({_T.pairs.per_class} pairs per class, units {_T.sweep.units}, "
                          f"{_T.counterfactual.pairs} counterfactual searches); asserts the "
                          "built-in world's quality numbers (exits non-zero when one fails). "
                          "Explicit size flags override the preset.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a previous run with other settings "
                               "in --out instead of refusing.")
_GENERATOR = flags.DEFINE_string("generator", None, "StyleGAN-XL checkpoint directory (default: "
                                 "the built-in world's).")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Classifier checkpoint directory (default: "
                                  "the built-in world's).")
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Few-shot segmenter checkpoint directory "
                                 "(default: the built-in world's).")
_CLASSES = flags.DEFINE_list("classes", None, "Class indices (default: all classes of the "
                             "built-in world; required with external checkpoints).")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "Display names, one per --classes entry.")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of every random choice.")
_PSI = flags.DEFINE_float("psi", _D.pairs.psi, "Truncation psi of the pairs.")
_PAIRS = flags.DEFINE_integer("pairs_per_class", None, "Correctly classified pairs per class "
                              f"(default {_D.pairs.per_class}; --tiny {_T.pairs.per_class}).")
_LINK_MODEL = flags.DEFINE_enum("link_model", _D.link.model, ["ols", "ridge", "mlp"],
                                "Linking network r -> w.")
_HOLDOUT = flags.DEFINE_float("holdout", _D.link.holdout, "Held-out fraction of the pairs.")
_SIM_REPEATS = flags.DEFINE_integer("similarity_repeats", None, "Random draws for Fig. 3A "
                                    f"(default {_D.similarity.repeats}).")
_CYCLE_N = flags.DEFINE_integer("cycle_n", None, f"Held-out pairs in the cycle (default "
                                f"{_D.cycle.n}).")
_LPIPS = flags.DEFINE_bool("lpips", _D.lpips, "Compute LPIPS in the cycle and counterfactuals.")
_UNITS = flags.DEFINE_string("sweep_units", None, "Units of R to sweep: 'all', '0-99', '3,5,7' "
                             f"(default {_D.sweep.units!r}; --tiny {_T.sweep.units!r}).")
_SWEEP_SPC = flags.DEFINE_integer("sweep_samples_per_class", None, "Base samples per class of "
                                  f"the sweep (default {_D.sweep.samples_per_class}).")
_SWEEP_STEPS = flags.DEFINE_integer("sweep_steps", None, "Values per unit (default "
                                    f"{_D.sweep.steps}: the ends of its range).")
_SWEEP_CHUNK = flags.DEFINE_integer("sweep_chunk", None, "Images per compiled sweep call "
                                    f"(default {_D.sweep.chunk}).")
_THRESHOLD = flags.DEFINE_float("relevance_threshold", _D.relevance_threshold, "Mean "
                                "probability drop above which a unit is class-relevant.")
_CF_ORIG = flags.DEFINE_integer("cf_orig", None, "Counterfactual source class (default: the "
                                "first class).")
_CF_TARGET = flags.DEFINE_integer("cf_target", None, "Counterfactual target class (default: "
                                  "the second class).")
_CF_PAIRS = flags.DEFINE_integer("cf_pairs", None, "Counterfactual searches (samples of the "
                                 f"source class; default {_D.counterfactual.pairs}).")
_CF_STEPS = flags.DEFINE_integer("cf_max_steps", None, "Maximum gradient steps per search "
                                 f"(default {_D.counterfactual.max_steps}).")
_CF_INIT = flags.DEFINE_float("cf_init_scale", None, "Initial counterfactual shift ~ "
                              "cf_init_scale * U[0, 1) (default: 0.1 on a miniworld, whose r "
                              "units are small; 1.0, the reference's, otherwise).")
_QUALITY_IMAGES = flags.DEFINE_integer("quality_images", None, "Held-out generated images for "
                                       "the accuracy, mIoU and ground-truth checks (default "
                                       f"{_D.world_stage.quality_images}).")
_T0 = demo.Thresholds()
_MIN_ACC_R = flags.DEFINE_float("min_classifier_accuracy_renders",
                                _T0.classifier_accuracy_renders, "Quality threshold.")
_MIN_ACC_G = flags.DEFINE_float("min_classifier_accuracy_generated",
                                _T0.classifier_accuracy_generated, "Quality threshold.")
_MIN_MIOU = flags.DEFINE_float("min_segmenter_miou", _T0.segmenter_miou,
                               "Quality threshold (mean IoU over all labels).")
_MAX_LINK = flags.DEFINE_float("max_link_mse_ratio", _T0.link_mse_ratio, "Quality "
                               "threshold: held-out link MSE / shuffled-pairs MSE.")
_WORLD = flags.DEFINE_bool("world", None, "The given checkpoints are miniworld models (e.g. "
                           "retrained ones): run the ground-truth stage. Default: only for the "
                           "built-in checkpoints.")
_CHECK = flags.DEFINE_bool("check_quality", None, "Fail when a quality number misses its "
                           "threshold (default: on with --tiny).")


def _given(**kw):
  return {k: v for k, v in kw.items() if v is not None}


def _say(line: str) -> None:
  print(line, flush=True)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    # Stage lines and progress bars are printed; library logs (orbax, JAX) only when asked for.
    logging.set_verbosity(logging.WARNING)
  cli.log_flags(__name__)
  fields = {
      "generator": _GENERATOR.value, "classifier": _CLASSIFIER.value,
      "segmenter": _SEGMENTER.value, "world": _WORLD.value, "seed": _SEED.value,
      "lpips": _LPIPS.value, "relevance_threshold": _THRESHOLD.value,
      "classes": tuple(int(c) for c in _CLASSES.value) if _CLASSES.value else None,
      "class_names": tuple(_CLASS_NAMES.value) if _CLASS_NAMES.value else None,
      "pairs": _given(per_class=_PAIRS.value, psi=_PSI.value),
      "link": _given(model=_LINK_MODEL.value, holdout=_HOLDOUT.value),
      "similarity": _given(repeats=_SIM_REPEATS.value),
      "cycle": _given(n=_CYCLE_N.value),
      "sweep": _given(units=_UNITS.value, samples_per_class=_SWEEP_SPC.value,
                      steps=_SWEEP_STEPS.value, chunk=_SWEEP_CHUNK.value),
      "counterfactual": _given(orig=_CF_ORIG.value, target=_CF_TARGET.value,
                               pairs=_CF_PAIRS.value, max_steps=_CF_STEPS.value,
                               init_scale=_CF_INIT.value),
      "world_stage": _given(quality_images=_QUALITY_IMAGES.value),
      "thresholds": demo.Thresholds(
          classifier_accuracy_renders=_MIN_ACC_R.value,
          classifier_accuracy_generated=_MIN_ACC_G.value,
          segmenter_miou=_MIN_MIOU.value, link_mse_ratio=_MAX_LINK.value),
  }
  if _CHECK.value is not None:
    fields["check_quality"] = _CHECK.value
  cfg = demo.tiny_config(**fields) if _TINY.value else demo.make_config(**fields)
  demo.run_demo(cfg, _OUT.value, overwrite=_OVERWRITE.value, log=_say)


if __name__ == "__main__":
  cli.run(main)
