"""The whole method end to end, on the built-in miniworld by default, with an HTML report.

Stages, in order (each in its own sub-directory of the output directory; each calls the same
library driver as its `experiments/*` binary):

  world           miniworld only: classifier accuracy on held-out renders and on generated
                  images (psi 1), segmenter mean IoU against the renderer's masks, and the
                  ground-truth check of the part metrics (segmenter on G(z) vs true mask on the
                  render of the same (z, c)).
  pairs           (w, r) pairs, keep='correct' (`linkjax.pairs.generate_pairs`, resumable).
  link            OLS link r -> w on a held-out split (`linkjax.link.fit_from_pairs`).
  similarity      Fig. 3A: k-means ARI in W and R, RSA (`linkjax.similarity.run`).
  cycle           Fig. 3B/C: w -> I -> r -> f(r) -> I~ on held-out pairs (`linkjax.cycle.run`).
  sweep           every unit of R over its range, regenerate, classify, segment, measure
                  (`linkjax.sweep.run`, resumable), strips of the units with the largest effects.
  units           Fig. 4/5: label sparsity, t-SNE, clustering, strips (`unit_report.run_units`).
  relevance       Fig. 6: class-relevant units (`unit_report.run_relevance`).
  counterfactual  Fig. 7: counterfactual search between two classes
                  (`linkjax.counterfactual.run_experiment`).
  validate        only for a miniworld classifier with planted units (its metrics.json maps
                  units of R to renderer parameters, e.g. weights/classifier_planted): does the
                  sweep name each planted unit's part and metric, how sparse is it, how many free
                  units are falsely named, do the counterfactual paths change the parts in which
                  the two breeds differ (`linkjax.miniworld.validate.run`). Shown first in the
                  report. `experiments.validate` runs just the stages it needs.
  report          report.html (every figure, with a caption) and summary.json (key numbers).

Resumability: a stage writes its outputs, then `DONE.json` (its summary numbers and its wall and
CPU time) atomically; a rerun with the same settings skips every stage with a marker and resumes
the pair generation and the sweep from their shard files. The settings are the run record
(`run.json`); a rerun with other settings is refused unless `overwrite=True`.
"""

from linkjax.demo.config import (BUILTIN, CounterfactualStage, DemoConfig, PairsStage,
                                 Thresholds, WorldStage, make_config, tiny_config)
from linkjax.demo.report import build_summary, quality_checks, write_report
from linkjax.demo.run import DONE, STAGES, QualityError, run_demo

__all__ = ["BUILTIN", "CounterfactualStage", "DONE", "DemoConfig", "PairsStage", "QualityError",
           "STAGES", "Thresholds", "WorldStage", "build_summary", "make_config",
           "quality_checks", "run_demo", "tiny_config", "write_report"]
