"""Planted-truth validation: does the method recover what we planted in the classifier?

The miniworld's classifier with planted units (`train_classifier.TrainConfig.planted`, shipped
as weights/classifier_planted) has a few named units of R trained to encode one renderer
parameter each (ear length, tail length, ...); every other unit is free. The method -- pairs,
link, unit sweeps, label-change vectors, counterfactuals -- knows nothing of this. Here we score
what it reports against the planted answer:

Recovery of planted units (from a finished sweep over all units).
  * A parameter's *expected* (part, metric) is `truth_lib.PARAM_TARGETS[param]`: a length or size shows
    up as the area of its part (ear_len -> ear area, ...), the body's luminance as the body's
    luminance.
  * A unit's label-change vector is the median over samples of |change| of every part metric
    from the first to the last sweep value (`unit_analysis.unit_vectors`, with the analysis's
    minimum part area). Metrics live on different scales (relative area, 0-1 luminance, bits,
    degrees), so each metric is divided by its RMS over all units and parts
    (`unit_analysis.normalise_vectors`, the scaling the t-SNE and strongest-label use) before
    the unit's *top (part, metric)* is taken. "Right" means top == expected. This is the
    primary score, fixed before any result was seen.
  * A second scaling, 'entry' (`scale_vectors`): each (part, metric) divided by its RMS over
    units. It was added *after* the first benchmark run (an earlier planted classifier, 10 base
    samples) named 4 of 6 planted units "nose angle" under the method's scaling -- the angle of
    the near-circular nose, which segmentation noise changes for every unit. Choosing it after
    seeing results makes it a post-hoc score, not a blind test: both are always reported side
    by side, and neither replaces the other.
  * Also reported: the rank of the expected entry within the unit's own vector, the rank of the
    planted unit among all units on the expected entry (1: no unit changes that part metric
    more), the sign of the change (median over samples of the signed change; a longer ear
    should grow the ear's area), and the unit's Hoyer label sparsity
    (`unit_analysis.sparsity`, the paper's definition, all samples) as a percentile among all
    units (100: sparsest). The paper's sparsity is the Hoyer measure of all 45 entries, which
    mixes units (degrees of angle next to relative area), so it mostly ranks angle changes;
    the sparsity across the 9 parts of the planted unit's expected *metric* alone
    (`quantify.label_sparsity`'s 'per_metric', same samples) is reported beside it. It was
    added after the first runs (post hoc) and does not replace the paper's.
  * False discoveries: free units whose top (part, metric) is a planted unit's expected entry
    with an effect on that entry at least as large as the planted unit's -- a free unit the
    method would name as "the ear-length unit" with at least as much evidence. Those among them
    whose |within-class Pearson r| on generated images (unit and parameter centred per breed)
    with a parameter of that part metric (ear_len or ear_w for ear area) reaches `EXPLAINED_R`
    are counted apart as 'explained' (a free unit can encode ear size too); the rest are false.
    Within-class, because the pooled correlation counts every breed-selective unit: on the
    first run with the shipped planted classifier, 199-296 of the 511 other units reached
    |pooled r| >= 0.3 with each planted parameter, and 27 of 33 free units named like a planted
    unit were 'explained' that way (this change is post hoc too, and makes the count stricter). We also
    report the looser count (free units with that top entry, any effect) and its base rate.

Boundary check (from a finished counterfactual experiment between two breeds).
  * The truth: the two breeds' renderer distributions, measured on renders with exact masks
    (`breed_differences`): per part, the relative difference of the breed means of the area
    and the difference of the luminance means; plus, for the record, which renderer parameters
    differ most (`parameter_differences`).
  * The method: along each counterfactual path from the original image to the decision
    boundary, the mean |relative change| of each part metric (area as |ratio - 1|, luminance
    as |difference|; `path_changes`), averaged over the searches ('path'; fixed before any
    result was seen); and |the mean over searches of the signed change at the boundary|
    (`boundary_change`; 'boundary', added after the first run, in which segmentation noise
    gave every part a similar 'path' value: post hoc, reported next to 'path').
  * Scored per metric by the Spearman correlation of the two part rankings and the overlap of
    their top 3 (`rank_agreement`), plus, for 'boundary', how many of the truth's top 3 parts
    change with the truth's sign.

What limits recovery is measured too: the segmenter's reliability for the expected (part,
metric) (Pearson r of the metric on the segmenter's mask of G(z) vs the true mask of the render,
from the demo's world stage), how well each planted unit tracks its parameter on generated
images (psi 1, where the true parameter of G(z, c) is known), and how well the expected part
metric itself tracks the parameter within a breed, measured on G(z) with the segmenter vs on the
render with the true mask (`truth_lib.measurability`).
"""

