"""Fig. 4/5 summaries of a unit sweep: strips, label sparsity, t-SNE and clustering of units.

  python -m experiments.unit_summary --sweep=DIR --out=DIR

Reads DIR/sweep.npz (experiments.sweep_units) and writes sparsity_hist.png, tsne.png,
clusters.png, units.csv, label_vectors.csv and strip_unit_UUUU.png for every unit with saved
strips (see linkjax.unit_analysis for the definitions).
"""

from absl import app, flags, logging

from linkjax import sweep, unit_analysis

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep directory (experiments.sweep_units).",
                             required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (created if missing).", required=True)
_MIN_AREA = flags.DEFINE_float("min_area", 20.0, "Labels with a smaller mean area (pixels) over "
                               "the sweep steps count as unchanged.")
_CLUSTERS = flags.DEFINE_integer("n_clusters", 8, "Clusters cut from the Ward tree (units.csv).")
_SEED = flags.DEFINE_integer("seed", 0, "t-SNE random_state.")
_PERPLEXITY = flags.DEFINE_float("perplexity", 30.0, "t-SNE perplexity (capped at (U-1)/3).")


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(
      __name__)})
  arrays = sweep.load(_SWEEP.value)
  names = unit_analysis.label_names_of(_SWEEP.value, arrays["metrics"].shape[-2])
  res = unit_analysis.summarize_units(arrays, _OUT.value, label_names=names,
                                      min_area=_MIN_AREA.value, n_clusters=_CLUSTERS.value,
                                      seed=_SEED.value, perplexity=_PERPLEXITY.value)
  strips = unit_analysis.plot_strips(_SWEEP.value, arrays, _OUT.value, label_names=names,
                                     min_area=_MIN_AREA.value)
  logging.info("median sparsity over units (all samples): %.3f; %d strip figures",
               float(res["sparsity"]["overall"][-1].mean()), len(strips))


if __name__ == "__main__":
  app.run(main)
