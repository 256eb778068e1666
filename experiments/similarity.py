"""W/R similarity (paper Fig. 3A): k-means ARI in W and R, and RSA between W and R.

  python -m experiments.similarity --pairs=DIR --repeats=100 --n_classes=5 --n_per_class=100 \
      --seed=0 --out=DIR

Writes --out/results.csv (repeat, ari_w, ari_r, rsa_corr, rsa_dist) and --out/similarity.png.
--n_classes and --n_per_class are capped at what the pair file holds.
"""

from absl import flags, logging

from linkjax import cli, similarity

_D = similarity.SimilarityConfig()
_PAIRS = flags.DEFINE_string("pairs", None, "Pairs directory written by experiments.make_pairs "
                             "(reads DIR/pairs.npz).", required=True)
_REPEATS = flags.DEFINE_integer("repeats", _D.repeats, "Number of random class/sample draws.")
_N_CLASSES = flags.DEFINE_integer("n_classes", _D.n_classes, "Classes per draw (also k of "
                                  "k-means).")
_N_PER_CLASS = flags.DEFINE_integer("n_per_class", _D.n_per_class, "Samples per class per draw.")
_N_INIT = flags.DEFINE_integer("n_init", _D.n_init, "k-means initialisations.")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of the draws and of k-means.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created if needed).", required=True)


def main(argv):
  del argv
  cli.log_flags(__name__)
  config = similarity.SimilarityConfig(repeats=_REPEATS.value, n_classes=_N_CLASSES.value,
                                       n_per_class=_N_PER_CLASS.value, n_init=_N_INIT.value,
                                       seed=_SEED.value)
  summary = similarity.run(_PAIRS.value, _OUT.value, config)
  logging.info("medians: %s; wrote %s", summary, _OUT.value)


if __name__ == "__main__":
  cli.run(main)