from __future__ import annotations

import functools
import html
import math
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import scipy.stats

from linkjax import bundle as bundle_lib
from linkjax import files, jobs, pairs, quantify, sweep as sweep_lib, unit_analysis
from linkjax import miniworld as world
from linkjax.counterfactual import figures as cf_figures
from linkjax.miniworld import groundtruth
from linkjax.miniworld import planted as planted_lib
from linkjax.miniworld import truth as truth_lib

BOUNDARY_METRICS = ("area", "luminance")
TOP_K = 3
PLANTED_DIR = pathlib.Path(__file__).resolve().parent / "weights" / "classifier_planted"
# Breeds of the boundary check: the dotted bruiser and the ember foxhound differ on the
# renderer's side mostly in two parts' areas (snout and tail: relative differences of the breed
# means 0.9 and 0.85, the next part 0.3) and in the head's and body's luminance.
BOUNDARY_PAIR = (2, 4)


def expected_target(param: str, part_names: Sequence[str]) -> tuple[int, int]:
  """(part index, metric index) a planted parameter should change.

  Args:
    param: a key of `truth_lib.PARAM_TARGETS`.
    part_names: the L part names of the sweep (background excluded).
  Returns:
    (l, m): indices into the parts and `quantify.METRIC_NAMES`.
  """
  if param not in truth_lib.PARAM_TARGETS:
    raise ValueError(f"no expected part/metric for {param!r}; known: {sorted(truth_lib.PARAM_TARGETS)}")
  part, metric = truth_lib.PARAM_TARGETS[param]
  return list(part_names).index(part), quantify.METRIC_NAMES.index(metric)


def _rank_desc(values: np.ndarray, i: int) -> int:
  """1 + the number of entries strictly larger than values[i] (ties share the best rank)."""
  return int(np.sum(values > values[i])) + 1


SCALINGS = ("metric", "entry")
# A free unit whose |within-class Pearson r| with a parameter of the named part metric reaches
# this on generated images encodes that parameter itself: naming it is a discovery the planted map does
# not list, not a false one. (With 500 images, |r| > 0.09 is already significant at p = 0.05;
# 0.3 asks for a moderate, not a chance, association.)
EXPLAINED_R = 0.3


def scale_vectors(vectors: Any, scaling: str = "metric") -> np.ndarray:
  """Label-change vectors on a common scale: [U, L, M] -> [U, L * M] float64.

  'metric': each metric divided by its RMS over all units and parts (the method's own scaling,
    `unit_analysis.normalise_vectors`, used for t-SNE and the strongest label);
  'entry': each (part, metric) divided by its RMS over units, so a unit's top entry is the part
    metric it changes most *unusually*: entries that every unit changes by segmentation noise
    (the orientation of the near-circular nose, say) no longer dominate.
  """
  v = np.asarray(vectors, np.float64)
  if scaling == "metric":
    return unit_analysis.normalise_vectors(v)
  if scaling == "entry":
    rms = np.sqrt(np.mean(v * v, axis=0))
    return (v / np.where(rms > 0, rms, 1.0)).reshape(v.shape[0], -1)
  raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")


def explaining_params(part: str, metric: str) -> tuple[str, ...]:
  """The parameters whose expected part metric is (part, metric) (`truth_lib.PARAM_TARGETS`)."""
  return tuple(p for p, t in truth_lib.PARAM_TARGETS.items() if t == (part, metric))


