"""The counterfactual experiment (paper Fig. 7): search, paths, figures, tables, summary.

`run_experiment` is the driver that `experiments.counterfactual` and the demo call.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from linkjax import bundle as bundle_lib
from linkjax import files, motion, pairs, perceptual
from linkjax.counterfactual import figures as cf_figures
from linkjax.counterfactual import path as cf_path
from linkjax.counterfactual import descent


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
  """What to search (flags of experiments/counterfactual.py).

  Attributes:
    orig_class, target_class: the classes of the source images and the target.
    n_samples: pairs of `orig_class` searched from (the first ones of the pair file).
    seed: seed of the initial shifts.
    n_frames: frames rendered along each path.
    max_points: path points analysed per pair before the boundary is refined.
    lpips: compute LPIPS along the path (images of at least 32 px).
    init_scale: initial shift ~ init_scale * U[0, 1) (the reference: 1.0).
    search: the search's hyper-parameters.
    motion: draw the motion fields around each path's decision boundary
      (pair{i}_flow.png; `path.boundary_motion`) and add their sizes to the summary.
  """
  orig_class: int = 254
  target_class: int = 151
  n_samples: int = 8
  seed: int = 0
  n_frames: int = 8
  max_points: int = 200
  lpips: bool = True
  init_scale: float = 1.0
  search: descent.SearchConfig = descent.SearchConfig()
  motion: bool = True

  def __post_init__(self):
    if self.orig_class == self.target_class:
      raise ValueError(f"orig_class and target_class are both {self.orig_class}")
    if self.n_samples < 1 or self.n_frames < 2 or self.max_points < 2:
      raise ValueError("n_samples must be >= 1, n_frames and max_points >= 2")
    if not np.isfinite(self.init_scale) or self.init_scale < 0:
      raise ValueError(f"init_scale must be finite and >= 0, got {self.init_scale}")


def run_experiment(pairs_dir: str | pathlib.Path, models: bundle_lib.ModelBundle, params: Any,
                   out_dir: str | pathlib.Path, cfg: ExperimentConfig) -> dict[str, Any]:
  """Searches from the first `n_samples` pairs of `orig_class` towards `target_class`,
  analyses every path and writes pair{i}_frames.png, pair{i}_probability.png,
  pair{i}_metrics.png, pair{i}_gradcam.png, pair{i}_flow.png (with `cfg.motion`, for paths
  that cross the boundary), pair{i}.csv and summary.json to `out_dir`.

  Args:
    pairs_dir: pair directory (r and class_idx are used).
    models, params: a bundle with generator, classifier and link (a segmenter adds the part
      metrics along the path).
    out_dir: output directory.
    cfg: what to search.
  Returns:
    The summary dict written to summary.json.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  pairs.check_classes(models, (cfg.orig_class, cfg.target_class))
  data = pairs.load(pairs_dir)
  rows = np.nonzero(np.asarray(data["class_idx"]) == cfg.orig_class)[0][:cfg.n_samples]
  if rows.size == 0:
    raise ValueError(f"no pairs of class {cfg.orig_class} in {pairs_dir}")
  size = int(models.generator_config.img_resolution)
  lpips_fn = perceptual.lpips if cfg.lpips and size >= perceptual.MIN_SIZE else None
  label_names = models.label_names if models.segmenter is not None else ()

  r = jnp.asarray(data["r"][rows], jnp.float32)
  n = r.shape[0]
  orig = jnp.full((n,), cfg.orig_class, jnp.int32)
  target = jnp.full((n,), cfg.target_class, jnp.int32)
  shift0 = jnp.float32(cfg.init_scale) * descent.initial_shift(jax.random.key(cfg.seed), n,
                                                                  r.shape[1])
  t0 = time.perf_counter()
  res = jax.device_get(descent.search(models, params, r, orig, target, shift0,
                                        config=cfg.search))
  t_search = time.perf_counter() - t0
  logging.info("search: %d/%d solved in %.1fs, steps %s", int(res.success.sum()), n, t_search,
               res.steps.tolist())
  _, path = descent.trajectory(models, params, r, orig, target, shift0, jnp.asarray(res.steps),
                                 config=cfg.search, num_steps=int(res.steps.max()), every=1)
  path = np.asarray(path)

  # Grad-CAM: original class on f(r)'s image, target (and original) class on the counterfactual.
  w_orig = models.link(params, r)
  w_cf = models.link(params, jax.nn.relu(jnp.asarray(res.r_final)))
  cam_o = jax.device_get(bundle_lib.grad_cam(models, params, w_orig, orig))
  cam_t = jax.device_get(bundle_lib.grad_cam(models, params, w_cf, target))
  cam_to = jax.device_get(bundle_lib.grad_cam(models, params, w_cf, orig))

  o, t = cfg.orig_class, cfg.target_class
  analyses = [cf_path.analyse_pair(models, params, np.asarray(r[i]),
                                   path[:int(res.steps[i]) + 1, i], n_frames=cfg.n_frames,
                                   max_points=cfg.max_points, lpips_fn=lpips_fn)
              for i in range(n)]
  t0 = time.perf_counter()
  flows = (cf_path.boundary_motion(analyses, key=jax.random.fold_in(jax.random.key(cfg.seed), 1))
           if cfg.motion else [None] * n)
  t_motion = time.perf_counter() - t0
  pairs_out = []
  for i, a in enumerate(analyses):
    cf_figures.plot_frames(out / f"pair{i}_frames.png", a, o, t)
    cf_figures.plot_probability(out / f"pair{i}_probability.png", a, o, t)
    cf_figures.plot_metrics(out / f"pair{i}_metrics.png", a, label_names)
    cf_figures.plot_grad_cam(out / f"pair{i}_gradcam.png",
                             np.stack([cam_o["view"][i], cam_t["view"][i], cam_to["view"][i]]),
                             np.stack([cam_o["cam"][i], cam_t["cam"][i], cam_to["cam"][i]]),
                             [f"original, class {o}", f"counterfactual, class {t}",
                              f"counterfactual, class {o}"])
    cf_figures.write_pair_csv(out / f"pair{i}.csv", a, o, t, label_names)
    if flows[i] is not None:
      cf_figures.plot_boundary_flow(out / f"pair{i}_flow.png", a, flows[i], o, t)
    pairs_out.append({
        "pair_row": int(rows[i]), "success": bool(res.success[i]), "steps": int(res.steps[i]),
        "pred": int(res.pred[i]), "prob_orig": float(res.prob_orig[i]),
        "prob_target": float(res.prob_target[i]), "delta_norm": float(res.delta_norm[i]),
        "boundary_step": int(a.steps[a.boundary]) if a.boundary > 0 else None,
        "class_at_step0": int(a.pred[0]), "class_of_original": a.ref_pred,
        "boundary_motion": _motion_numbers(flows[i])})
  steps = [p["steps"] for p in pairs_out if p["success"]]
  summary = {
      "orig_class": o, "target_class": t, "n_pairs": n,
      "success_rate": float(res.success.mean()), "search_seconds": t_search,
      "num_renders": int(res.num_renders), "num_images": int(res.num_images),
      "search_config": dataclasses.asdict(cfg.search), "seed": cfg.seed,
      "init_scale": cfg.init_scale,
      "shift_convention": "r' = r - shift, shift0 ~ init_scale * U[0,1) per pair "
                          "(fold_in(key(seed), i))",
      "median_steps_successful": float(np.median(steps)) if steps else None,
      "mean_steps_successful": float(np.mean(steps)) if steps else None,
      "mean_delta_norm": float(np.mean([p["delta_norm"] for p in pairs_out])),
      "motion_seconds": t_motion,
      "pairs": pairs_out}
  files.write_json(out / "summary.json", summary)
  return summary


def _motion_numbers(m: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
  """Sizes of `path.boundary_motion`'s fields: confidence-weighted mean and the maximum
  (confidence >= 0.25) of |local flow| in pixels, and the affine, per pair of images."""
  if m is None:
    return None
  out = {}
  for j, name in enumerate(("before_to_flipped", "original_to_flipped")):
    norm = np.linalg.norm(m["flow"][j], axis=-1)
    conf = m["confidence"][j]
    sure = conf >= 0.25
    out[name] = {"mean_local_px": float((norm * conf).sum() / max(conf.sum(), 1e-9)),
                 "max_local_px": float(norm[sure].max()) if sure.any() else 0.0,
                 "affine": dict(zip(motion.AFFINE_PARAM_NAMES,
                                    m["affine_params"][j].tolist()))}
  return out
