"""The whole method end to end, on the built-in miniworld by default, with an HTML report.

Stages, in order (each in its own sub-directory of the output directory):

  world           built-in world only: classifier accuracy on held-out renders and on generated
                  images (psi 1), segmenter mean IoU against the renderer's masks, and the
                  ground-truth check of the part metrics (segmenter on G(z) vs true mask on the
                  render of the same (z, c)), on `quality_images` held-out samples.
  pairs           (w, r) pairs, keep='correct' (`linkjax.pairs.generate_pairs`, resumable).
  link            OLS link r -> w on a held-out split; held-out MSE vs the shuffled-pairs
                  baseline (`linkjax.link.fit_and_evaluate`).
  similarity      Fig. 3A: k-means ARI in W and R, RSA (`linkjax.similarity`).
  cycle           Fig. 3B/C: w -> I -> r -> f(r) -> I~ on held-out pairs (`linkjax.cycle`).
  sweep           every unit of R (default) over its range, regenerate, classify, segment,
                  measure (`linkjax.sweep.run_sweep`, resumable); image strips of the units with
                  the largest effects.
  units           Fig. 4/5: label sparsity, t-SNE, clustering, strips (`linkjax.unit_analysis`).
  relevance       Fig. 6: class-relevant units (`linkjax.unit_analysis.relevance_report`).
  counterfactual  Fig. 7: counterfactual search between two classes (`linkjax.counterfactual`).
  report          report.html (every figure, with a caption) and summary.json (key numbers).

Resumability: a stage writes its outputs, then `DONE.json` (its summary numbers and its wall and
CPU time) atomically; a rerun with the same settings skips every stage with a marker and resumes
the pair generation and the sweep from their shard files. The settings are stored in
`config.json`; a rerun with other settings is refused unless `overwrite=True`.

With `generator`/`classifier`/`segmenter` checkpoints (e.g. converted official ones) the identical
pipeline runs on them and the `world` stage, which needs the renderer, is skipped.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import pathlib
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from linkjax import rundir

WEIGHTS = pathlib.Path(__file__).resolve().parent / "miniworld" / "weights"
BUILTIN = {"generator": WEIGHTS / "generator", "classifier": WEIGHTS / "classifier",
           "segmenter": WEIGHTS / "segmenter"}
STAGES = ("world", "pairs", "link", "similarity", "cycle", "sweep", "units", "relevance",
          "counterfactual")
DONE = "DONE.json"
# Labels smaller than this (pixels at 128 x 128) count as absent in the reference's analysis.
REFERENCE_MIN_AREA = 20.0
CONFIG_FILE = "config.json"

# Quality thresholds of the built-in world (issue 7); checked by `--tiny` (and `check_quality`).
MIN_CLASSIFIER_ACC_RENDERS = 0.95
MIN_CLASSIFIER_ACC_GENERATED = 0.90
MIN_SEGMENTER_MIOU = 0.60
# "Far below the shuffled baseline": held-out MSE at most this fraction of the baseline's.
MAX_LINK_MSE_RATIO = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class Thresholds:
  """Quality thresholds (see the module constants); the link's is an upper bound."""
  classifier_accuracy_renders: float = MIN_CLASSIFIER_ACC_RENDERS
  classifier_accuracy_generated: float = MIN_CLASSIFIER_ACC_GENERATED
  segmenter_miou: float = MIN_SEGMENTER_MIOU
  link_mse_ratio: float = MAX_LINK_MSE_RATIO


