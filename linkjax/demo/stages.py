"""The demo's stages: each calls the library driver its `experiments/*` binary calls.

A stage takes the run context and its directory and returns a JSON-able summary (which the run
stores in the stage's DONE.json).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from linkjax import bundle as bundle_lib
from linkjax import (cycle, figures, files, link, masks, motion, pairs, quantify, similarity,
                     sweep, sweep_motion, unit_report)
from linkjax import counterfactual as cf
from linkjax import miniworld
from linkjax.demo.config import DemoConfig
from linkjax.miniworld import groundtruth, train_classifier, train_segmenter
from linkjax.miniworld import motion_check as mc
from linkjax.miniworld import validate as validate_lib
from linkjax.unit_analysis import min_area_for


class Context:
  """Models, paths and the classes of one demo run."""

  def __init__(self, cfg: DemoConfig, out: pathlib.Path, log: Callable[[str], None]):
    self.cfg = cfg
    self.out = out
    self.log = log
    self.paths = cfg.paths()
    missing = [f"{k}: {p}" for k, p in self.paths.items() if not pathlib.Path(p).is_dir()]
    if missing:
      raise FileNotFoundError("model checkpoints not found: " + "; ".join(missing) + (
          " (the built-in world's weights ship in linkjax/miniworld/weights/; see README)"
          if cfg.shipped else ""))
    self._bundle: tuple[bundle_lib.ModelBundle, Any] | None = None
    # The classifier's planted (unit, parameter) map (its metrics.json), read once; () for none.
    self.planted: tuple[tuple[int, str], ...] = validate_lib.read_planted(self.paths["classifier"])

  @property
  def models(self) -> tuple[bundle_lib.ModelBundle, Any]:
    """(bundle, params) of generator, classifier and segmenter (loaded once)."""
    if self._bundle is None:
      self._bundle = bundle_lib.ModelBundle.load(**self.paths)
    return self._bundle

  def with_link(self) -> tuple[bundle_lib.ModelBundle, Any]:
    """The bundle and its params with the link fitted by the link stage."""
    models, params = self.models
    link_params, _ = link.load(self.link_dir)
    return models, {**params, "link": jax.tree.map(np.asarray, link_params)}

  @property
  def pairs_dir(self) -> pathlib.Path:
    return self.out / "pairs"

  @property
  def link_dir(self) -> pathlib.Path:
    return self.out / "link" / "link"

  @property
  def sweep_dir(self) -> pathlib.Path:
    return self.out / "sweep"

  @property
  def classes(self) -> tuple[int, ...]:
    if self.cfg.classes is not None:
      return tuple(int(c) for c in self.cfg.classes)
    return tuple(range(int(self.models[0].generator_config.c_dim)))

  @property
  def class_names(self) -> tuple[str, ...]:
    if self.cfg.class_names:
      return tuple(self.cfg.class_names)
    if self.cfg.miniworld:
      return tuple(miniworld.CLASS_NAMES[c] for c in self.classes)
    return tuple(f"class {c}" for c in self.classes)

  def present_classes(self) -> list[int]:
    """The run's classes that have pairs (a class the classifier never recognises has none)."""
    class_idx = pairs.load(self.pairs_dir)["class_idx"]
    return [c for c in self.classes if np.any(class_idx == c)]

  @property
  def min_area(self) -> float:
    return min_area_for(self.models[0].mask_resolution, self.cfg.units.min_area)