def score_units(vectors: Any, units: Sequence[int], planted: Sequence[tuple[int, str]],
                part_names: Sequence[str], *, sparsity: Any = None,
                metric_sparsity: Any = None, signed: Any = None,
                scaling: str = "metric",
                param_corr: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Scores the planted units of a sweep over (usually all) units.

  Args:
    vectors: [U, L, M] label-change vectors (median |change|, `unit_analysis.unit_vectors`).
    units: [U] the unit index of each row.
    planted: ((unit, parameter), ...); every planted unit must be among `units`.
    part_names: the L part names.
    sparsity: [U] Hoyer label sparsity of each unit (None: not scored).
    metric_sparsity: [U, M] Hoyer sparsity across parts per metric (None: not scored); the
      planted unit's on its expected metric is scored like `sparsity`.
    signed: [U, L, M] median signed change (None: no direction reported).
    scaling: 'metric' or 'entry' (`scale_vectors`).
    param_corr: {parameter: [U] Pearson r of every unit with it} (e.g. on generated images);
      with it, free units named like a planted unit are split into those that encode a
      parameter of the same part metric (|r| >= EXPLAINED_R: 'explained') and the others
      (false discoveries). None: every such free unit counts as false.
  Returns:
    {'planted': [one dict per planted unit: 'unit', 'param', 'expected_part',
     'expected_metric', 'top_part', 'top_metric', 'right', 'part_right', 'expected_rank_in_unit'
     (1 = top), 'effect' (scaled entry), 'unit_rank_on_expected' (1 = largest of all units),
     'false_discoveries', 'explained_discoveries', 'free_top_same' (free units with that top
     entry, any effect), 'free_larger_effect' (free units with a larger effect, any top),
     'sparsity', 'sparsity_percentile', 'metric_sparsity', 'metric_sparsity_percentile',
     'signed_change'],
     'scaling', 'n_units', 'n_free', 'n_right', 'n_part_right', 'false_discoveries' (sum),
     'explained_discoveries' (sum), 'n_sparsity_top_decile' (planted units whose sparsity
     percentile is >= 90; None without sparsity), 'n_metric_sparsity_top_decile' (the same for
     metric_sparsity), 'free_top_counts': {'part:metric': free units
     with that top entry}}.
  """
  v = np.asarray(vectors, np.float64)
  units = np.asarray(units)
  n_u, n_l, n_m = v.shape
  norm = scale_vectors(v, scaling)  # [U, L * M]
  top = np.argmax(norm, axis=1)
  moves = norm.max(axis=1) > 0
  row = {int(u): i for i, u in enumerate(units)}
  missing = [u for u, _ in planted if u not in row]
  if missing:
    raise ValueError(f"planted units {missing} were not swept")
  planted_rows = {row[u] for u, _ in planted}
  free = np.array([i not in planted_rows for i in range(n_u)])
  metric_names = quantify.METRIC_NAMES
  out = []
  for u, param in planted:
    i = row[u]
    l, m = expected_target(param, part_names)
    flat = l * n_m + m
    eff = norm[i, flat]
    t = int(top[i])
    named = free & moves & (top == flat) & (norm[:, flat] >= eff)
    explained = np.zeros(n_u, bool)
    if param_corr is not None:
      known = [np.abs(np.asarray(param_corr[q], np.float64))
               for q in explaining_params(part_names[l], metric_names[m]) if q in param_corr]
      if known:
        explained = np.max(known, axis=0) >= EXPLAINED_R
    entry = {
        "unit": int(u), "param": param, "expected_part": part_names[l],
        "expected_metric": metric_names[m],
        "top_part": part_names[t // n_m] if moves[i] else None,
        "top_metric": metric_names[t % n_m] if moves[i] else None,
        "right": bool(moves[i] and t == flat),
        "part_right": bool(moves[i] and t // n_m == l),
        "expected_rank_in_unit": _rank_desc(norm[i], flat),
        "effect": float(eff),
        "unit_rank_on_expected": _rank_desc(norm[:, flat], i),
        "false_discoveries": int(np.sum(named & ~explained)),
        "explained_discoveries": int(np.sum(named & explained)),
        "free_top_same": int(np.sum(free & moves & (top == flat))),
        "free_larger_effect": int(np.sum(free & (norm[:, flat] >= eff))),
    }
    if sparsity is not None:
      sp = np.asarray(sparsity, np.float64)
      entry["sparsity"] = float(sp[i])
      entry["sparsity_percentile"] = float(100.0 * np.mean(sp <= sp[i]))
    if metric_sparsity is not None:
      sp = np.asarray(metric_sparsity, np.float64)[:, m]
      entry["metric_sparsity"] = float(sp[i])
      entry["metric_sparsity_percentile"] = float(100.0 * np.mean(sp <= sp[i]))
    if signed is not None:
      entry["signed_change"] = float(np.asarray(signed, np.float64)[i, l, m])
    out.append(entry)
  counts: dict[str, int] = {}
  for i in np.flatnonzero(free & moves):
    key = f"{part_names[top[i] // n_m]}:{metric_names[top[i] % n_m]}"
    counts[key] = counts.get(key, 0) + 1
  return {"planted": out, "scaling": scaling, "n_units": int(n_u), "n_free": int(free.sum()),
          "n_right": int(sum(e["right"] for e in out)),
          "n_part_right": int(sum(e["part_right"] for e in out)),
          "false_discoveries": int(sum(e["false_discoveries"] for e in out)),
          "explained_discoveries": int(sum(e["explained_discoveries"] for e in out)),
          "n_sparsity_top_decile": (None if sparsity is None else int(
              sum(e["sparsity_percentile"] >= 90.0 for e in out))),
          "n_metric_sparsity_top_decile": (None if metric_sparsity is None else int(
              sum(e["metric_sparsity_percentile"] >= 90.0 for e in out))),
          "free_top_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


# ------------------------------------------------------------------------------ boundary check


def path_changes(part_metrics: Any, boundary: int) -> np.ndarray:
  """Mean |relative change| of every part metric along a path, up to its decision boundary.

  Args:
    part_metrics: [T, L, M] relative to the original image (`counterfactual.path`'s
      `relative_part_metrics`: area as a ratio, the others as differences).
    boundary: index of the first point of the other class (-1: never reached: the whole path).
  Returns:
    [L, M] float64: the mean over points 0..boundary of |ratio - 1| for area and |difference|
    for the others (NaN points -- a part absent in the original or on the path -- skipped; NaN
    where every point is).
  """
  pm = np.asarray(part_metrics, np.float64)
  end = pm.shape[0] if boundary < 0 else boundary + 1
  pm = pm[:end].copy()
  pm[..., quantify.AREA] -= 1.0
  a = np.abs(pm)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as documented
    return np.nanmean(a, axis=0)


def boundary_change(part_metrics: Any, boundary: int) -> np.ndarray:
  """The signed change of every part metric at the decision boundary (the last point if none).

  Args:
    part_metrics: [T, L, M] relative to the original image (area as a ratio).
    boundary: index of the first point of the other class (-1: the last point).
  Returns:
    [L, M] float64: ratio - 1 for area, the difference for the others (NaN where undefined).
  """
  pm = np.asarray(part_metrics, np.float64)[boundary].copy()
  pm[..., quantify.AREA] -= 1.0
  return pm


def rank_agreement(method: Any, truth: Any, names: Sequence[str], k: int = TOP_K
                   ) -> dict[str, Any]:
  """How well a ranking of parts by the method's changes matches the true ranking.

  Args:
    method: [L] the method's change per part (NaN: the part never measured, ranked last).
    truth: [L] the true difference per part (NaN ranked last).
    names: the L part names.
    k: the size of the top sets compared.
  Returns:
    {'method_order', 'truth_order' (part names, largest first), 'spearman' (over parts finite
     in both; NaN with fewer than 3 or a constant side), 'top_k_overlap' (|top k of both|), 'k',
     'truth_top1_method_rank' (the method's rank of the truly most different part, 1 = top)}.
  """
  m = np.nan_to_num(np.asarray(method, np.float64), nan=-np.inf)
  t = np.nan_to_num(np.asarray(truth, np.float64), nan=-np.inf)
  mo, to = np.argsort(-m, kind="stable"), np.argsort(-t, kind="stable")
  ok = np.isfinite(m) & np.isfinite(t)
  defined = ok.sum() >= 3 and np.ptp(m[ok]) > 0 and np.ptp(t[ok]) > 0
  rho = float(scipy.stats.spearmanr(m[ok], t[ok]).statistic) if defined else math.nan
  return {"method_order": [names[i] for i in mo], "truth_order": [names[i] for i in to],
          "spearman": rho, "top_k_overlap": len(set(mo[:k]) & set(to[:k])), "k": k,
          "truth_top1_method_rank": int(np.flatnonzero(mo == to[0])[0]) + 1}


def boundary_check(cf_dir: str | os.PathLike, part_names: Sequence[str], *, key: jax.Array,
                   n_renders: int = 500, batch: int = 100) -> dict[str, Any]:
  """Compares the parts a counterfactual experiment changes with how the two breeds differ.

  Two statistics of the method, each compared with the truth's |difference| per part:
  'path_change', the mean |relative change| along the path up to the boundary (`path_changes`,
  averaged over the searches), and 'boundary_change', |the mean over searches of the signed
  change at the boundary| (`boundary_change`): segmentation noise adds to the first for every
  part alike but averages out of the second, whose sign is also compared with the truth's.

  Args:
    cf_dir: a finished `counterfactual.run_experiment` directory (summary.json, pair{i}.csv).
    part_names: the L part names.
    key: PRNG key of the renders of the two breeds (truth).
    n_renders: renders per breed.
    batch: renders per compiled call.
  Returns:
    {'orig_class', 'target_class', 'orig_name', 'target_name', 'n_paths' (searches that reached
     the boundary), 'n_searches', 'per_metric': {metric: {'path_change', 'boundary_change'
     (signed), 'truth' (signed), 'cohen_d': {part: value}, 'path': rank_agreement of
     path_change, 'boundary': rank_agreement of |boundary_change|, 'sign_agreement': parts among
     the truth's top k whose boundary change has the truth's sign}}, 'parameters':
     `parameter_differences`, 'n_renders_per_breed'}.
  """
  cf_dir = pathlib.Path(cf_dir)
  summary = files.read_json(cf_dir / "summary.json")
  a, b = int(summary["orig_class"]), int(summary["target_class"])
  n_l, n_m = len(part_names), len(quantify.METRIC_NAMES)
  changes, at_boundary = [], []
  for i, p in enumerate(summary["pairs"]):
    if not p["success"]:
      continue
    pm, boundary = cf_figures.read_pair_csv(cf_dir / f"pair{i}.csv", tuple(part_names))
    if boundary < 0:  # the search's last check passed but the analysed path never flipped
      continue
    changes.append(path_changes(pm, boundary))
    at_boundary.append(boundary_change(pm, boundary))
  truth_metrics = []
  for k, c in enumerate((a, b)):
    theta = world.sample_theta(jax.random.fold_in(key, k), np.full((n_renders,), c, np.int32))
    truth_metrics.append(truth_lib.render_metrics(np.asarray(theta), batch))
  diff = truth_lib.breed_differences(*truth_metrics)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    empty = np.full((n_l, n_m), np.nan)
    mean_change = np.nanmean(np.stack(changes), axis=0) if changes else empty
    mean_boundary = np.nanmean(np.stack(at_boundary), axis=0) if at_boundary else empty
  per_metric = {}
  for metric in BOUNDARY_METRICS:
    j = quantify.METRIC_NAMES.index(metric)
    truth = diff["relative"][:, j]
    bnd = rank_agreement(np.abs(mean_boundary[:, j]), truth, part_names)
    top_truth = np.argsort(-np.nan_to_num(truth, nan=-np.inf), kind="stable")[:TOP_K]
    same_sign = [bool(np.sign(mean_boundary[i, j]) == np.sign(diff["signed"][i, j]))
                 for i in top_truth]
    per_metric[metric] = {
        "path_change": dict(zip(part_names, mean_change[:, j].tolist())),
        "boundary_change": dict(zip(part_names, mean_boundary[:, j].tolist())),
        "truth": dict(zip(part_names, diff["signed"][:, j].tolist())),
        "cohen_d": dict(zip(part_names, diff["cohen_d"][:, j].tolist())),
        "path": rank_agreement(mean_change[:, j], truth, part_names), "boundary": bnd,
        "sign_agreement": int(sum(same_sign)), "k": TOP_K}
  return {"orig_class": a, "target_class": b, "orig_name": world.CLASS_NAMES[a],
          "target_name": world.CLASS_NAMES[b], "n_paths": len(changes),
          "n_searches": len(summary["pairs"]), "per_metric": per_metric,
          "parameters": truth_lib.parameter_differences(a, b), "n_renders_per_breed": n_renders}


# -------------------------------------------------------------------- planted units on G(z, c)


@functools.partial(jax.jit, static_argnums=0)
def _generated_r(models: bundle_lib.ModelBundle, params: Any, z: jax.Array,
                 c: jax.Array) -> dict[str, jax.Array]:
  ws = models.mapping(params, z, c, psi=1.0)
  _, acts = models.classify(params, models.render(params, ws))
  return {"r": acts["r"]}


def generated_representations(models: bundle_lib.ModelBundle, params: Any, *, key: jax.Array,
                              n: int = 500, batch: int = 50
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """R of class-balanced generated images (psi 1), their true theta and their classes.

  At psi 1 the generator reproduces render(theta(z, c)), so theta is the true parameter of the
  image the classifier sees; how well a unit tracks it bounds what the link and the sweep can
  recover.

  Returns:
    (r [n, R] float32, theta [n, THETA_DIM] float32, class_idx [n] int32).
  """
  z, c = groundtruth.heldout_latents(key, n, models.z_dim)
  r = jobs.map_batches(functools.partial(_generated_r, models), params, z, c,
                       batch=min(batch, n), mesh=jobs.data_mesh(1))["r"]
  theta = np.asarray(groundtruth.true_theta(z, c), np.float32)
  return np.asarray(r, np.float32), theta, np.asarray(c, np.int32)


# ------------------------------------------------------------------------------------ driver


def read_planted(classifier_dir: str | os.PathLike) -> tuple[tuple[int, str], ...]:
  """The planted (unit, parameter) map stored in a classifier checkpoint's metrics.json."""
  path = pathlib.Path(classifier_dir) / "metrics.json"
  if not path.exists():
    return ()
  return planted_lib.planted_map(files.read_json(path))


def recover(sweep_arrays: Mapping[str, np.ndarray], planted: Sequence[tuple[int, str]],
            min_area: float, param_corr: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """`score_units` on a sweep's arrays with the method's scaling, plus the 'entry' scaling.

  Args:
    sweep_arrays: `sweep.npz` arrays.
    planted: ((unit, parameter), ...).
    min_area: the analysis's minimum part area (px).
    param_corr: {parameter: [R] Pearson r of every unit of R} (indexed by unit, not by row).
  Returns:
    the 'metric'-scaling `score_units` dict with 'entry_scaling' (the same for 'entry'),
    'median_sparsity', 'min_area', 'n_samples', 'part_names'.
  """
  names = unit_analysis.part_names(sweep_arrays)
  units = np.asarray(sweep_arrays["units"])
  changes = unit_analysis.label_changes(sweep_arrays["metrics"], min_area)  # [S, U, L, M]
  vectors = unit_analysis.unit_vectors(changes)
  signed = np.median(changes, axis=0)
  classes = [int(c) for c in sweep_arrays["classes"]]
  sp = unit_analysis.sparsity(changes, sweep_arrays["class_idx"], classes)
  corr = None if param_corr is None else {k: np.asarray(v)[units] for k, v in param_corr.items()}
  kw = dict(sparsity=sp["overall"][-1], metric_sparsity=sp["per_metric"][-1], signed=signed,
            param_corr=corr)
  out = score_units(vectors, units, planted, names, scaling="metric", **kw)
  out["entry_scaling"] = score_units(vectors, units, planted, names, scaling="entry", **kw)
  out.update(median_sparsity=float(np.median(sp["overall"][-1])), min_area=float(min_area),
             n_samples=int(changes.shape[0]), part_names=list(names))
  return out


def run(models: bundle_lib.ModelBundle, params: Any, *, pairs_dir: str | os.PathLike,
        sweep_dir: str | os.PathLike, out_dir: str | os.PathLike,
        planted: Sequence[tuple[int, str]], seed: int, min_area: float,
        cf_dir: str | os.PathLike | None = None, held_out: Sequence[Mapping[str, Any]] = (),
        segmenter_reliability: Mapping[str, Mapping[str, Any]] | None = None,
        strip_steps: int = 5, strip_rows: int = 5, n_generated: int = 500,
        n_renders: int = 500) -> dict[str, Any]:
  """Scores a finished sweep (and counterfactual experiment) against the planted truth.

  Writes to `out_dir`: validation.json (every number), recovery.md and recovery.html (the
  tables), strips/unit_UUUU.png (each planted unit swept over `strip_steps` values, rows one
  sample per class; `sweep.save_strips`).

  Args:
    models, params: the bundle with the link (params['link']) the sweep ran with.
    pairs_dir, sweep_dir: the pair and sweep directories.
    out_dir: output directory.
    planted: ((unit, parameter), ...), e.g. `read_planted(classifier_dir)`.
    seed: seed of the truth renders and the generated images.
    min_area: the analysis's minimum part area (px).
    cf_dir: a finished counterfactual directory for the boundary check (None: skipped).
    held_out: the classifier's own `planted_report` on held-out renders (its metrics.json).
    segmenter_reliability: {part: {metric: Pearson r}} of the segmenter against the true masks
      (the demo's world stage), reported next to each planted unit.
    strip_steps, strip_rows: strip geometry.
    n_generated: generated images for the planted units' correlations.
    n_renders: renders per breed for the boundary truth.
  Returns:
    the summary written to validation.json.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  planted = tuple((int(u), str(p)) for u, p in planted)
  key = jax.random.key(seed)
  arrays = sweep_lib.load(sweep_dir)
  r_gen, theta_gen, c_gen = generated_representations(
      models, params, key=jax.random.fold_in(key, 201), n=n_generated)
  targets = {truth_lib.PARAM_TARGETS[p] for _, p in planted}
  explaining = sorted({q for t in targets for q in explaining_params(*t)} | {p for _, p in planted})
  corr = planted_lib.unit_correlations(r_gen, theta_gen, explaining, class_idx=c_gen)
  pooled = planted_lib.unit_correlations(r_gen, theta_gen, explaining)
  rec = recover(arrays, planted, min_area, param_corr=corr)
  gen = planted_lib.planted_report(r_gen, theta_gen, planted)
  measurable = truth_lib.measurability(models, params, sorted({p for _, p in planted}),
                                       key=jax.random.fold_in(key, 203), n=n_generated,
                                       min_area=min_area)
  held = {int(e["unit"]): e for e in held_out}
  for k, g in enumerate(gen):
    for entry in (rec["planted"][k], rec["entry_scaling"]["planted"][k]):
      entry["r_generated"] = g["r"]
      entry["best_other_unit_generated"] = g["best_other_unit"]
      entry["best_other_r_generated"] = g["best_other_r"]
      u, q = entry["unit"], g["param"]
      entry["r_within_class_generated"] = float(corr[q][u])
      for name, cc in (("other_units_r_above", corr), ("other_units_pooled_r_above", pooled)):
        entry[name] = int(np.sum(np.abs(cc[q]) >= EXPLAINED_R)) - int(abs(cc[q][u]) >= EXPLAINED_R)
      h = held.get(entry["unit"])
      entry["r_heldout_renders"] = None if h is None else h["r"]
      rel = (segmenter_reliability or {}).get(entry["expected_part"], {})
      entry["segmenter_r"] = rel.get(entry["expected_metric"])
      entry["metric_r_within_generated"] = measurable[q]["r_generated_segmenter"]
      entry["metric_r_within_true"] = measurable[q]["r_render_true"]
  summary: dict[str, Any] = {"recovery": rec, "planted_map": [list(p) for p in planted],
                             "measurability": measurable, "seed": seed}
  if cf_dir is not None and (pathlib.Path(cf_dir) / "summary.json").exists():
    summary["boundary"] = boundary_check(cf_dir, rec["part_names"],
                                         key=jax.random.fold_in(key, 202), n_renders=n_renders)
  # Strips: the planted units swept over more values than the sweep's endpoints.
  data = pairs.load(pairs_dir)
  rows = np.asarray(arrays["sample_idx"])
  r_samples = np.asarray(data["r"], np.float32)[rows]
  # The sweep's own ranges (sweep.npz holds them for every swept unit, the planted ones too).
  lo, hi = np.zeros((2, r_samples.shape[1]), np.float32)
  lo[np.asarray(arrays["units"])] = arrays["lo"]
  hi[np.asarray(arrays["units"])] = arrays["hi"]
  strips = sweep_lib.save_strips(out, models, params, r_samples, data["class_idx"][rows],
                                 [u for u, _ in planted], lo=lo, hi=hi, steps=strip_steps,
                                 sample_ids=rows, rows=strip_rows, chunk=strip_steps * strip_rows)
  summary["strips"] = [str(p.relative_to(out)) for p in strips]
  summary = files.json_safe(summary)
  files.write_json(out / "validation.json", summary)
  md, table_html = tables(summary)
  files.write_atomic(out / "recovery.md", lambda f: f.write(md.encode()))
  files.write_atomic(out / "recovery.html", lambda f: f.write(
      ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>planted-truth validation"
       "</title></head><body>" + table_html + "</body></html>").encode()))
  return summary


def _f(x: Any, fmt: str = "{:.2f}") -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def tables(summary: Mapping[str, Any]) -> tuple[str, str]:
  """The recovery and boundary tables as (markdown, HTML fragment)."""
  rec = summary["recovery"]
  ent = rec.get("entry_scaling", rec)
  head = ["unit", "planted parameter", "expected", "top found (metric RMS)", "right",
          "rank of expected", "unit rank on expected", "top found (entry RMS)", "right",
          "unit rank on expected", "sparsity pct (all 45 / expected metric)",
          "false disc. (explained)", "signed change",
          "r renders", "r generated (within breed)", "segmenter r",
          "metric ~ parameter within breed (G / truth)"]

  def top(e):
    return f"{e['top_part']} {e['top_metric']}" if e["top_part"] else "none"

  def right(e):
    return "yes" if e["right"] else ("part only" if e["part_right"] else "no")

  rows = []
  for e, f in zip(rec["planted"], ent["planted"]):
    rows.append([str(e["unit"]), e["param"], f"{e['expected_part']} {e['expected_metric']}",
                 top(e), right(e), str(e["expected_rank_in_unit"]),
                 f"{e['unit_rank_on_expected']}/{rec['n_units']}", top(f), right(f),
                 f"{f['unit_rank_on_expected']}/{rec['n_units']}",
                 f"{_f(e.get('sparsity_percentile'), '{:.0f}')} / "
                 f"{_f(e.get('metric_sparsity_percentile'), '{:.0f}')}",
                 f"{e['false_discoveries']} ({e.get('explained_discoveries', 0)}) / "
                 f"{f['false_discoveries']} ({f.get('explained_discoveries', 0)})",
                 _f(e.get("signed_change"), "{:+.3f}"), _f(e.get("r_heldout_renders")),
                 f"{_f(e.get('r_generated'))} ({_f(e.get('r_within_class_generated'))})",
                 _f(e.get("segmenter_r")),
                 f"{_f(e.get('metric_r_within_generated'))} / "
                 f"{_f(e.get('metric_r_within_true'))}"])
  notes = [f"Method's scaling (each metric / its RMS over units and parts): {rec['n_right']}/"
           f"{len(rec['planted'])} planted units named with the right part and metric "
           f"({rec['n_part_right']} with the right part), {rec['false_discoveries']} false "
           f"discoveries ({rec.get('explained_discoveries', 0)} more free units named alike "
           "encode a parameter of that part metric: within-class |r| >= "
           f"{EXPLAINED_R} on generated images). Entry scaling "
           f"(each part metric / its RMS over units): {ent['n_right']}/{len(ent['planted'])} "
           f"right ({ent['n_part_right']} right part), {ent['false_discoveries']} false "
           f"discoveries ({ent.get('explained_discoveries', 0)} explained). False discoveries: "
           "free units whose top entry is the planted unit's expected one, with at least its "
           f"effect. {rec['n_free']} free units; {rec['n_samples']} base samples; minimum part "
           f"area {rec['min_area']:g} px; median label sparsity of all units "
           f"{rec['median_sparsity']:.3f}; {rec.get('n_sparsity_top_decile')}/"
           f"{len(rec['planted'])} planted units in the top decile of sparsity (the paper's, "
           f"over all 45 entries), {rec.get('n_metric_sparsity_top_decile')}/"
           f"{len(rec['planted'])} in the top decile of sparsity across parts on the expected "
           "metric (post hoc; the 45-entry measure mixes units). r renders / r generated: the planted unit's Pearson r "
           "with its parameter on held-out renders / on generated images (psi 1); segmenter r: "
           "the expected part metric measured on the segmenter's mask of G(z) vs the true mask; "
           "metric ~ parameter within breed: Pearson r, within breeds, of the planted parameter "
           "with its expected part metric measured on G(z) with the segmenter's mask / on the "
           "render with the true mask (a sweep cannot show a within-breed change the first "
           "cannot see)."]
  btables = []
  if "boundary" in summary:
    b = summary["boundary"]
    notes.append(f"Boundary check {b['orig_name']} -> {b['target_name']} ({b['n_paths']} of "
                 f"{b['n_searches']} searches reached the boundary). Renderer parameters that "
                 "separate the breeds most: " + ", ".join(
                     f"{p['param']} ({p['separation']:.1f})" for p in b["parameters"][:6]) + ".")
    for metric, m in b["per_metric"].items():
      bhead = ["part", f"path mean |change| ({metric})", "signed change at boundary",
               "breed difference (signed)", "Cohen d"]
      brows = [[p, _f(m["path_change"][p], "{:.3f}"), _f(m["boundary_change"][p], "{:+.3f}"),
                _f(m["truth"][p], "{:+.3f}"), _f(m["cohen_d"][p])]
               for p in m["path"]["truth_order"]]
      pa, bo = m["path"], m["boundary"]
      btables.append((f"{metric}: path mean |change| Spearman {_f(pa['spearman'])}, top-"
                      f"{pa['k']} overlap {pa['top_k_overlap']}/{pa['k']} (top 3 "
                      f"{', '.join(pa['method_order'][:3])}); change at the boundary Spearman "
                      f"{_f(bo['spearman'])}, top-{bo['k']} overlap {bo['top_k_overlap']}/"
                      f"{bo['k']} (top 3 {', '.join(bo['method_order'][:3])}), sign right for "
                      f"{m['sign_agreement']}/{m['k']}; truth's top 3 "
                      f"{', '.join(pa['truth_order'][:3])}", bhead, brows))

  def md_table(h, rs):
    return "\n".join(["| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
                     + ["| " + " | ".join(r) + " |" for r in rs])

  def html_table(h, rs):
    return ("<table border='1' style='border-collapse:collapse;font-size:0.85em'><tr>"
            + "".join(f"<th>{html.escape(x)}</th>" for x in h) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>"
                      for r in rs) + "</table>")

  md = ["# Planted-truth validation", "", md_table(head, rows), "", notes[0], ""]
  ht = ["<h3>Recovery of planted units</h3>", html_table(head, rows),
        f"<p>{html.escape(notes[0])}</p>"]
  if btables:
    md += ["## Boundary check", "", notes[1], ""]
    ht += ["<h3>Boundary check</h3>", f"<p>{html.escape(notes[1])}</p>"]
    for title, h, rs in btables:
      md += [f"### {title}", "", md_table(h, rs), ""]
      ht += [f"<h4>{html.escape(title)}</h4>", html_table(h, rs)]
  return "\n".join(md), "\n".join(ht)
