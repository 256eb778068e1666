r"""Sweeps units of R through link -> generator -> classifier + segmenter (paper Sec. 3.2, 4.3).

  python -m experiments.sweep_units --pairs=DIR --link=DIR --generator=DIR --classifier=DIR \
      --segmenter=DIR --units=all --samples_per_class=100 --steps=3 --out=DIR

Writes DIR/sweep.npz (metrics [S, U, steps, L, M], probs [S, U, steps, C], pred, the unperturbed
baseline, units, sample_idx, class_idx, classes, values, label_names), streaming shard files to
DIR/shards/; rerunning the same command resumes. Image strips go to DIR/strips/ for the units in
--save_strips_for (and the --strip_top units with the largest label changes); --motion adds
their motion fields (Fig. 4C: DIR/motion.npz, DIR/motion.json, DIR/strips/motion_unit_UUUU.png).
For the reference's base samples (psi 0.7, seed 136, no correctness filter) make the pair directory with
`experiments.make_pairs --psi=0.7 --seed=136 --keep=all`. With --coordinator_address/
--num_processes/--process_id (or --distributed_auto) the shards are split over the processes of
a multi-host job (BUILD.md, "Many processes").
"""

from absl import flags, logging

from linkjax import bundle, cli, jobs, pairs, sweep, sweep_motion, testing

_D = sweep.SweepConfig()
_PAIRS = flags.DEFINE_string("pairs", None, "Pair directory (pairs.npz) the base samples are "
                             "taken from: the first --samples_per_class draws of each class.",
                             required=True)
_LINK = flags.DEFINE_string("link", None, "Linking-network directory (experiments.fit_link).")
_GENERATOR = flags.DEFINE_string("generator", None, "StyleGAN-XL checkpoint directory.")
_CLASSIFIER = flags.DEFINE_string("classifier", None, "Classifier checkpoint directory (its "
                                  "config's resize/crop define the input transform).")
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Segmenter checkpoint directory "
                                 "(experiments.train_segmenter).")
_TOY_WORLD = flags.DEFINE_bool("toy_world", False, "Testing/benchmarking: a tiny synthetic "
                               "link + generator + classifier + segmenter "
                               "(linkjax.testing.ToySweep) instead of the four checkpoints.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created if missing).", required=True)
_UNITS = flags.DEFINE_string("units", _D.units, "Units of R to sweep: 'all', a range '0-99' "
                             "(inclusive), a list '3,5,7' or a mix '0-9,100'.")
_SAMPLES = flags.DEFINE_integer("samples_per_class", _D.samples_per_class,
                                "Base samples per class.")
_CLASSES = flags.DEFINE_list("classes", None, "Classes to take samples from (default: every class "
                             "in the pair file).")
_STEPS = flags.DEFINE_integer("steps", _D.steps, "Values per unit: linspace(min, max, steps).")
_RANGE_FROM = flags.DEFINE_enum("range_from", _D.range_from, list(sweep.RANGE_FROM),
                                "Per-unit [min, max] over the base samples (reference) or over "
                                "every pair in the file.")
_CHUNK = flags.DEFINE_integer("chunk", _D.chunk, "(sample, unit, step) triples per compiled call, "
                              "i.e. images in flight at once; rounded up to a multiple of the "
                              "device count. Memory grows linearly with it.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", _D.shard_size, "Triples per shard file in "
                                   "OUT/shards/ (rounded up to a multiple of the chunk); the unit "
                                   "of resumption.")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices to shard the chunk over (default all).")
_STRIPS = flags.DEFINE_list("save_strips_for", [], "Units whose image strips (samples x steps) "
                            "are saved as PNG (+ npz) under OUT/strips/.")
_STRIP_TOP = flags.DEFINE_integer("strip_top", _D.strip_top, "Also save strips of this many "
                                  "units with the largest label changes.")
_STRIP_ROWS = flags.DEFINE_integer("strip_rows", _D.strip_rows, "Samples (rows) per strip, "
                                   "round-robin over classes.")
_MOTION = flags.DEFINE_bool("motion", _D.motion, "Motion fields of the strip units (paper "
                            "Fig. 4C, linkjax.sweep_motion): flow from each strip sample's "
                            "unperturbed image to its images at the ends of the unit's range; "
                            "per-part mean/max displacement (pixels, segmenter masks) and the "
                            "global affine (scale, rotation in degrees, translation in pixels) "
                            "in OUT/motion.npz and OUT/motion.json, quiver strips in "
                            "OUT/strips/motion_unit_UUUU.png. Needs --save_strips_for or "
                            "--strip_top.")
_MOTION_SEED = flags.DEFINE_integer("motion_seed", _D.motion_seed, "Seed of the motion's "
                                    "RANSAC affine fits.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a sweep with other arguments in OUT.")
_LOG_EVERY = flags.DEFINE_float("log_every_s", 30.0, "Seconds between progress lines.")
cli.define_distributed_flags()


def main(argv):
  del argv
  cli.initialize_distributed()
  cli.log_flags(__name__)
  config = sweep.SweepConfig(
      units=_UNITS.value, samples_per_class=_SAMPLES.value, steps=_STEPS.value,
      chunk=_CHUNK.value, shard_size=_SHARD_SIZE.value, range_from=_RANGE_FROM.value,
      classes=tuple(int(c) for c in _CLASSES.value) if _CLASSES.value else None,
      strip_units=tuple(int(u) for u in _STRIPS.value), strip_top=_STRIP_TOP.value,
      strip_rows=_STRIP_ROWS.value, motion=_MOTION.value, motion_seed=_MOTION_SEED.value)
  if _TOY_WORLD.value:
    r_dim = pairs.load(_PAIRS.value)["r"].shape[1]
    models = testing.ToySweep(r_dim=r_dim)
    params = models.params()
  else:
    cli.require("--toy_world", link=_LINK.value, generator=_GENERATOR.value,
                classifier=_CLASSIFIER.value, segmenter=_SEGMENTER.value)
    models, params = bundle.ModelBundle.load(generator=_GENERATOR.value,
                                             classifier=_CLASSIFIER.value,
                                             segmenter=_SEGMENTER.value, link=_LINK.value)
  res = sweep.run(_PAIRS.value, models, params, _OUT.value, config,
                  mesh=jobs.data_mesh(_DEVICES.value), overwrite=_OVERWRITE.value,
                  log_every_s=_LOG_EVERY.value)
  logging.info("metrics %s, probs %s; strips of units %s", res["arrays"]["metrics"].shape,
               res["arrays"]["probs"].shape, res["strip_units"])
  mo = sweep_motion.run_config(_PAIRS.value, models, params, _OUT.value, config,
                              res["strip_units"], mesh=jobs.data_mesh(_DEVICES.value))
  if mo is not None:
    logging.info("motion fields of units %s in %.1f s", mo["units"], mo["seconds"])


if __name__ == "__main__":
  cli.run(main)
