r"""Plans a unit sweep before anything runs: images, FLOPs and the expected time on this machine.

  python -m experiments.plan --generator=ckpt/sgxl256 --classifier=ckpt/resnet50 \
      --segmenter=ckpt/seg --units=all --samples=100 --classes=232,254,151,197,178

Builds the sweep's compiled step for these models on the local devices, reads its FLOPs per image
from XLA's cost analysis, times a few chunks, and prints the number of images, the FLOPs and the
estimated wall time (split over --processes identical machines). See linkjax.plan.
"""

from absl import flags, logging

from linkjax import bundle, cli, files, jobs, plan, sweep, testing

_GENERATOR = flags.DEFINE_string("generator", None, "StyleGAN-XL checkpoint directory.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Classifier checkpoint directory.")
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Segmenter checkpoint directory.")
_LINK = flags.DEFINE_string("link", None, "Optional link directory (default: a random linear link "
                            "of the right shape; timing does not depend on its values).")
_TOY_WORLD = flags.DEFINE_bool("toy_world", False, "Plan for the tiny synthetic models "
                               "(linkjax.testing.ToySweep, R = --toy_r_dim).")
_TOY_R = flags.DEFINE_integer("toy_r_dim", 64, "R's width of the toy models.")
_UNITS = flags.DEFINE_string("units", "all", "Units to sweep: 'all', '0-99', '3,5,7'.")
_SAMPLES = flags.DEFINE_integer("samples", 100, "Base samples per class.", lower_bound=1)
_CLASSES = flags.DEFINE_list("classes", ["232", "254", "151", "197", "178"], "Classes (only their "
                             "number matters).")
_STEPS = flags.DEFINE_integer("steps", 3, "Values per unit.", lower_bound=2)
_CHUNK = flags.DEFINE_integer("chunk", 64, "Images per compiled call.", lower_bound=1)
_PROCESSES = flags.DEFINE_integer("processes", 1, "Identical machines the sweep will be split "
                                  "over.", lower_bound=1)
_TIMED = flags.DEFINE_integer("timed_chunks", 3, "Chunks run to measure the time per chunk.",
                              lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "Optional JSON file for the plan.")


def main(argv):
  del argv
  if _TOY_WORLD.value:
    models = testing.ToySweep(r_dim=_TOY_R.value)
    params, r_dim = models.params(), _TOY_R.value
  else:
    cli.require("--toy_world", generator=_GENERATOR.value, classifier=_CLASSIFIER.value,
                segmenter=_SEGMENTER.value)
    models, params = bundle.ModelBundle.load(generator=_GENERATOR.value,
                                             classifier=_CLASSIFIER.value,
                                             segmenter=_SEGMENTER.value, link=_LINK.value)
    r_dim = plan.r_dim_of(models, params)
    if "link" not in params:
      params = {**params, "link": plan.random_link(r_dim, models.generator_config.w_dim)}
  n_units = len(sweep.parse_units(_UNITS.value, r_dim))
  n_samples = _SAMPLES.value * len(cli.parse_ranges(",".join(_CLASSES.value), "class"))
  result = plan.plan_sweep(models, params, r_dim=r_dim, n_samples=n_samples, n_units=n_units,
                           steps=_STEPS.value, chunk=_CHUNK.value, processes=_PROCESSES.value,
                           timed_chunks=_TIMED.value, mesh=jobs.data_mesh())
  for line in result.lines():
    print(line)
  if _OUT.value:
    files.write_json(_OUT.value, {**vars(result), "estimate_s": result.estimate_s,
                                  "total_pflop": result.total_pflop, "gflops": result.gflops})
  logging.info("planned %d images", result.images)


if __name__ == "__main__":
  cli.run(main)
