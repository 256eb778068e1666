"""W/R similarity (paper Fig. 3A): k-means ARI in W and R, and RSA between W and R.

  python -m experiments.similarity --pairs=DIR --repeats=100 --n_classes=5 --n_per_class=100 \
      --seed=0 --out=DIR

Writes --out/results.csv (repeat, ari_w, ari_r, rsa_corr, rsa_dist) and --out/similarity.png.
"""

import pathlib

from absl import app, flags, logging
import numpy as np

from linkjax import pairs, similarity

_PAIRS = flags.DEFINE_string("pairs", None, "Pairs directory written by experiments.make_pairs "
                             "(reads DIR/pairs.npz).", required=True)
_REPEATS = flags.DEFINE_integer("repeats", 100, "Number of random class/sample draws.")
_N_CLASSES = flags.DEFINE_integer("n_classes", 5, "Classes per draw (also k of k-means).")
_N_PER_CLASS = flags.DEFINE_integer("n_per_class", 100, "Samples per class per draw.")
_N_INIT = flags.DEFINE_integer("n_init", 20, "k-means initialisations.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws and of k-means.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created if needed).", required=True)


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(
      __name__)})
  data = pairs.load(_PAIRS.value)
  config = similarity.SimilarityConfig(repeats=_REPEATS.value, n_classes=_N_CLASSES.value,
                                       n_per_class=_N_PER_CLASS.value, n_init=_N_INIT.value,
                                       seed=_SEED.value)
  results = similarity.w_r_similarity(data["w"], data["r"], data["class_idx"], config)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  similarity.write_csv(out / "results.csv", results)
  similarity.box_plot(out / "similarity.png", results)
  for c in similarity.CSV_COLUMNS[1:]:
    logging.info("%s: median %.4f (IQR %.4f-%.4f)", c, np.median(results[c]),
                 *np.percentile(results[c], [25, 75]))
  logging.info("wrote %s", out)


if __name__ == "__main__":
  app.run(main)
