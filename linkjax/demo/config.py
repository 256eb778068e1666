"""Settings of a demo run: the library's own config dataclasses, nested, plus the demo's few.

`seed` is the seed of every random choice; it overrides the seeds of the nested configs.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

from linkjax import cycle, link, similarity, sweep, unit_report
from linkjax.counterfactual import descent

WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "miniworld" / "weights"
BUILTIN = {"generator": WEIGHTS / "generator", "classifier": WEIGHTS / "classifier",
           "segmenter": WEIGHTS / "segmenter"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Thresholds:
  """Quality thresholds of the built-in world (the link's is an upper bound)."""
  classifier_accuracy_renders: float = 0.95
  classifier_accuracy_generated: float = 0.90
  segmenter_miou: float = 0.60
  # "Far below the shuffled baseline": held-out MSE at most this fraction of the baseline's.
  link_mse_ratio: float = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldStage:
  """The ground-truth checks of a miniworld.

  Attributes:
    quality_images: held-out generated images (accuracy on generated images, mIoU, ground
      truth of the part metrics).
    render_images: held-out renders for the classifier's accuracy.
    batch: images per compiled call.
  """
  quality_images: int = 200
  render_images: int = 1000
  batch: int = 50


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairsStage:
  """Pair generation (classes come from the run).

  Attributes:
    per_class: correctly classified pairs per class.
    batch: draws per compiled call.
    max_draws: a class stops after max_draws x per_class draws.
    psi: truncation (the paper: 0.7).
  """
  per_class: int = 300
  batch: int = 50
  max_draws: int = 4
  psi: float = 0.7

  def __post_init__(self):
    if not math.isfinite(self.psi):
      raise ValueError(f"psi must be finite, got {self.psi}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CounterfactualStage:
  """The counterfactual search between two classes.

  Attributes:
    orig, target: classes (None: the first class with pairs, and the next class).
    pairs: samples of `orig` searched.
    max_steps: maximum gradient steps per search.
    check_every: steps per batched image check.
    check_mode: the search's image check (`descent.SearchConfig.check_mode`). 'head' renders only
      the iterates the screen passes; on the built-in world's demo searches (classes 0 -> 1, 6
      pairs, seed 0) it stops at the same steps as 'window' (every iterate rendered) with fewer
      images (benchmarks/counterfactual_speed.py).
    init_scale: initial shift ~ init_scale * U[0, 1); None: 1.0 (the reference) on other
      models, 0.1 on a miniworld, whose r units are small (mean ~0.37), so the reference's
      U[0, 1) start would erase most of r before the first step.
    max_points: path points analysed per pair.
    n_frames: frames per path.
  """
  orig: int | None = None
  target: int | None = None
  pairs: int = 6
  max_steps: int = 300
  check_every: int = 10
  check_mode: str = "head"
  init_scale: float | None = None
  max_points: int = 40
  n_frames: int = 6

  def search(self) -> descent.SearchConfig:
    return descent.SearchConfig(max_steps=self.max_steps, check_every=self.check_every,
                                check_mode=self.check_mode)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
  """Settings of a demo run (flags of experiments/demo.py).

  Attributes:
    generator, classifier, segmenter: checkpoint directories; None = the built-in world's.
    classes: class indices (default: every class of the generator; required with external
      checkpoints).
    class_names: optional display names, one per class in `classes`.
    world: the models are miniworld models (the renderer gives ground truth); None: only for
      the built-in checkpoints.
    seed: seed of every random choice (overrides the nested configs' seeds).
    lpips: compute LPIPS in the cycle and counterfactual stages.
    world_stage, pairs, link, similarity, cycle, sweep, units, counterfactual: the stages'
      settings (the library's configs).
    relevance_threshold: mean probability drop above which a unit is class-relevant.
    check_quality: raise `QualityError` when a miniworld's quality number misses its threshold.
    thresholds: the quality thresholds.
  """
  generator: str | None = None
  classifier: str | None = None
  segmenter: str | None = None
  classes: tuple[int, ...] | None = None
  class_names: tuple[str, ...] | None = None
  world: bool | None = None
  seed: int = 0
  lpips: bool = True
  world_stage: WorldStage = WorldStage()
  pairs: PairsStage = PairsStage()
  link: link.LinkConfig = link.LinkConfig()
  similarity: similarity.SimilarityConfig = similarity.SimilarityConfig(repeats=20,
                                                                       n_per_class=50)
  cycle: cycle.CycleConfig = cycle.CycleConfig(n=100, n_show=6)
  sweep: sweep.SweepConfig = sweep.SweepConfig(samples_per_class=2, steps=2, strip_top=4,
                                               strip_rows=5)
  units: unit_report.UnitsConfig = unit_report.UnitsConfig()
  relevance_threshold: float = 0.15
  counterfactual: CounterfactualStage = CounterfactualStage()
  check_quality: bool = False
  thresholds: Thresholds = Thresholds()

  def __post_init__(self):
    if self.class_names is not None and self.classes is not None and \
       len(self.class_names) != len(self.classes):
      raise ValueError(f"{len(self.class_names)} class names for {len(self.classes)} classes")
    external = any(getattr(self, k) is not None for k in BUILTIN)
    if external and self.classes is None and not self.world:
      raise ValueError("external models need classes")

  @property
  def shipped(self) -> bool:
    """Whether the models are the shipped miniworld's."""
    return all(getattr(self, k) is None for k in BUILTIN)

  @property
  def miniworld(self) -> bool:
    """Whether the models are miniworld models (the renderer gives ground truth)."""
    return self.shipped if self.world is None else bool(self.world)

  def paths(self) -> dict[str, str]:
    return {k: str(getattr(self, k) or BUILTIN[k]) for k in BUILTIN}


# Settings that do not change any stage's outputs (a finished run can be re-checked with others).
NOT_RECORDED = ("check_quality", "thresholds")


def record(cfg: DemoConfig) -> dict[str, Any]:
  """The run's identity: every setting that changes an output."""
  rec = dataclasses.asdict(cfg)
  return {k: v for k, v in rec.items() if k not in NOT_RECORDED}


def tiny_config(**overrides: Any) -> DemoConfig:
  """The CI preset: the same path with minimal sizes; asserts the built-in quality numbers.

  Args:
    **overrides: DemoConfig fields; nested settings as `{'sweep': {'units': '0-9'}}` merge
      into the preset's.
  """
  base: dict[str, Any] = {
      "pairs": {"per_class": 300},
      "similarity": {"repeats": 3, "n_per_class": 40},
      "cycle": {"n": 16},
      "sweep": {"units": "0-23", "samples_per_class": 1, "steps": 2, "chunk": 48,
                "strip_top": 1},
      "counterfactual": {"pairs": 2, "max_steps": 60, "max_points": 12},
      "world_stage": {"quality_images": 200, "render_images": 500},
      "check_quality": True,
  }
  for k, v in overrides.items():
    if isinstance(v, dict) and isinstance(base.get(k), dict):
      base[k] = {**base[k], **v}
    else:
      base[k] = v
  return make_config(**base)


def make_config(**fields: Any) -> DemoConfig:
  """A DemoConfig from fields where nested settings may be given as dicts of overrides."""
  defaults = DemoConfig(classes=(0,))  # any valid instance, for the nested defaults
  out = {}
  for k, v in fields.items():
    if isinstance(v, dict):
      out[k] = dataclasses.replace(getattr(defaults, k), **v)
    else:
      out[k] = v
  return DemoConfig(**out)
