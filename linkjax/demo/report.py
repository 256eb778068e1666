"""The demo's report: figures with captions, the key numbers (summary.json), quality checks."""

from __future__ import annotations

import html
import pathlib
from typing import Any

from linkjax import files
from linkjax.demo.config import DemoConfig, Thresholds
from linkjax.demo.stages import Context
from linkjax.miniworld import motion_check
from linkjax.miniworld import validate as validate_lib


def _models_phrase(cfg: DemoConfig) -> str:
  if cfg.shipped:
    return "the built-in miniature world"
  if cfg.miniworld:
    return "miniworld models from checkpoints (ground truth from the renderer)"
  return "external checkpoints"


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


def figure_list(ctx: Context, results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
  """(section title, relative image path, caption) for every figure, in report order."""
  out = ctx.out
  figs: list[tuple[str, str, str]] = []
  v = results.get("validate")
  if v is not None:
    for e, strip in zip(v["recovery"]["planted"], v.get("strips", [])):
      figs.append((f"Planted unit {e['unit']}: {e['param']}", f"validate/{strip}",
                   f"Sweep of unit {e['unit']}, trained to encode {e['param']} (expected to "
                   f"change the {e['expected_part']}'s {e['expected_metric']}): rows one base "
                   "sample per class, columns the unit set to evenly spaced values from its "
                   "minimum to its maximum over the base samples, every other unit unchanged. "
                   f"The method names {e['top_part']} {e['top_metric']} "
                   f"({'right' if e['right'] else 'wrong'})."))
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
  mo = results.get("motion")
  if mo is not None:
    figs.append(("Motion fields vs the true motion", "motion/motion_check.png",
                 _motion_caption(mo)))
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
  sm = (results.get("sweep") or {}).get("motion")
  if sm:
    for unit in sm["units"]:
      figs.append((f"Fig. 4C: motion of unit {unit}", f"sweep/strips/motion_unit_{unit:04d}.png",
                   f"Motion fields of unit {unit}'s sweep (linkjax.motion, no PUMP): each row a "
                   "base sample; middle the unperturbed image, left and right the images with "
                   "the unit at the minimum and maximum of its range, and between them the local "
                   "displacement from the unperturbed image after the global affine (titles: "
                   "its scale s, rotation and translation t in pixels). Arrow colour is the "
                   "direction, brightness the length; low-confidence (flat) regions carry no "
                   "arrows. Per-part mean/max displacements are in sweep/motion.json."))
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
    on, tn = (ctx.class_names[ctx.classes.index(o)] if o in ctx.classes else str(o),
              ctx.class_names[ctx.classes.index(t)] if t in ctx.classes else str(t))
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
      figs.append((f"Fig. 7: motion across the boundary, sample {i}",
                   f"counterfactual/pair{i}_flow.png",
                   "The frames just before and just after the decision boundary and the "
                   "displacement field between them (linkjax.motion: local flow after the "
                   "global affine, whose scale, rotation and translation the titles give), and "
                   "from the original image to the first flipped frame: where the image moves "
                   "as it changes class."))
      figs.append((f"Fig. 7: Grad-CAM, sample {i}", f"counterfactual/pair{i}_gradcam.png",
                   "Grad-CAM maps of the classifier (last stage) for the original class on the "
                   "original image, and for the target and original classes on the "
                   "counterfactual image."))
  return [(t, p, c) for t, p, c in figs if (out / p).exists()]


def _motion_caption(mo: dict[str, Any]) -> str:
  n = mo["pairs_per_case"] * len(mo["cases"])
  parts = [p for p in ("leg", "head", "ear", "body", "tail") if p in mo["ours"]]
  text = ("The renderer knows every part's geometry, so pairs that differ by a known change ("
          + ", ".join(mo["cases"]) + f"; {mo['pairs_per_case']} pairs each, 'combined' adds a "
          "shift of the animal, a longer or shorter leg and a random zoom/rotation/shift of the "
          "whole image) have an exact true displacement at every visible pixel. Rows: pairs of "
          "the last case; columns: I_o, I_p, the local flow linkjax.motion estimates (after its "
          "global affine), the true local motion on the animal"
          + (", and scikit-image's TV-L1 flow." if "tvl1" in mo else "."))
  for name, label in (("ours", "linkjax.motion"), ("tvl1", "TV-L1 (scikit-image)")):
    if name not in mo:
      continue
    e = mo[name]
    text += (f" {label} on all {n} pairs: endpoint error {e['animal']:.2f} px on the animal ("
             + ", ".join(f"{p} {e[p]:.2f}" for p in parts) + f"), {e['bg']:.2f} px on the "
             f"background; per-part mean local motion error {e['part_epe']:.2f} px, correlation "
             f"with the truth r = {e['r']:.2f}; global affine error {e['aff']:.2f} px"
             + (f"; {mo['seconds'][name]:.1f} s." if name in mo["seconds"] else "."))
  return text


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
            "counterfactual_median_steps", "planted_right", "planted_part_right",
            "planted_false_discoveries", "planted_explained_discoveries",
            "planted_sparsity_top_decile", "planted_metric_sparsity_top_decile",
            "planted_right_entry_scaling", "planted_false_discoveries_entry_scaling",
            "total_wall_s", "total_cpu_s"):
    if k in summary:
      rows.append((k, f(summary[k])))
  for name, v in (summary.get("motion") or {}).items():
    if isinstance(v, dict) and "epe_animal" in v:
      rows.append((f"motion_{name}_epe_animal_px", f(v["epe_animal"])))
      rows.append((f"motion_{name}_part_motion_r", f(v["part_motion_r"])))
  return rows


