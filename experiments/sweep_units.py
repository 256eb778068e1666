r"""Sweeps units of R through link -> generator -> classifier + segmenter (paper Sec. 3.2, 4.3).

  python -m experiments.sweep_units --pairs=DIR --link=DIR --generator=DIR --classifier=DIR \
      --segmenter=DIR --units=all --samples_per_class=100 --steps=3 --out=DIR

Writes DIR/sweep.npz (metrics [S, U, steps, L, 5], probs [S, U, steps, C], pred, the unperturbed
baseline, units, sample_idx, class_idx, classes, values), streaming shard files to
DIR/shards/; rerunning the same command resumes. Image strips go to DIR/strips/ for the units in
--save_strips_for. For the reference's base samples (psi 0.7, seed 136, no correctness filter)
make the pair directory with `experiments.make_pairs --psi=0.7 --seed=136 --keep=all`.
"""

from absl import app, flags, logging

from linkjax import sweep

_PAIRS = flags.DEFINE_string("pairs", None, "Pair directory (pairs.npz) the base samples are "
                             "taken from: the first --samples_per_class draws of each class.",
                             required=True)
_LINK = flags.DEFINE_string("link", None, "Linking-network directory (experiments.fit_link).",
                            required=True)
_GENERATOR = flags.DEFINE_string("generator", None, "StyleGAN-XL checkpoint directory.",
                                 required=True)
_CLASSIFIER = flags.DEFINE_string("classifier", None, "ResNet checkpoint directory (its config's "
                                  "resize/crop define the input transform).", required=True)
_SEGMENTER = flags.DEFINE_string("segmenter", None, "Segmenter checkpoint directory "
                                 "(experiments.train_segmenter).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (created if missing).", required=True)
_UNITS = flags.DEFINE_string("units", "all", "Units of R to sweep: 'all', a range '0-99' "
                             "(inclusive), a list '3,5,7' or a mix '0-9,100'.")
_SAMPLES = flags.DEFINE_integer("samples_per_class", 100, "Base samples per class.")
_CLASSES = flags.DEFINE_list("classes", None, "Classes to take samples from (default: every class "
                             "in the pair file).")
_STEPS = flags.DEFINE_integer("steps", 3, "Values per unit: linspace(min, max, steps).")
_RANGE_FROM = flags.DEFINE_enum("range_from", "samples", ["samples", "pairs"],
                                "Per-unit [min, max] over the base samples (reference) or over "
                                "every pair in the file.")
_CHUNK = flags.DEFINE_integer("chunk", 64, "(sample, unit, step) triples per compiled call, i.e. "
                              "images in flight at once; rounded up to a multiple of the device "
                              "count. Memory grows linearly with it. On accelerators use as "
                              "many as memory allows; on CPU per-image cost does not fall with "
                              "the batch (benchmarks/sweep_throughput.py), small chunks suffice.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 4096, "Triples per shard file in OUT/shards/ "
                                   "(rounded up to a multiple of the chunk); the unit of "
                                   "resumption.")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices to shard the chunk over (default all).")
_STRIPS = flags.DEFINE_list("save_strips_for", [], "Units whose image strips (samples x steps) "
                            "are saved as PNG (+ npz) under OUT/strips/.")
_STRIP_ROWS = flags.DEFINE_integer("strip_rows", 8, "Samples (rows) per strip, round-robin over "
                                   "classes.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a sweep with other arguments in OUT.")
_LOG_EVERY = flags.DEFINE_float("log_every_s", 30.0, "Seconds between progress lines.")


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(
      __name__)})
  res = sweep.sweep_from_dirs(
      pairs_dir=_PAIRS.value, link_dir=_LINK.value, generator_dir=_GENERATOR.value,
      classifier_dir=_CLASSIFIER.value, segmenter_dir=_SEGMENTER.value, out_dir=_OUT.value,
      units=_UNITS.value, samples_per_class=_SAMPLES.value, steps=_STEPS.value,
      chunk=_CHUNK.value, shard_size=_SHARD_SIZE.value,
      save_strips_for=[int(u) for u in _STRIPS.value],
      strip_rows=_STRIP_ROWS.value, range_from=_RANGE_FROM.value,
      classes=[int(c) for c in _CLASSES.value] if _CLASSES.value else None,
      n_devices=_DEVICES.value, overwrite=_OVERWRITE.value, log_every_s=_LOG_EVERY.value)
  logging.info("metrics %s, probs %s", res["metrics"].shape, res["probs"].shape)


if __name__ == "__main__":
  app.run(main)
