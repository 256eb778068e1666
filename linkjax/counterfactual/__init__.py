"""Counterfactual search in R (paper Sec. 3.3, 4.5, Fig. 7).

`search` (the batched search), `path` (decision boundary, frames, part metrics along a path),
`figures` (Fig. 7 panels and tables), `experiment` (the driver). The public names are
re-exported here.
"""

from linkjax.counterfactual.experiment import ExperimentConfig, run_experiment
from linkjax.counterfactual.figures import (plot_frames, plot_grad_cam, plot_metrics,
                                            plot_probability, write_pair_csv)
from linkjax.counterfactual.path import (PairAnalysis, analyse_pair, decision_boundary,
                                         frame_indices, image_distances, relative_part_metrics)
from linkjax.counterfactual.descent import (CHECK_MODES, SearchConfig, SearchFns, SearchResult,
                                           initial_shift, make_optimizer, pair_loss,
                                           reference_search, search, trajectory)
from linkjax.gradcam import grad_cam

__all__ = [
    "CHECK_MODES", "ExperimentConfig", "PairAnalysis", "SearchConfig", "SearchFns", "SearchResult",
    "analyse_pair", "decision_boundary", "frame_indices", "grad_cam", "image_distances",
    "initial_shift", "make_optimizer", "pair_loss", "plot_frames", "plot_grad_cam",
    "plot_metrics", "plot_probability", "reference_search", "relative_part_metrics",
    "run_experiment", "search", "trajectory", "write_pair_csv",
]