def world(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  """Ground truth of a miniworld: accuracies, segmenter IoU, part metrics vs the renderer."""
  cfg, ws = ctx.cfg, ctx.cfg.world_stage
  models, params = ctx.models
  key = jax.random.key(cfg.seed)
  # Streams disjoint from the training runs' (they use fold_in 0..3 and 10 of their seeds' keys).
  acc_r = train_classifier.evaluate(models.classifier_model(params), jax.random.fold_in(key, 101),
                                    ws.render_images)
  ctx.log(f"[world] classifier accuracy on {acc_r['n']} held-out renders: "
          f"{acc_r['accuracy']:.4f}")
  z, c = groundtruth.heldout_latents(jax.random.fold_in(key, 102), ws.quality_images,
                                     models.z_dim)
  data = groundtruth.generate_and_segment(models, params, z, c, psi=1.0, batch=ws.batch)
  acc_g = float(np.mean(data["pred"] == c))
  n_classes = int(models.generator_config.c_dim)
  per_class_g = [float(np.mean(data["pred"][c == k] == k)) for k in range(n_classes)]
  ctx.log(f"[world] classifier accuracy on {len(c)} generated images (psi 1): {acc_g:.4f}")
  names = models.label_names
  ious = train_segmenter.iou_summary(data["masks"], data["true_masks"], names)
  ctx.log(f"[world] segmenter mIoU {ious['miou']:.3f} (parts {ious['miou_parts']:.3f})")
  measured, true = groundtruth.paired_part_metrics(data, len(names), batch=ws.batch)
  corr = groundtruth.metric_correlations(measured, true, min_area=ctx.min_area)
  parts = names[1:]
  groundtruth.scatter_grid(d / "groundtruth_scatter.png", measured, true, parts,
                           metrics=("area", "luminance"), min_area=ctx.min_area)
  _world_examples(d / "world_examples.png", data, len(names), ctx.class_names)
  corr_dict = {p: {m: corr["r"][i, j] for j, m in enumerate(quantify.METRIC_NAMES)
                   if m in groundtruth.GT_METRICS} for i, p in enumerate(parts)}
  for m in ("area", "luminance"):
    vals = [corr_dict[p][m] for p in parts if not math.isnan(corr_dict[p][m])]
    ctx.log(f"[world] ground truth: median r over parts, {m}: "
            f"{float(np.median(vals)) if vals else float('nan'):.3f}")
  files.write_npz(d / "groundtruth_metrics.npz", {"measured": measured, "true": true,
                                                  "class_idx": c})
  return {"classifier_accuracy_renders": acc_r["accuracy"],
          "classifier_accuracy_renders_per_class": acc_r["per_class"],
          "classifier_accuracy_generated": acc_g,
          "classifier_accuracy_generated_per_class": per_class_g,
          "n_renders": acc_r["n"], "n_generated": len(c), "segmenter": ious,
          "groundtruth_correlation": files.json_safe(corr_dict),
          "groundtruth_n": dict(zip(parts, corr["n"].tolist())), "min_area": ctx.min_area}


def _world_examples(path: pathlib.Path, data: dict[str, np.ndarray], n_labels: int,
                    class_names: tuple[str, ...], n: int = 5) -> None:
  """Rows: generated image, render of the same (z, c), segmenter mask, true mask."""
  colours = masks.label_colors(n_labels)
  n = min(n, len(data["images"]))
  fig, axes = figures.subplots(4, n, figsize=(1.6 * n, 6.8), squeeze=False)
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
  figures.save(fig, path)


def make_pairs(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  p = ctx.cfg.pairs
  models, params = ctx.models
  config = pairs.PairConfig(classes=ctx.classes, n_per_class=p.per_class, seed=ctx.cfg.seed,
                            batch=p.batch, psi=p.psi, keep="correct",
                            max_draws_per_class=p.max_draws * p.per_class)
  data = pairs.generate_pairs(models, params, d, config,
                              run_info={k: ctx.paths[k] for k in ("generator", "classifier")})
  summary = pairs.load_summary(d)
  drawn = sum(v["drawn"] for v in summary["classes"].values())
  return {"n_pairs": int(len(data["w"])), "drawn": drawn,
          "acceptance_rate": len(data["w"]) / max(drawn, 1),
          "per_class": summary["classes"], "r_dim": int(data["r"].shape[1]),
          "w_dim": int(data["w"].shape[1])}


def fit_link(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  metrics = link.fit_from_pairs(ctx.pairs_dir, d / "link",
                                dataclasses.replace(ctx.cfg.link, seed=ctx.cfg.seed))
  ctx.log(f"[link] held-out MSE {metrics['test_mse']:.4g} vs shuffled "
          f"{metrics['shuffled_mse']:.4g} (ratio {metrics['mse_ratio_to_shuffled']:.3f}), "
          f"R² {metrics['test_r2']:.3f}")
  return metrics


def w_r_similarity(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  config = dataclasses.replace(ctx.cfg.similarity, seed=ctx.cfg.seed,
                               n_classes=len(ctx.present_classes()))
  out = similarity.run(ctx.pairs_dir, d, config)
  ctx.log(f"[similarity] median ARI W {out['ari_w']:.3f}, R {out['ari_r']:.3f}; "
          f"RSA corr {out['rsa_corr']:.3f}, dist {out['rsa_dist']:.3f}")
  return out


def cycle_eval(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  models, params = ctx.models
  config = dataclasses.replace(ctx.cfg.cycle, seed=ctx.cfg.seed, lpips=ctx.cfg.lpips)
  summary = cycle.run(ctx.pairs_dir, ctx.link_dir, models, params, d, config)
  m = summary["metrics"]
  ctx.log(f"[cycle] mse_w {m['mse_w']['mean']:.4g} vs baseline {m['mse_w_baseline']['mean']:.4g};"
          f" class kept {summary['class_kept_fraction']:.3f}")
  return summary


def unit_sweep(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  models, params = ctx.with_link()
  config = dataclasses.replace(ctx.cfg.sweep, classes=tuple(ctx.present_classes()))
  t0 = time.time()
  res = sweep.run(ctx.pairs_dir, models, params, d, config, min_area=ctx.min_area,
                  log_every_s=15.0)
  secs = time.time() - t0
  res.pop("arrays")
  t = res["timing"]
  if t:  # the share of the sweep inside compiled steps (the first, compiling call apart)
    t["steps_fraction"] = (t["steps_s"] - t["first_call_s"]) / secs
    t["first_call_fraction"] = t["first_call_s"] / secs
  ctx.log(f"[sweep] {res['n_images']} images in {secs:.1f} s "
          f"({res['n_images'] / max(secs, 1e-9):.1f} images/s)")
  res["motion"] = sweep_motion.run_config(ctx.pairs_dir, models, params, d, config,
                                          res["strip_units"])
  if res["motion"] is not None:
    ctx.log(f"[sweep] motion fields of {len(res['motion']['units'])} strip units in "
            f"{res['motion']['seconds']:.1f} s")
  return {**res, "seconds": secs, "images_per_s": res["n_images"] / max(secs, 1e-9)}


def units(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  out = unit_report.run_units(ctx.sweep_dir, d, dataclasses.replace(ctx.cfg.units,
                                                                    seed=ctx.cfg.seed))
  ctx.log(f"[units] median Hoyer sparsity {out['median_sparsity_all']:.3f}; strongest labels "
          f"{out['strongest_label_counts']}")
  return out


def relevance(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  out = unit_report.run_relevance(ctx.sweep_dir, d, threshold=ctx.cfg.relevance_threshold)
  ctx.log(f"[relevance] class-relevant units per class {out['relevant_per_class']}; "
          f"{out['relevant_any_class']} relevant to any")
  return out


def counterfactual(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  c = ctx.cfg.counterfactual
  present = ctx.present_classes()
  orig = c.orig if c.orig is not None else present[0]
  target = c.target if c.target is not None else [k for k in ctx.classes if k != orig][0]
  init_scale = c.init_scale if c.init_scale is not None else (0.1 if ctx.cfg.miniworld else 1.0)
  exp = cf.ExperimentConfig(orig_class=int(orig), target_class=int(target), n_samples=c.pairs,
                            seed=ctx.cfg.seed, n_frames=c.n_frames, max_points=c.max_points,
                            lpips=ctx.cfg.lpips, init_scale=init_scale, search=c.search())
  models, params = ctx.with_link()
  summary = cf.run_experiment(ctx.pairs_dir, models, params, d, exp)
  out = {"orig_class": int(orig), "target_class": int(target), "n_pairs": summary["n_pairs"],
         "success_rate": summary["success_rate"],
         "median_steps_successful": summary["median_steps_successful"],
         "mean_steps_successful": summary["mean_steps_successful"],
         "max_steps": c.max_steps, "search_seconds": summary["search_seconds"],
         "mean_delta_norm": summary["mean_delta_norm"],
         "motion_seconds": summary["motion_seconds"]}
  ctx.log(f"[counterfactual] {orig} -> {target}: success {out['success_rate']:.2f}, "
          f"median steps {out['median_steps_successful']}")
  return out


def validate(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  """Planted-truth validation (`linkjax.miniworld.validate.run`): a miniworld classifier with
  planted units, scored on the sweep and the counterfactual stage's paths."""
  models, params = ctx.with_link()
  world_done = ctx.out / "world" / "DONE.json"
  reliability = (files.read_json(world_done).get("groundtruth_correlation")
                 if world_done.exists() else None)
  record = files.read_json(pathlib.Path(ctx.paths["classifier"]) / "metrics.json")
  cf_dir = ctx.out / "counterfactual"
  out = validate_lib.run(models, params, pairs_dir=ctx.pairs_dir, sweep_dir=ctx.sweep_dir,
                         out_dir=d, planted=ctx.planted, seed=ctx.cfg.seed,
                         min_area=ctx.min_area,
                         cf_dir=cf_dir if (cf_dir / "DONE.json").exists() else None,
                         held_out=record.get("planted", []), segmenter_reliability=reliability)
  rec = out["recovery"]
  for res in (rec, rec["entry_scaling"]):
    ctx.log(f"[validate] {res['scaling']} scaling: {res['n_right']}/{len(res['planted'])} "
            f"planted units named with the right part and metric; {res['false_discoveries']} "
            f"false discoveries ({res['explained_discoveries']} explained)")
    for e in res["planted"]:
      ctx.log(f"[validate]   unit {e['unit']} ({e['param']}): top {e['top_part']} "
              f"{e['top_metric']} ({'right' if e['right'] else 'wrong'}), sparsity percentile "
              f"{e['sparsity_percentile']:.0f}")
  b = out.get("boundary")
  if b:
    for m, v in b["per_metric"].items():
      for stat in ("path", "boundary"):
        ctx.log(f"[validate] boundary {b['orig_class']} -> {b['target_class']} ({m}, {stat}): "
                f"Spearman {v[stat]['spearman']:.2f}, top-{v['k']} overlap "
                f"{v[stat]['top_k_overlap']}")
  return out


def motion_check(ctx: Context, d: pathlib.Path) -> dict[str, Any]:
  """Motion fields against the renderer's true motion (a small `benchmarks/motion_validation`):
  pairs with known part changes, `motion.estimate_many` and scikit-image's TV-L1 (if installed)
  on the same pairs; EPE per part, part-motion correlation, affine error, one quiver figure."""
  m = ctx.cfg.motion
  key = jax.random.fold_in(jax.random.key(ctx.cfg.seed), 17)
  cases = {c: mc.make_case(c, m.pairs, ctx.cfg.seed) for c in m.cases}
  pooled = {k: np.concatenate([v[k] for v in cases.values()]) for k in next(iter(
      cases.values()))}
  u8 = lambda x: np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)  # noqa: E731
  t0 = time.perf_counter()
  res = motion.estimate_many(u8(pooled["images_o"]), u8(pooled["images_p"]), key=key)
  ours_s = time.perf_counter() - t0
  ests = {"ours": {"total_flow": res.total_flow, "affine": res.affine, "flow": res.flow,
                   "confidence": res.confidence}}
  seconds = {"ours": ours_s}
  if m.baseline and mc.skimage_available():
    t0 = time.perf_counter()
    ests["tvl1"] = mc.run_skimage("tvl1", pooled["images_o"], pooled["images_p"], ctx.cfg.seed)
    seconds["tvl1"] = time.perf_counter() - t0
  elif m.baseline:
    ctx.log("[motion] scikit-image not installed: no TV-L1 baseline")
  bounds = np.cumsum([0] + [m.pairs] * len(cases))
  part = lambda d_, i: {k: v[bounds[i]:bounds[i + 1]] for k, v in d_.items()}  # noqa: E731
  out: dict[str, Any] = {"cases": list(m.cases), "pairs_per_case": m.pairs, "seconds": seconds,
                         "methods": list(ests)}
  for name, est in ests.items():
    out[name] = mc.evaluate(est, pooled)
    out[name]["per_case"] = {c: mc.evaluate(part(est, i), part(pooled, i))
                             for i, c in enumerate(cases)}
  shown = list(cases).index("combined") if "combined" in cases else len(cases) - 1
  mc.figure(d / "motion_check.png", part(pooled, shown), part(ests["ours"], shown),
            part(ests["tvl1"], shown) if "tvl1" in ests else None,
            f"known change '{list(cases)[shown]}'", n=3)
  line = ", ".join(f"{k} EPE {out[k]['animal']:.2f} px, part r {out[k]['r']:.2f}" for k in ests)
  ctx.log(f"[motion] {len(pooled['flow'])} pairs: {line}")
  return out


# Stage name -> function, in run order. WORLD_STAGES run only for miniworld models, 'validate'
# only for a miniworld classifier with planted units.
STAGES: dict[str, Callable[[Context, pathlib.Path], dict[str, Any]]] = {
    "world": world, "pairs": make_pairs, "link": fit_link, "similarity": w_r_similarity,
    "cycle": cycle_eval, "sweep": unit_sweep, "units": units, "relevance": relevance,
    "counterfactual": counterfactual, "validate": validate, "motion": motion_check,
}
# Stages that need the renderer's ground truth (miniworld models only).
WORLD_STAGES = ("world", "motion")
