"""Fig. 4/5 summaries of a unit sweep: strips, label sparsity, t-SNE and clustering of units.

  python -m experiments.unit_summary --sweep=DIR --out=DIR

Reads DIR/sweep.npz (experiments.sweep_units) and writes sparsity_hist.png, tsne.png,
clusters.png, units.csv, label_vectors.csv and strip_unit_UUUU.png for every unit with saved
strips (see linkjax.unit_analysis for the definitions).
"""

from absl import flags, logging

from linkjax import cli, unit_report

_D = unit_report.UnitsConfig()
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep directory (experiments.sweep_units).",
                             required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (created if missing).", required=True)
_MIN_AREA = flags.DEFINE_float("min_area", None, "Labels with a smaller mean area (pixels) over "
                               "the sweep steps count as unchanged (default: the reference's "
                               "20 px at 128 x 128, scaled to the sweep's mask resolution).")
_CLUSTERS = flags.DEFINE_integer("n_clusters", _D.n_clusters, "Clusters cut from the Ward tree "
                                 "(units.csv).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "t-SNE random_state.")
_PERPLEXITY = flags.DEFINE_float("perplexity", _D.perplexity, "t-SNE perplexity (capped at "
                                 "(U-1)/3).")


def main(argv):
  del argv
  cli.log_flags(__name__)
  out = unit_report.run_units(_SWEEP.value, _OUT.value, unit_report.UnitsConfig(
      min_area=_MIN_AREA.value, n_clusters=_CLUSTERS.value, seed=_SEED.value,
      perplexity=_PERPLEXITY.value))
  logging.info("median sparsity over units (all samples): %.3f; %d strip figures",
               out["median_sparsity_all"], len(out["strips"]))


if __name__ == "__main__":
  cli.run(main)