def write_report(ctx: Context, results: dict[str, dict[str, Any]],
                 summary: dict[str, Any]) -> pathlib.Path:
  """Writes report.html (figures with captions, key numbers) and returns its path."""
  figs = figure_list(ctx, results)
  parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           "<title>linkjax demo report</title>",
           "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
           "img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}"
           "figcaption{font-size:0.9em;color:#333}td{padding:2px 8px}</style></head><body>",
           "<h1>Linking in Style: demo report</h1>",
           f"<p>Models: {_models_phrase(ctx.cfg)}"
           f" (generator {html.escape(ctx.paths['generator'])}, classifier "
           f"{html.escape(ctx.paths['classifier'])}, segmenter "
           f"{html.escape(ctx.paths['segmenter'])}). Classes: "
           + html.escape(", ".join(f"{c} = {n}" for c, n in zip(ctx.classes, ctx.class_names)))
           + ".</p>"]
  if "pairs" in results:
    per = results["pairs"]["per_class"]
    missing = [c for c, v in per.items() if not v["accepted"]]
    parts.append("<p>Correctly classified pairs per class (accepted / drawn): " + html.escape(
        ", ".join(f"{c}: {v['accepted']}/{v['drawn']}" for c, v in per.items())) + "."
        + (html.escape(f" Class(es) {', '.join(missing)} have no correctly classified generated "
                       "image and are left out of the similarity, sweep, relevance and "
                       "counterfactual analyses.") if missing else "") + "</p>")
  if "validate" in results:
    _, table = validate_lib.tables(results["validate"])
    parts.append("<h2>Planted-truth validation</h2><p>The classifier has units trained to encode "
                 "known renderer parameters (see linkjax.miniworld.validate). For each, the "
                 "part and metric the method's sweep names (top of its label-change vector, "
                 "scaled two ways: each metric by its RMS over units and parts, the method's "
                 "own scaling and the primary score; and each part metric by its RMS over "
                 "units, a scaling added after the first run showed segmentation noise in "
                 "the nose's angle winning under the first, so not a blind test) against the "
                 "expected one; the unit's label-sparsity percentile among all units; free "
                 "units named alike with as much evidence (false discoveries, and in brackets "
                 "those that correlate with a parameter of that part metric); the planted "
                 "unit's correlation with its parameter on held-out renders and on generated "
                 "images; the segmenter's reliability for the expected part metric. Then the "
                 "boundary check: parts ranked by how much the counterfactual paths change "
                 "them vs how the two breeds truly differ.</p>"
                 + table)
  parts.append("<h2>Key numbers</h2><table>")
  for k, v in _number_rows(summary):
    parts.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>")
  parts.append("</table><p>All numbers are in summary.json.</p>")
  for title, path, caption in figs:
    parts.append(f"<figure><h2>{html.escape(title)}</h2><img src='{html.escape(path)}' "
                 f"alt='{html.escape(title)}'><figcaption>{html.escape(caption)}</figcaption>"
                 "</figure>")
  parts.append("</body></html>")
  path = ctx.out / "report.html"
  data = "\n".join(parts).encode()
  files.write_atomic(path, lambda f: f.write(data))
  return path


def build_summary(ctx: Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The key numbers of a run (summary.json)."""
  s: dict[str, Any] = {"builtin_world": ctx.cfg.shipped, "miniworld": ctx.cfg.miniworld,
                       "classes": list(ctx.classes), "class_names": list(ctx.class_names),
                       "models": ctx.paths}
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
  va = results.get("validate")
  if va:
    rec = va["recovery"]
    ent = rec["entry_scaling"]
    s.update(planted_units=len(rec["planted"]), planted_right=rec["n_right"],
             planted_part_right=rec["n_part_right"],
             planted_false_discoveries=rec["false_discoveries"],
             planted_explained_discoveries=rec["explained_discoveries"],
             planted_sparsity_top_decile=rec["n_sparsity_top_decile"],
             planted_metric_sparsity_top_decile=rec.get("n_metric_sparsity_top_decile"),
             planted_right_entry_scaling=ent["n_right"],
             planted_false_discoveries_entry_scaling=ent["false_discoveries"],
             planted_recovery=[{k: e.get(k) for k in (
                 "unit", "param", "expected_part", "expected_metric", "top_part", "top_metric",
                 "right", "sparsity_percentile", "metric_sparsity_percentile",
                 "false_discoveries")} for e in rec["planted"]])
    if "boundary" in va:
      pm = va["boundary"]["per_metric"]
      s.update(boundary_spearman={f"{m}_{stat}": v[stat]["spearman"]
                                  for m, v in pm.items() for stat in ("path", "boundary")},
               boundary_top_k_overlap={f"{m}_{stat}": v[stat]["top_k_overlap"]
                                       for m, v in pm.items() for stat in ("path", "boundary")})
  mo = results.get("motion")
  if mo:
    s["motion"] = {"cases": mo["cases"], "pairs_per_case": mo["pairs_per_case"],
                   "seconds": mo["seconds"], **{name: {
                       "epe_animal": mo[name]["animal"], "epe_background": mo[name]["bg"],
                       "epe_per_part": {p: mo[name][p] for p in motion_check.LABELS[1:]},
                       "part_motion_epe": mo[name]["part_epe"],
                       "part_motion_r": mo[name]["r"], "affine_error": mo[name]["aff"]}
                       for name in mo["methods"]}}
  s["stage_timing"] = {k: v.get("_timing") for k, v in results.items()}
  s["total_wall_s"] = float(sum(v["_timing"]["wall_s"] for v in results.values()))
  s["total_cpu_s"] = float(sum(v["_timing"]["cpu_s"] for v in results.values()))
  s["quality_checks"] = quality_checks(results, ctx.cfg.thresholds)
  return files.json_safe(s)