class QualityError(RuntimeError):
  """A quality number of the built-in world is below its threshold."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
  """Settings of a demo run (flags of experiments/demo.py).

  Attributes:
    generator, classifier, segmenter: checkpoint directories; None = the built-in world's.
    classes: class indices to use (default: all classes of the built-in world; required with
      external checkpoints).
    class_names: optional display names, one per class in `classes`.
    seed: seed of every random choice (pairs, splits, sweeps, searches).
    psi: truncation of the pairs (the paper: 0.7).
    pairs_per_class: correctly classified pairs per class.
    pair_batch: draws per compiled pair-generation call.
    pair_max_draws: a class stops after pair_max_draws x pairs_per_class draws (bounds the time
      spent on a class the classifier rarely recognises in generated images).
    holdout: held-out fraction of the pairs for the link.
    link_model: 'ols' (the paper), 'ridge' or 'mlp'.
    link_alpha: ridge penalty.
    similarity_repeats: random draws for Fig. 3A.
    similarity_per_class: samples per class per draw.
    cycle_n: held-out pairs in the cycle evaluation.
    lpips: compute LPIPS in the cycle and counterfactual stages.
    sweep_units: units to sweep ('all', '0-99', '3,5,7').
    sweep_samples_per_class: base samples per class of the sweep.
    sweep_steps: values per unit (2 = the range's endpoints, which is all the label changes use).
    sweep_chunk: images per compiled sweep call.
    strip_units: units (largest label effects) whose image strips are shown.
    relevance_threshold: mean probability drop above which a unit is class-relevant.
    cf_orig, cf_target: counterfactual classes (default: the first two of `classes`).
    cf_pairs: samples of cf_orig searched.
    cf_max_steps: maximum gradient steps per search.
    cf_init_scale: initial shift ~ cf_init_scale * U[0, 1). None: 1.0 (the reference) on other
      models, 0.1 on the built-in world, whose r units are small (mean ~0.37), so the reference's
      U[0, 1) start would erase most of r before the first step.
    cf_check_every: steps per batched image check.
    cf_max_points: path points analysed per pair.
    quality_images: held-out samples of the world stage (accuracy on generated images, mIoU,
      ground truth).
    render_images: held-out renders for the classifier's accuracy.
    batch: images per compiled call in the world / cycle stages.
    check_quality: raise `QualityError` when a built-in world's quality number misses its
      threshold (the tiny CI run sets it).
    thresholds: the quality thresholds.
    world: the models are miniworld models (e.g. retrained ones given as checkpoints): run the
      ground-truth stage; None: only for the built-in checkpoints.
  """
  generator: str | None = None
  classifier: str | None = None
  segmenter: str | None = None
  classes: tuple[int, ...] | None = None
  class_names: tuple[str, ...] | None = None
  seed: int = 0
  psi: float = 0.7
  pairs_per_class: int = 300
  pair_batch: int = 50
  pair_max_draws: int = 4
  holdout: float = 0.1
  link_model: str = "ols"
  link_alpha: float = 1.0
  similarity_repeats: int = 20
  similarity_per_class: int = 50
  cycle_n: int = 100
  lpips: bool = True
  sweep_units: str = "all"
  sweep_samples_per_class: int = 2
  sweep_steps: int = 2
  sweep_chunk: int = 64
  strip_units: int = 4
  relevance_threshold: float = 0.15
  cf_orig: int | None = None
  cf_target: int | None = None
  cf_pairs: int = 6
  cf_max_steps: int = 300
  cf_check_every: int = 10
  cf_init_scale: float | None = None
  cf_max_points: int = 40
  quality_images: int = 200
  render_images: int = 1000
  batch: int = 50
  check_quality: bool = False
  thresholds: Thresholds = Thresholds()
  world: bool | None = None

  @property
  def builtin(self) -> bool:
    """Whether the models are the miniworld's (then the renderer gives ground truth)."""
    if self.world is not None:
      return self.world
    return self.generator is None and self.classifier is None and self.segmenter is None


def tiny_config(**overrides: Any) -> DemoConfig:
  """The CI preset: the same path with minimal sizes; asserts the built-in quality numbers."""
  base = dict(pairs_per_class=300, similarity_repeats=3, similarity_per_class=40, cycle_n=16,
              sweep_units="0-23", sweep_samples_per_class=1, sweep_steps=2, sweep_chunk=48,
              strip_units=1, cf_pairs=2, cf_max_steps=60, cf_max_points=12, quality_images=200,
              render_images=500, check_quality=True)
  base.update(overrides)
  return DemoConfig(**base)


# --------------------------------------------------------------------------------- plumbing


def _cpu_seconds() -> float:
  ru = resource.getrusage(resource.RUSAGE_SELF)
  return ru.ru_utime + ru.ru_stime


def _write_json(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
  os.replace(tmp, path)


def _json_default(x: Any) -> Any:
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.bool_):
    return bool(x)
  raise TypeError(f"not JSON-serialisable: {type(x)}")


def _clean(x: Any) -> Any:
  """JSON-safe copy: NaN -> None, numpy -> Python."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, np.ndarray):
    return _clean(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


class _Run:
  """Models, paths and stage bookkeeping of one demo run."""

  def __init__(self, cfg: DemoConfig, out: pathlib.Path, log: Callable[[str], None]):
    self.cfg = cfg
    self.out = out
    self.log = log
    self._models: dict[str, Any] = {}
    paths = {k: (getattr(cfg, k) or str(BUILTIN[k])) for k in BUILTIN}
    missing = [f"{k}: {p}" for k, p in paths.items() if not pathlib.Path(p).is_dir()]
    if missing:
      raise FileNotFoundError("model checkpoints not found: " + "; ".join(missing) + (
          " (the built-in world's weights ship in linkjax/miniworld/weights/; see README)"
          if cfg.builtin else ""))
    self.paths = paths

  def model(self, kind: str) -> Any:
    if kind not in self._models:
      from linkjax import checkpoint  # noqa: PLC0415
      self._models[kind] = checkpoint.load(self.paths[kind], role=kind)
    return self._models[kind]

  @property
  def classes(self) -> tuple[int, ...]:
    if self.cfg.classes is not None:
      return tuple(int(c) for c in self.cfg.classes)
    return tuple(range(int(self.model("generator").config.c_dim)))

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.cfg.class_names:
      return tuple(self.cfg.class_names)
    if self.cfg.builtin:
      from linkjax import miniworld  # noqa: PLC0415
      return tuple(miniworld.CLASS_NAMES[c] for c in self.classes)
    return tuple(f"class {c}" for c in self.classes)

  @property
  def min_area(self) -> float:
    """The analysis's 20 px minimum part area at 128 x 128, scaled to the segmenter's masks."""
    res = int(self.model("segmenter").config.resolution)
    return REFERENCE_MIN_AREA * (res / 128.0) ** 2

  @property
  def label_names(self) -> tuple[str, ...]:
    names = tuple(self.model("segmenter").config.label_names)
    if names:
      return names
    n = int(self.model("segmenter").config.n_labels)
    return ("background",) + tuple(f"label{i}" for i in range(1, n))

  def stage(self, name: str, fn: Callable[[pathlib.Path], dict[str, Any]]) -> dict[str, Any]:
    d = self.out / name
    marker = d / DONE
    if marker.exists():
      self.log(f"[{name}] already done, skipping (delete {marker} to redo it)")
      return json.loads(marker.read_text())
    d.mkdir(parents=True, exist_ok=True)
    self.log(f"[{name}] starting")
    t0, c0 = time.time(), _cpu_seconds()
    res = _clean(fn(d))
    res["_timing"] = {"wall_s": time.time() - t0, "cpu_s": _cpu_seconds() - c0}
    _write_json(marker, res)
    self.log(f"[{name}] done in {res['_timing']['wall_s']:.1f} s wall, "
             f"{res['_timing']['cpu_s']:.1f} s CPU")
    return res


# ---------------------------------------------------------------------------------- stages


def _stage_world(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  import jax  # noqa: PLC0415
  from linkjax.miniworld import groundtruth, train_classifier, train_segmenter  # noqa: PLC0415

  cfg = run.cfg
  gen, clf, seg = run.model("generator"), run.model("classifier"), run.model("segmenter")
  key = jax.random.key(cfg.seed)
  # Streams disjoint from the training runs' (they use fold_in 0..3 and 10 of their seeds' keys).
  acc_r = train_classifier.evaluate(clf, jax.random.fold_in(key, 101), cfg.render_images)
  run.log(f"[world] classifier accuracy on {acc_r['n']} held-out renders: "
          f"{acc_r['accuracy']:.4f}")
  z, c = groundtruth.heldout_latents(jax.random.fold_in(key, 102), cfg.quality_images,
                                     gen.config.z_dim)
  data = groundtruth.generate_and_segment(gen, seg, z, c, psi=1.0, batch=cfg.batch,
                                          classifier=clf)
  acc_g = float(np.mean(data["pred"] == c))
  per_class_g = [float(np.mean(data["pred"][c == k] == k)) for k in range(gen.config.c_dim)]
  run.log(f"[world] classifier accuracy on {len(c)} generated images (psi 1): {acc_g:.4f}")
  ious = train_segmenter.iou_summary(data["masks"], data["true_masks"], run.label_names)
  run.log(f"[world] segmenter mIoU {ious['miou']:.3f} (parts {ious['miou_parts']:.3f})")
  measured, true = groundtruth.paired_part_metrics(data, len(run.label_names), batch=cfg.batch)
  corr = groundtruth.metric_correlations(measured, true, min_area=run.min_area)
  parts = run.label_names[1:]
  groundtruth.scatter_grid(d / "groundtruth_scatter.png", measured, true, parts,
                           metrics=("area", "luminance"), min_area=run.min_area)
  _world_examples(d / "world_examples.png", data, len(run.label_names), run.class_names)
  from linkjax import quantify  # noqa: PLC0415
  corr_dict = {p: {m: corr["r"][i, j] for j, m in enumerate(quantify.METRIC_NAMES)
                   if m in groundtruth.GT_METRICS} for i, p in enumerate(parts)}
  for m in ("area", "luminance"):
    vals = [corr_dict[p][m] for p in parts if corr_dict[p][m] is not None
            and not math.isnan(corr_dict[p][m])]
    run.log(f"[world] ground truth: median r over parts, {m}: "
            f"{float(np.median(vals)) if vals else float('nan'):.3f}")
  np.savez(d / "groundtruth_metrics.npz", measured=measured, true=true, class_idx=c)
  return {"classifier_accuracy_renders": acc_r["accuracy"],
          "classifier_accuracy_renders_per_class": acc_r["per_class"],
          "classifier_accuracy_generated": acc_g,
          "classifier_accuracy_generated_per_class": per_class_g,
          "n_renders": acc_r["n"], "n_generated": len(c), "segmenter": ious,
          "groundtruth_correlation": corr_dict,
          "groundtruth_n": dict(zip(parts, corr["n"].tolist())), "min_area": run.min_area}


def _world_examples(path: pathlib.Path, data: dict[str, np.ndarray], n_labels: int,
                    class_names: Sequence[str], n: int = 5) -> None:
  """Rows: generated image, render of the same (z, c), segmenter mask, true mask."""
  from linkjax.models import segmenter as seg_lib  # noqa: PLC0415
  plt = _plt()
  colours = seg_lib.label_colors(n_labels)
  n = min(n, len(data["images"]))
  fig, axes = plt.subplots(4, n, figsize=(1.6 * n, 6.8), squeeze=False)
  rows = [("G(z, c), psi 1", lambda i: data["images"][i]),
          ("render(θ(z, c))", lambda i: data["true_images"][i]),
          ("segmenter", lambda i: colours[data["masks"][i]]),
          ("true mask", lambda i: colours[data["true_masks"][i]])]
  for r, (title, get) in enumerate(rows):
    for i in range(n):
      ax = axes[r, i]
      ax.imshow(get(i))
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(title, fontsize=8)
      if r == 0:
        ax.set_title(class_names[i % len(class_names)], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _stage_pairs(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import pairs  # noqa: PLC0415
  cfg = run.cfg
  pipe = pairs.model_pipeline(run.model("generator"), run.model("classifier"), cfg.psi)
  data = pairs.generate_pairs(pipe, d, classes=run.classes, n_per_class=cfg.pairs_per_class,
                              seed=cfg.seed, batch=cfg.pair_batch, keep="correct",
                              max_draws_per_class=cfg.pair_max_draws * cfg.pairs_per_class,
                              run_info={"generator": run.paths["generator"],
                                        "classifier": run.paths["classifier"], "psi": cfg.psi})
  summary = json.loads((d / pairs.SUMMARY_FILE).read_text())
  drawn = sum(v["drawn"] for v in summary["classes"].values())
  return {"n_pairs": int(len(data["w"])), "drawn": drawn,
          "acceptance_rate": len(data["w"]) / max(drawn, 1),
          "per_class": summary["classes"], "r_dim": int(data["r"].shape[1]),
          "w_dim": int(data["w"].shape[1])}


def _stage_link(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import link, pairs  # noqa: PLC0415
  cfg = run.cfg
  data = pairs.load(run.out / "pairs")
  params, metrics = link.fit_and_evaluate(data["r"], data["w"], model=cfg.link_model,
                                          alpha=cfg.link_alpha, holdout=cfg.holdout,
                                          seed=cfg.seed)
  metrics["pairs"] = str((run.out / "pairs").resolve())
  link.save(d / "link", params, metrics)
  metrics["mse_ratio_to_shuffled"] = metrics["test_mse"] / metrics["shuffled_mse"]
  run.log(f"[link] held-out MSE {metrics['test_mse']:.4g} vs shuffled {metrics['shuffled_mse']:.4g}"
          f" (ratio {metrics['mse_ratio_to_shuffled']:.3f}), R² {metrics['test_r2']:.3f}")
  return metrics


def _stage_similarity(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import pairs, similarity  # noqa: PLC0415
  cfg = run.cfg
  data = pairs.load(run.out / "pairs")
  present, counts = np.unique(data["class_idx"], return_counts=True)
  if present.size < 2:
    raise ValueError(f"similarity needs pairs of at least 2 classes, have {present.tolist()}")
  n_pc = int(min(cfg.similarity_per_class, counts.min()))
  conf = similarity.SimilarityConfig(repeats=cfg.similarity_repeats, n_classes=int(present.size),
                                     n_per_class=n_pc, seed=cfg.seed)
  res = similarity.w_r_similarity(data["w"], data["r"], data["class_idx"], conf)
  similarity.write_csv(d / "results.csv", res)
  similarity.box_plot(d / "similarity.png", res)
  out = {c: float(np.median(res[c])) for c in similarity.CSV_COLUMNS[1:]}
  out.update(repeats=cfg.similarity_repeats, n_per_class=n_pc, n_classes=int(present.size))
  run.log(f"[similarity] median ARI W {out['ari_w']:.3f}, R {out['ari_r']:.3f}; "
          f"RSA corr {out['rsa_corr']:.3f}, dist {out['rsa_dist']:.3f}")
  return out


def _stage_cycle(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import cycle, link, pairs  # noqa: PLC0415
  cfg = run.cfg
  data = pairs.load(run.out / "pairs")
  params, meta = link.load(run.out / "link" / "link")
  idx, source = cycle.heldout_indices(len(data["w"]), meta, cfg.cycle_n, cfg.seed)
  lpips_fn = cycle.default_lpips() if cfg.lpips else None
  res = cycle.cycle_eval(run.model("generator"), run.model("classifier"), params, data["w"][idx],
                         seed=cfg.seed, batch=16, lpips_fn=lpips_fn)
  summary = cycle.write_outputs(d, res, pair_idx=idx, class_idx=data["class_idx"][idx],
                                draw_idx=data["draw_idx"][idx],
                                info={"heldout_source": source}, n_show=6)
  _cycle_scatter(d / "cycle_scatter.png", res)
  m = summary["metrics"]
  run.log(f"[cycle] mse_w {m['mse_w']['mean']:.4g} vs baseline {m['mse_w_baseline']['mean']:.4g};"
          f" class kept {summary['class_kept_fraction']:.3f}")
  return summary


def _cycle_scatter(path: pathlib.Path, res: dict[str, np.ndarray]) -> None:
  """Per-sample distances of the cycle vs the random-pairs baseline (Fig. 3C style)."""
  plt = _plt()
  keys = [("mse_w", "mse_w_baseline", "MSE in W"),
          ("pixel_mse", "pixel_mse_baseline", "pixel MSE")]
  if not np.all(np.isnan(res["lpips"])):
    keys.append(("lpips", "lpips_baseline", "LPIPS"))
  fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3), squeeze=False)
  for ax, (a, b, title) in zip(axes[0], keys):
    ax.boxplot([res[a], res[b]])
    ax.set_xticks([1, 2], ["cycle (I, I~)", "random pairs"])
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _stage_sweep(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import link, pairs, sweep, unit_analysis  # noqa: PLC0415
  cfg = run.cfg
  data = pairs.load(run.out / "pairs")
  present = [c for c in run.classes if np.any(data["class_idx"] == c)]
  rows = sweep.select_samples(data["class_idx"], data["draw_idx"], cfg.sweep_samples_per_class,
                              present)
  r_samples = np.asarray(data["r"], np.float32)[rows]
  lo, hi = sweep.unit_ranges(r_samples)
  params, _ = link.load(run.out / "link" / "link")
  pipe = sweep.model_pipeline(params, run.model("generator"), run.model("classifier"),
                              run.model("segmenter"))
  units = sweep.parse_units(cfg.sweep_units, r_samples.shape[1])
  kw = dict(units=units, steps=cfg.sweep_steps, chunk=cfg.sweep_chunk, lo=lo, hi=hi,
            sample_ids=rows, classes=present, log_every_s=15.0)
  t0 = time.time()
  res = sweep.run_sweep(d, pipe, r_samples, data["class_idx"][rows], **kw)
  n_images = int(rows.size * units.size * cfg.sweep_steps)
  secs = time.time() - t0
  run.log(f"[sweep] {n_images} images in {secs:.1f} s ({n_images / max(secs, 1e-9):.1f} images/s)")
  # Strips of the units whose label-change vectors are largest (after normalising each metric).
  vec = unit_analysis.normalise_vectors(unit_analysis.unit_vectors(
      unit_analysis.label_changes(res["metrics"], run.min_area)))
  strength = vec.reshape(len(units), -1).sum(axis=1)
  top = [int(units[i]) for i in np.argsort(-strength)[:cfg.strip_units]]
  if top:
    sweep.run_sweep(d, pipe, r_samples, data["class_idx"][rows], save_strips_for=top,
                    strip_rows=min(len(present), 5), **kw)
  return {"n_units": int(units.size), "n_samples": int(rows.size), "steps": cfg.sweep_steps,
          "n_images": n_images, "seconds": secs, "images_per_s": n_images / max(secs, 1e-9),
          "strip_units": top}


def _stage_units(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import sweep, unit_analysis  # noqa: PLC0415
  arrays = sweep.load(run.out / "sweep")
  names = list(run.label_names[1:])
  res = unit_analysis.summarize_units(arrays, d, label_names=names, seed=run.cfg.seed,
                                      min_area=run.min_area)
  strips = unit_analysis.plot_strips(run.out / "sweep", arrays, d, label_names=names,
                                     min_area=run.min_area)
  sp = res["sparsity"]["overall"]
  strongest = res["strongest"]
  counts = {n: int(np.sum(strongest == i)) for i, n in enumerate(names)}
  counts["none"] = int(np.sum(strongest < 0))
  out = {"median_sparsity_all": float(np.median(sp[-1])),
         "median_sparsity_per_class": [float(np.median(s)) for s in sp[:-1]],
         "strongest_label_counts": counts, "strips": [p.name for p in strips]}
  run.log(f"[units] median Hoyer sparsity {out['median_sparsity_all']:.3f}; strongest labels "
          f"{counts}")
  return out


def _stage_relevance(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import sweep, unit_analysis  # noqa: PLC0415
  arrays = sweep.load(run.out / "sweep")
  rel = unit_analysis.relevance_report(arrays, d, threshold=run.cfg.relevance_threshold)
  counts = {str(int(c)): int(n) for c, n in zip(arrays["classes"], rel["counts"])}
  any_rel = int(np.any(rel["relevant"], axis=0).sum())
  run.log(f"[relevance] class-relevant units per class {counts}; {any_rel} relevant to any")
  return {"threshold": run.cfg.relevance_threshold, "relevant_per_class": counts,
          "relevant_any_class": any_rel, "n_units": int(len(arrays["units"])),
          "shared": rel["shared"], "intersections": [[list(k), n] for k, n in
                                                     rel["intersections"][:10]]}


def _stage_counterfactual(run: _Run, d: pathlib.Path) -> dict[str, Any]:
  from linkjax import counterfactual as cf  # noqa: PLC0415
  cfg = run.cfg
  from linkjax import pairs  # noqa: PLC0415
  present = [c for c in run.classes
             if np.any(pairs.load(run.out / "pairs")["class_idx"] == c)]
  orig = cfg.cf_orig if cfg.cf_orig is not None else present[0]
  target = cfg.cf_target if cfg.cf_target is not None else [c for c in run.classes
                                                            if c != orig][0]
  exp = cf.ExperimentConfig(
      pairs=str(run.out / "pairs"), link=str(run.out / "link" / "link"),
      generator=run.paths["generator"], classifier=run.paths["classifier"],
      segmenter=run.paths["segmenter"], out=str(d), orig_class=int(orig),
      target_class=int(target), n_samples=cfg.cf_pairs, seed=cfg.seed, n_frames=6,
      max_points=cfg.cf_max_points, lpips=cfg.lpips,
      init_scale=(cfg.cf_init_scale if cfg.cf_init_scale is not None
                  else (0.1 if cfg.builtin else 1.0)),
      search=cf.SearchConfig(max_steps=cfg.cf_max_steps, check_every=cfg.cf_check_every))
  summary = cf.run_experiment(exp)
  steps = [p["steps"] for p in summary["pairs"] if p["success"]]
  out = {"orig_class": int(orig), "target_class": int(target), "n_pairs": summary["n_pairs"],
         "success_rate": summary["success_rate"],
         "median_steps_successful": float(np.median(steps)) if steps else None,
         "mean_steps_successful": float(np.mean(steps)) if steps else None,
         "max_steps": cfg.cf_max_steps, "search_seconds": summary["search_seconds"],
         "mean_delta_norm": float(np.mean([p["delta_norm"] for p in summary["pairs"]]))}
  run.log(f"[counterfactual] {orig} -> {target}: success {out['success_rate']:.2f}, "
          f"median steps {out['median_steps_successful']}")
  return out


def _plt():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


# ---------------------------------------------------------------------------------- quality


def quality_checks(results: dict[str, dict[str, Any]],
                   thresholds: Thresholds = Thresholds()) -> dict[str, dict[str, Any]]:
  """The issue's quality numbers with their thresholds and whether each passes.

  Args:
    results: stage name -> stage summary (the world stage may be absent: external models).
    thresholds: the thresholds.
  Returns:
    {check: {'value', 'threshold', 'passed', 'higher_is_better'}}.
  """
  checks: dict[str, dict[str, Any]] = {}

  def add(name, value, threshold, higher=True):
    ok = value is not None and (value >= threshold if higher else value <= threshold)
    checks[name] = {"value": value, "threshold": threshold, "passed": bool(ok),
                    "higher_is_better": higher}

  world = results.get("world")
  if world is not None:
    add("classifier_accuracy_renders", world["classifier_accuracy_renders"],
        thresholds.classifier_accuracy_renders)
    add("classifier_accuracy_generated", world["classifier_accuracy_generated"],
        thresholds.classifier_accuracy_generated)
    add("segmenter_miou", world["segmenter"]["miou"], thresholds.segmenter_miou)
  if "link" in results:
    add("link_mse_ratio_to_shuffled", results["link"]["mse_ratio_to_shuffled"],
        thresholds.link_mse_ratio, higher=False)
  return checks


# ---------------------------------------------------------------------------------- report


def _figures(run: _Run, results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
  """(section title, relative image path, caption) for every figure, in report order."""
  out = run.out
  figs: list[tuple[str, str, str]] = []
  w = results.get("world")
  if w is not None:
    seg = w["segmenter"]
    figs.append(("The built-in world", "world/world_examples.png",
                 "Held-out samples of the miniature world, one per breed. Top to bottom: the "
                 "image the generator (the project's StyleGAN-XL at a tiny configuration) makes "
                 "for (z, c) without truncation; the procedural renderer's image for the same "
                 "(z, c), which the generator was trained to reproduce; the few-shot segmenter's "
                 "part mask of the generated image (trained on 5 labelled generated images per "
                 "breed); and the renderer's exact part mask. On these "
                 f"{w['n_generated']} held-out images the segmenter reaches a mean IoU of "
                 f"{seg['miou']:.3f} against the true masks (parts only {seg['miou_parts']:.3f}); "
                 f"the classifier is {100 * w['classifier_accuracy_renders']:.1f}% accurate on "
                 f"held-out renders and {100 * w['classifier_accuracy_generated']:.1f}% on the "
                 "generated images."))
    figs.append(("Ground truth: can the part metrics be trusted?",
                 "world/groundtruth_scatter.png",
                 "Each panel compares, over held-out samples, a part metric measured the way the "
                 "method measures it (the segmenter's mask on the generated image) with the same "
                 "metric on the rendered counterpart with its true mask (x axis); top row area "
                 "in pixels, bottom row mean luminance. The diagonal is perfect agreement and "
                 "r is the Pearson correlation. Parts with high r can be quantified reliably; "
                 "low r (typically the tiny parts: eye, nose, tongue) means that changes "
                 "reported for that part in the sweeps are dominated by segmentation noise."))
  if "similarity" in results:
    s = results["similarity"]
    figs.append(("Fig. 3A: W and R organise the samples similarly", "similarity/similarity.png",
                 f"Left: adjusted Rand index between k-means clusters (k = number of classes) "
                 f"and the class labels, computed in the generator's W space and in the "
                 f"classifier's R space over {s['repeats']} random draws of {s['n_per_class']} "
                 f"pairs per class (1 = the clusters are the classes). Right: representational "
                 f"similarity analysis, the Pearson correlation between the sample-by-sample "
                 f"similarity (correlation) and distance (Euclidean) matrices of W and R. Median "
                 f"ARI W {s['ari_w']:.2f}, R {s['ari_r']:.2f}; median RSA {s['rsa_corr']:.2f} "
                 f"(correlation), {s['rsa_dist']:.2f} (distance)."))
  if "cycle" in results:
    c = results["cycle"]
    m = c["metrics"]
    figs.append(("Fig. 3B: cycle w → I → r → f(r) → I~", "cycle/pairs.png",
                 "Held-out pairs (not used to fit the link): left the image generated from the "
                 "pair's w, right the image generated from f(r), the link's prediction from the "
                 "classifier's representation r of the left image. If the link captures what "
                 "the classifier sees, the two look alike. Fraction of regenerated images "
                 f"classified as the original class: {c['class_kept_fraction']:.2f}."))
    figs.append(("Fig. 3C: cycle distances vs random pairs", "cycle/cycle_scatter.png",
                 "Distances between w and the regenerated w~ (MSE in W), and between I and I~ "
                 "(pixel MSE, and LPIPS when available), for the held-out cycle (left box of "
                 "each panel) and for random pairings of the same samples (right box, the "
                 f"chance level). Mean MSE in W {m['mse_w']['mean']:.4g} vs "
                 f"{m['mse_w_baseline']['mean']:.4g} for random pairs."))
  if "units" in results:
    u = results["units"]
    figs.append(("Fig. 5A: label sparsity of units", "units/sparsity_hist.png",
                 "For every swept unit of R (the unit is set across its range, from the "
                 "minimum to the maximum over the base samples, every other unit unchanged, and "
                 "the image regenerated through the link and segmented), the median over "
                 "samples of the absolute change from first to last value of 5 metrics (area, luminance, "
                 "entropy, eccentricity, angle) of each of the 9 parts gives a 45-vector; the "
                 "histograms show its Hoyer sparsity per class and over all samples (1 = the "
                 "unit changes a single metric of a single part, 0 = everything equally). "
                 f"Median over units: {u['median_sparsity_all']:.2f}."))
    figs.append(("Fig. 5B: t-SNE of units", "units/tsne.png",
                 "t-SNE embedding of the units' label-change vectors (each metric scaled by its "
                 "RMS over units), coloured by the part each unit changes most. Units that "
                 "group together change the same parts in the same ways."))
    figs.append(("Fig. 5C: clustering of units", "units/clusters.png",
                 "Ward hierarchical clustering of the units' label-change vectors (dendrogram) "
                 "and the vectors as a heat map in dendrogram order (rows: part:metric). "
                 "Blocks show groups of units that control the same part attributes."))
    for p in u.get("strips", []):
      unit = p.split("_")[-1].split(".")[0]
      figs.append((f"Fig. 4: unit {int(unit)}", f"units/{p}",
                   f"Sweep of unit {int(unit)}, one of the units with the largest effect on the "
                   "parts: each row a base sample (one per class), columns the unit set to the "
                   "values in the titles (the minimum and maximum over the base samples), every "
                   "other unit unchanged; right: the unit's median absolute change of area, "
                   "luminance and entropy of each part, relative to the largest over units."))
  if "relevance" in results:
    r = results["relevance"]
    thr = r["threshold"]
    figs.append(("Fig. 6A: class relevance", "relevance/delta_p_hist.png",
                 "Per class, the distribution over units of the mean drop of the class's "
                 "probability when the unit is swept (probability on the unperturbed regenerated "
                 f"image minus the minimum over the sweep). Units right of the dashed line "
                 f"(Δp > {thr:g}) are class-relevant. Counts per class: "
                 f"{r['relevant_per_class']}."))
    figs.append(("Fig. 6B: shared class-relevant units", "relevance/relevant.png",
                 "Left: number of class-relevant units per class. Middle: units relevant to "
                 "both classes of a pair. Right: units relevant to exactly the marked set of "
                 "classes (largest sets first): mostly class-specific units, with some shared "
                 f"by similar classes. {r['relevant_any_class']} of {r['n_units']} units are "
                 "relevant to at least one class."))
    figs.append(("Fig. 6C: correlation of relevance", "relevance/correlation.png",
                 "Pearson correlation between classes of the per-unit mean probability drop: "
                 "classes that depend on the same units correlate."))
  if "counterfactual" in results:
    c = results["counterfactual"]
    o, t = c["orig_class"], c["target_class"]
    on, tn = (run.class_names[run.classes.index(o)] if o in run.classes else str(o),
              run.class_names[run.classes.index(t)] if t in run.classes else str(t))
    sr = c["success_rate"]
    ms = c["median_steps_successful"]
    for i in range(min(2, c["n_pairs"])):
      figs.append((f"Fig. 7: counterfactual {on} → {tn}, sample {i}",
                   f"counterfactual/pair{i}_frames.png",
                   f"Gradient descent in R moves the representation of an image of class {o} "
                   f"({on}) until the image generated from the linked latent is classified as "
                   f"class {t} ({tn}); frames along the path (frame colour: blue = original "
                   f"class, orange = target, grey = other; p = target probability). "
                   f"{100 * sr:.0f}% of {c['n_pairs']} searches succeeded"
                   + (f", in a median of {ms:g} steps." if ms is not None else ".")))
      figs.append((f"Fig. 7: probabilities along the path, sample {i}",
                   f"counterfactual/pair{i}_probability.png",
                   "Probabilities of the original and target classes along the search path; "
                   "the dashed line is the decision boundary (first step whose image changes "
                   "class)."))
      figs.append((f"Fig. 7: what changes, sample {i}", f"counterfactual/pair{i}_metrics.png",
                   "Distance of the images along the path to the original image, and the part "
                   "metrics of the segmented images relative to the original: which parts the "
                   "classifier's decision depends on."))
      figs.append((f"Fig. 7: Grad-CAM, sample {i}", f"counterfactual/pair{i}_gradcam.png",
                   "Grad-CAM maps of the classifier (last stage) for the original class on the "
                   "original image, and for the target and original classes on the "
                   "counterfactual image."))
  return [(t, p, c) for t, p, c in figs if (out / p).exists()]


def _number_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
  def f(x, fmt="{:.4g}"):
    return "n/a" if x is None else fmt.format(x)
  rows = []
  q = summary.get("quality_checks", {})
  for k, v in q.items():
    rows.append((k, f"{f(v['value'])} (threshold {'≥' if v['higher_is_better'] else '≤'} "
                    f"{v['threshold']}: {'pass' if v['passed'] else 'FAIL'})"))
  for k in ("segmenter_miou_parts", "n_pairs", "pair_acceptance_rate", "link_test_mse",
            "link_shuffled_mse", "link_test_r2", "ari_w", "ari_r", "rsa_corr", "rsa_dist",
            "cycle_mse_w_ratio_to_baseline", "cycle_class_kept_fraction", "cycle_lpips",
            "cycle_lpips_baseline", "n_units_swept", "median_unit_sparsity",
            "class_relevant_units_any", "counterfactual_success_rate",
            "counterfactual_median_steps", "total_wall_s", "total_cpu_s"):
    if k in summary:
      rows.append((k, f(summary[k])))
  return rows


def write_report(run: _Run, results: dict[str, dict[str, Any]],
                 summary: dict[str, Any]) -> pathlib.Path:
  """Writes report.html (figures with captions, key numbers) and returns its path."""
  figs = _figures(run, results)
  parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           "<title>linkjax demo report</title>",
           "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
           "img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}"
           "figcaption{font-size:0.9em;color:#333}td{padding:2px 8px}</style></head><body>",
           "<h1>Linking in Style: demo report</h1>",
           f"<p>Models: {'the built-in miniature world' if run.cfg.builtin else 'external checkpoints'}"
           f" (generator {html.escape(run.paths['generator'])}, classifier "
           f"{html.escape(run.paths['classifier'])}, segmenter "
           f"{html.escape(run.paths['segmenter'])}). Classes: "
           + html.escape(", ".join(f"{c} = {n}" for c, n in zip(run.classes, run.class_names)))
           + ".</p>"]
  if "pairs" in results:
    per = results["pairs"]["per_class"]
    missing = [c for c, v in per.items() if not v["accepted"]]
    parts.append("<p>Correctly classified pairs per class (accepted / drawn): " + html.escape(
        ", ".join(f"{c}: {v['accepted']}/{v['drawn']}" for c, v in per.items())) + "."
        + (html.escape(f" Class(es) {', '.join(missing)} have no correctly classified generated "
                       "image and are left out of the similarity, sweep, relevance and "
                       "counterfactual analyses.") if missing else "") + "</p>")
  parts.append("<h2>Key numbers</h2><table>")
  for k, v in _number_rows(summary):
    parts.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>")
  parts.append("</table><p>All numbers are in summary.json.</p>")
  for title, path, caption in figs:
    parts.append(f"<figure><h2>{html.escape(title)}</h2><img src='{html.escape(path)}' "
                 f"alt='{html.escape(title)}'><figcaption>{html.escape(caption)}</figcaption>"
                 "</figure>")
  parts.append("</body></html>")
  path = run.out / "report.html"
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("\n".join(parts))
  os.replace(tmp, path)
  return path


def build_summary(run: _Run, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The key numbers of a run (summary.json)."""
  s: dict[str, Any] = {"builtin_world": run.cfg.builtin, "classes": list(run.classes),
                       "class_names": list(run.class_names), "models": run.paths}
  w = results.get("world")
  if w is not None:
    s.update(classifier_accuracy_renders=w["classifier_accuracy_renders"],
             classifier_accuracy_generated=w["classifier_accuracy_generated"],
             segmenter_miou=w["segmenter"]["miou"],
             segmenter_miou_parts=w["segmenter"]["miou_parts"],
             segmenter_iou_per_label=w["segmenter"]["iou"],
             groundtruth_correlation=w["groundtruth_correlation"])
  p = results.get("pairs")
  if p:
    s.update(n_pairs=p["n_pairs"], pair_acceptance_rate=p["acceptance_rate"])
  lk = results.get("link")
  if lk:
    s.update(link_model=lk["model"], link_test_mse=lk["test_mse"],
             link_shuffled_mse=lk["shuffled_mse"], link_mse_ratio=lk["mse_ratio_to_shuffled"],
             link_test_r2=lk["test_r2"], link_train_mse=lk["train_mse"])
  sim = results.get("similarity")
  if sim:
    s.update({k: sim[k] for k in ("ari_w", "ari_r", "rsa_corr", "rsa_dist")})
  cy = results.get("cycle")
  if cy:
    m = cy["metrics"]
    s.update(cycle_mse_w=m["mse_w"]["mean"], cycle_mse_w_baseline=m["mse_w_baseline"]["mean"],
             cycle_mse_w_ratio_to_baseline=cy["mse_w_ratio_to_baseline"],
             cycle_pixel_mse=m["pixel_mse"]["mean"],
             cycle_pixel_mse_baseline=m["pixel_mse_baseline"]["mean"],
             cycle_lpips=m["lpips"]["mean"], cycle_lpips_baseline=m["lpips_baseline"]["mean"],
             cycle_class_kept_fraction=cy["class_kept_fraction"])
  sw = results.get("sweep")
  if sw:
    s.update(n_units_swept=sw["n_units"], sweep_images=sw["n_images"],
             sweep_images_per_s=sw["images_per_s"])
  un = results.get("units")
  if un:
    s.update(median_unit_sparsity=un["median_sparsity_all"],
             strongest_label_counts=un["strongest_label_counts"])
  rel = results.get("relevance")
  if rel:
    s.update(class_relevant_units=rel["relevant_per_class"],
             class_relevant_units_any=rel["relevant_any_class"],
             relevance_threshold=rel["threshold"])
  cf = results.get("counterfactual")
  if cf:
    s.update(counterfactual_classes=[cf["orig_class"], cf["target_class"]],
             counterfactual_success_rate=cf["success_rate"],
             counterfactual_median_steps=cf["median_steps_successful"],
             counterfactual_mean_steps=cf["mean_steps_successful"])
  s["stage_timing"] = {k: v.get("_timing") for k, v in results.items()}
  s["total_wall_s"] = float(sum(v["_timing"]["wall_s"] for v in results.values()))
  s["total_cpu_s"] = float(sum(v["_timing"]["cpu_s"] for v in results.values()))
  s["quality_checks"] = quality_checks(results, run.cfg.thresholds)
  return _clean(s)


_STAGE_FNS = {"world": _stage_world, "pairs": _stage_pairs, "link": _stage_link,
              "similarity": _stage_similarity, "cycle": _stage_cycle, "sweep": _stage_sweep,
              "units": _stage_units, "relevance": _stage_relevance,
              "counterfactual": _stage_counterfactual}


# Settings that do not change any stage's outputs (a finished run can be re-checked with others).
_NOT_RECORDED = ("check_quality", "thresholds")


def _config_record(cfg: DemoConfig) -> dict[str, Any]:
  rec = json.loads(json.dumps(dataclasses.asdict(cfg)))
  return {k: v for k, v in rec.items() if k not in _NOT_RECORDED}


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
             log: Callable[[str], None] = logging.info) -> dict[str, Any]:
  """Runs every stage (skipping finished ones), writes report.html and summary.json.

  Args:
    cfg: the run's settings.
    out_dir: output directory (created).
    overwrite: delete an existing run with other settings in `out_dir` instead of refusing.
    log: progress sink.
  Returns:
    The summary dict (summary.json).
  Raises:
    QualityError: `cfg.check_quality` and a quality number misses its threshold.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  record = _config_record(cfg)
  cfg_path = out / CONFIG_FILE
  if rundir.must_overwrite(cfg_path, record, overwrite=overwrite, what="a demo run",
                           differ="other settings"):
    log(f"overwriting the previous run in {out}")
    for name in (*STAGES, "report.html", "summary.json"):
      p = out / name
      if p.is_dir():
        shutil.rmtree(p)
      elif p.exists():
        p.unlink()
  _write_json(cfg_path, record)
  run = _Run(cfg, out, log)
  t0, c0 = time.time(), _cpu_seconds()
  results: dict[str, dict[str, Any]] = {}
  for name in STAGES:
    if name == "world" and not cfg.builtin:
      log("[world] skipped: external checkpoints have no renderer ground truth")
      continue
    results[name] = run.stage(name, lambda d, n=name: _STAGE_FNS[n](run, d))
  summary = build_summary(run, results)
  summary["this_process"] = {"wall_s": time.time() - t0, "cpu_s": _cpu_seconds() - c0}
  _write_json(out / "summary.json", summary)
  report = write_report(run, results, summary)
  log(f"wrote {report} and {out / 'summary.json'} (stages {summary['total_wall_s']:.0f} s wall, "
      f"{summary['total_cpu_s']:.0f} s CPU in total; this process "
      f"{summary['this_process']['wall_s']:.0f} s)")
  failed = {k: v for k, v in summary["quality_checks"].items() if not v["passed"]}
  for k, v in summary["quality_checks"].items():
    log(f"quality {k}: {v['value']} (threshold {v['threshold']}) "
        f"{'pass' if v['passed'] else 'FAIL'}")
  if cfg.check_quality and failed:
    raise QualityError("quality checks failed: " + "; ".join(
        f"{k} = {v['value']} (threshold {v['threshold']})" for k, v in failed.items()))
  return summary
