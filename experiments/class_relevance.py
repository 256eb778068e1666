"""Fig. 6: how much each unit's sweep lowers the probability of the samples' own class.

  python -m experiments.class_relevance --sweep=DIR --out=DIR --threshold=0.15

Reads DIR/sweep.npz (experiments.sweep_units). Per sample s and unit u, dp = p(unperturbed) -
min over steps p(step) of the sample's class (--delta=max_drop), or p(first step) - p(last step)
(--delta=first_last); a unit is relevant to a class when the mean dp over that class's samples
exceeds --threshold. Writes delta_p_hist.png, relevant.png, correlation.png and CSV tables
(delta_p, relevant_units, shared_units, intersections, correlation).
"""

from absl import flags, logging

from linkjax import cli, unit_analysis, unit_report

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep directory (experiments.sweep_units).",
                             required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (created if missing).", required=True)
_THRESHOLD = flags.DEFINE_float("threshold", 0.15, "A unit is class-relevant when the mean "
                                "probability drop over the class's samples exceeds this.")
_DELTA = flags.DEFINE_enum("delta", "max_drop", list(unit_analysis.DELTA_MODES),
                           "max_drop: p(unperturbed) - min over steps; first_last: p(first step) "
                           "- p(last step).")


def main(argv):
  del argv
  cli.log_flags(__name__)
  out = unit_report.run_relevance(_SWEEP.value, _OUT.value, threshold=_THRESHOLD.value,
                                  mode=_DELTA.value)
  logging.info("class-relevant units per class: %s", out["relevant_per_class"])


if __name__ == "__main__":
  cli.run(main)
