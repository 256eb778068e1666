"""The planted-truth validation (linkjax.miniworld.validate): scores, boundary check, benchmark."""

import json
import shutil

import jax
import numpy as np
import pytest

from linkjax import demo, miniworld, quantify
from linkjax.miniworld import truth as truth_lib
from linkjax.miniworld import planted as planted_lib
from linkjax.miniworld import validate, validate_benchmark

PARTS = list(miniworld.PART_NAMES[1:])  # leg, body, tail, tongue, eye, nose, snout, ear, head
M = len(quantify.METRIC_NAMES)


def _entry(part: str, metric: str) -> tuple[int, int]:
  return PARTS.index(part), quantify.METRIC_NAMES.index(metric)


# --------------------------------------------------------------------------- recovery scores


def _vectors(n_units: int = 12, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(0.0, 0.01, size=(n_units, len(PARTS), M))


def test_score_units_right_wrong_ranks_and_false_discoveries():
  v = _vectors()
  ear, tail, body_lum = _entry("ear", "area"), _entry("tail", "area"), _entry("body", "luminance")
  v[2][ear] = 1.0                      # planted ear unit: right
  v[5][tail] = 0.5                     # planted tail unit: right part, but its top is angle ...
  v[5][_entry("tail", "angle")] = 5.0  # ... (after per-metric RMS scaling)
  v[7][body_lum] = 0.8                 # planted body-luminance unit: right
  v[9][ear] = 1.5                      # a free unit changes the ear area more: false discovery
  v[10][ear] = 0.9                     # a free ear-area unit with a smaller effect: not one
  v[11][body_lum] = 0.5                # a weaker free body-luminance unit: not one
  planted = ((2, "ear_len"), (5, "tail_len"), (7, "body_luminance"))
  sp = np.linspace(0.1, 0.9, 12)
  out = validate.score_units(v, np.arange(12), planted, PARTS, sparsity=sp)
  e_ear, e_tail, e_lum = out["planted"]
  assert e_ear["right"] and (e_ear["top_part"], e_ear["top_metric"]) == ("ear", "area")
  assert e_ear["false_discoveries"] == 1 and e_ear["free_top_same"] == 2
  assert e_ear["unit_rank_on_expected"] == 2 and e_ear["expected_rank_in_unit"] == 1
  assert not e_tail["right"] and e_tail["part_right"]
  assert (e_tail["top_part"], e_tail["top_metric"]) == ("tail", "angle")
  assert e_tail["expected_rank_in_unit"] == 2
  assert e_lum["right"] and e_lum["false_discoveries"] == 0 and e_lum["free_top_same"] == 1
  assert out["n_right"] == 2 and out["n_part_right"] == 3 and out["false_discoveries"] == 1
  assert out["n_free"] == 9 and out["free_top_counts"]["ear:area"] == 2
  # Percentile of the unit's sparsity among all units: unit 7 is the 8th smallest of 12.
  assert e_lum["sparsity_percentile"] == pytest.approx(100 * 8 / 12)
  assert out["n_sparsity_top_decile"] == 0
  sp_top = np.linspace(0.0, 0.5, 12)
  sp_top[7] = 1.0  # the sparsest unit: percentile 100; units 2 and 5 at 25 and 50
  top = validate.score_units(v, np.arange(12), planted, PARTS, sparsity=sp_top)
  assert top["n_sparsity_top_decile"] == 1 and top["planted"][2]["sparsity_percentile"] == 100
  # The per-metric sparsity is read on each planted unit's expected metric only.
  msp = np.zeros((12, M))
  msp[2, quantify.METRIC_NAMES.index("area")] = 1.0       # ear unit: sparsest on area
  msp[7, quantify.METRIC_NAMES.index("area")] = 1.0       # body-luminance unit: on the wrong one
  msp[:, quantify.METRIC_NAMES.index("luminance")] = np.linspace(0, 1, 12)[::-1]
  ms = validate.score_units(v, np.arange(12), planted, PARTS, metric_sparsity=msp)
  got = [e["metric_sparsity_percentile"] for e in ms["planted"]]
  assert got[0] == 100 and got[2] == pytest.approx(100 * 5 / 12)
  assert ms["n_metric_sparsity_top_decile"] == 1 and ms["n_sparsity_top_decile"] is None
  # Units are matched by index, not position.
  shuffled = validate.score_units(v[::-1], np.arange(12)[::-1], planted, PARTS, sparsity=sp[::-1])
  for got, want in zip(shuffled["planted"], out["planted"]):
    assert got.pop("effect") == pytest.approx(want.pop("effect"), rel=1e-12)
    assert got == want
  with pytest.raises(ValueError, match="not swept"):
    validate.score_units(v, np.arange(12), ((40, "ear_len"),), PARTS)


def test_score_units_signed_change_and_unit_that_changes_nothing():
  v = _vectors(4)
  v[1] = 0.0
  signed = -v.copy()
  out = validate.score_units(v, np.arange(4), ((1, "eye_r"), (2, "head_r")), PARTS,
                             signed=signed)
  dead, head = out["planted"]
  assert dead["top_part"] is None and not dead["right"] and dead["effect"] == 0.0
  assert head["signed_change"] == pytest.approx(-v[2][_entry("head", "area")])


def test_entry_scaling_and_explained_discoveries():
  """An entry that every unit changes (noise) wins under the metric scaling, not per entry;
  a free unit that encodes a parameter of the same part metric is not a false discovery."""
  n = 10
  v = np.full((n, len(PARTS), M), 0.01)
  nose_angle, ear, leg = _entry("nose", "angle"), _entry("ear", "area"), _entry("leg", "area")
  v[:, nose_angle[0], nose_angle[1]] = np.linspace(30.0, 40.0, n)  # every unit, noisily
  body = _entry("body", "area")
  v[:, body[0], body[1]] = 0.5  # every unit alike (raises the area RMS)
  v[0][ear] = 0.5                                   # planted ear unit
  v[4][ear] = 0.6                                   # free unit that encodes ear_w
  v[5][ear] = 0.7                                   # free unit that encodes nothing
  v[1][leg] = 0.5                                   # planted leg unit
  planted = ((0, "ear_len"), (1, "leg_len"))
  metric = validate.score_units(v, np.arange(n), planted, PARTS, scaling="metric")
  assert [e["top_metric"] for e in metric["planted"]] == ["angle", "angle"]
  corr = {"ear_len": np.zeros(n), "ear_w": np.zeros(n), "leg_len": np.zeros(n)}
  corr["ear_w"][4] = -0.6
  corr["leg_len"][5] = 0.9  # encodes a parameter of another part: no excuse for ear area
  entry = validate.score_units(v, np.arange(n), planted, PARTS, scaling="entry",
                               param_corr=corr)
  e_ear, e_leg = entry["planted"]
  assert e_ear["right"] and e_leg["right"]
  assert e_ear["false_discoveries"] == 1 and e_ear["explained_discoveries"] == 1
  assert e_ear["unit_rank_on_expected"] == 3
  assert validate.explaining_params("ear", "area") == ("ear_len", "ear_w")
  with pytest.raises(ValueError, match="scaling"):
    validate.scale_vectors(v, "log")


def test_unit_correlations_within_class():
  """A unit that only tells the classes apart correlates with a parameter that differs by class
  when pooled, not within class; a unit that tracks the parameter does both."""
  rng = np.random.default_rng(3)
  n = 400
  c = np.arange(n) % 2
  theta = rng.uniform(-0.3, 0.3, size=(n, miniworld.THETA_DIM)).astype(np.float32)
  i = miniworld.PARAM_NAMES.index("tail_len")
  theta[:, i] += np.where(c == 1, 0.6, -0.6)  # class 1: longer tails
  value = np.asarray(planted_lib.param_values(jax.numpy.asarray(theta), ("tail_len",)))[:, 0]
  r = np.stack([c.astype(np.float64),                      # class detector
                value + rng.normal(0, 0.01 * value.std(), n),  # tracks the tail length
                np.ones(n)], axis=1)                       # constant
  pooled = planted_lib.unit_correlations(r, theta, ("tail_len",))["tail_len"]
  within = planted_lib.unit_correlations(r, theta, ("tail_len",), class_idx=c)["tail_len"]
  assert pooled[0] > 0.8 and abs(within[0]) < 1e-9
  assert pooled[1] > 0.99 and within[1] > 0.99
  assert pooled[2] == 0.0 and within[2] == 0.0


def test_recover_on_a_hand_made_sweep():
  """Metrics whose ear area grows only along unit 3's sweep: unit 3 is named ear area."""
  rng = np.random.default_rng(1)
  s, u = 6, 5
  metrics = np.tile(rng.uniform(30, 60, size=(s, 1, 1, len(PARTS), M)), (1, u, 2, 1, 1))
  metrics = metrics + rng.normal(0, 0.01, size=metrics.shape)
  ear = _entry("ear", "area")
  metrics[:, 3, 1, ear[0], ear[1]] *= 1.5
  arrays = {"metrics": metrics.astype(np.float32), "units": np.arange(u),
            "class_idx": np.arange(s) % 3, "classes": np.arange(3),
            "label_names": np.asarray(miniworld.PART_NAMES)}
  out = validate.recover(arrays, ((3, "ear_len"),), min_area=5.0)
  for res in (out, out["entry_scaling"]):
    e = res["planted"][0]
    assert e["right"] and e["signed_change"] == pytest.approx(0.5, abs=0.05)
    assert e["sparsity_percentile"] == 100.0 and res["false_discoveries"] == 0
    assert e["metric_sparsity_percentile"] == 100.0


# --------------------------------------------------------------------------- boundary check


def test_path_changes_until_the_boundary():
  t = 5
  pm = np.zeros((t, 2, M))
  pm[..., quantify.AREA] = 1.0  # ratios: unchanged
  pm[:, 0, quantify.AREA] = [1.0, 1.2, 1.4, 0.5, 0.5]  # part 0 area
  pm[:, 1, 1] = [0.0, -0.1, -0.2, 0.9, 0.9]            # part 1 luminance difference
  pm[1, 1, 2] = np.nan
  got = validate.path_changes(pm, boundary=2)
  np.testing.assert_allclose(got[0, quantify.AREA], (0 + 0.2 + 0.4) / 3)
  np.testing.assert_allclose(got[1, 1], (0 + 0.1 + 0.2) / 3)
  np.testing.assert_allclose(got[1, 2], 0.0)  # the NaN point skipped
  whole = validate.path_changes(pm, boundary=-1)
  np.testing.assert_allclose(whole[0, quantify.AREA], (0 + 0.2 + 0.4 + 0.5 + 0.5) / 5)


def test_breed_differences_and_rank_agreement():
  rng = np.random.default_rng(2)
  a = rng.normal(50, 2, size=(200, 3, M))
  b = a.copy()
  b[:, 0, quantify.AREA] *= 2.0   # part 0: area doubles
  b[:, 2, quantify.AREA] *= 1.25  # part 2: a quarter larger
  b[:, 1, 1] -= 0.3               # part 1: darker
  d = truth_lib.breed_differences(a, b)
  np.testing.assert_allclose(d["relative"][:, quantify.AREA], [1.0, 0.0, 0.25], atol=1e-9)
  np.testing.assert_allclose(d["signed"][1, 1], -0.3, atol=1e-9)
  np.testing.assert_allclose(d["relative"][1, 1], 0.3, atol=1e-9)
  assert d["cohen_d"][0, quantify.AREA] > 10 and d["cohen_d"][1, quantify.AREA] < 1e-9

  names = ["p0", "p1", "p2", "p3"]
  truth = np.array([1.0, 0.0, 0.25, 0.1])
  same = validate.rank_agreement(np.array([0.5, 0.01, 0.2, 0.05]), truth, names, k=2)
  assert same["spearman"] == pytest.approx(1.0) and same["top_k_overlap"] == 2
  assert same["truth_top1_method_rank"] == 1 and same["method_order"][:2] == ["p0", "p2"]
  wrong = validate.rank_agreement(np.array([0.0, 0.9, 0.1, np.nan]), truth, names, k=2)
  assert wrong["spearman"] < 0 and wrong["truth_top1_method_rank"] == 3
  assert wrong["method_order"][-1] == "p3"  # never measured: ranked last


def test_boundary_check_reads_counterfactual_paths(tmp_path):
  """Hand-made path CSVs: the tail area changes most before the boundary."""
  from linkjax import files  # noqa: PLC0415

  header = (["step", "pred", "prob_orig", "prob_target", "is_boundary", "mse"]
            + [f"{p}_{m}" for p in PARTS for m in quantify.METRIC_NAMES])
  pm = np.zeros((4, len(PARTS), M))
  pm[..., quantify.AREA] = 1.0
  pm[:, PARTS.index("tail"), quantify.AREA] = [1.0, 1.5, 2.0, 9.0]
  pm[:, PARTS.index("snout"), quantify.AREA] = [1.0, 1.2, 1.4, 1.0]
  rows = [[s, 2 if s < 2 else 4, 0.5, 0.5, int(s == 2), 0.0] + list(pm[s].reshape(-1))
          for s in range(4)]
  files.write_csv(tmp_path / "pair0.csv", header, rows)
  files.write_csv(tmp_path / "pair1.csv", header, rows)
  # A search that reported success but whose analysed path never flips (no boundary row),
  # with a huge tail change: it must not enter the averages.
  never = [r[:4] + [0] + r[5:] for r in rows]
  for r in never:
    r[6 + PARTS.index("tail") * M + quantify.AREA] = 50.0
  files.write_csv(tmp_path / "pair2.csv", header, never)
  files.write_json(tmp_path / "summary.json", {
      "orig_class": 2, "target_class": 4,
      "pairs": [{"success": True}, {"success": False}, {"success": True}]})
  out = validate.boundary_check(tmp_path, PARTS, key=jax.random.key(0), n_renders=40)
  area = out["per_metric"]["area"]
  assert out["n_paths"] == 1 and out["n_searches"] == 3
  assert area["path"]["method_order"][:2] == ["tail", "snout"]
  assert area["path_change"]["tail"] == pytest.approx((0 + 0.5 + 1.0) / 3)
  # At the boundary (point 2) the tail area has doubled and the snout's grown by 40 %.
  assert area["boundary_change"]["tail"] == pytest.approx(1.0)
  assert area["boundary_change"]["snout"] == pytest.approx(0.4)
  assert area["boundary"]["method_order"][:2] == ["tail", "snout"]
  # The renderer's truth for dotted bruiser -> ember foxhound: snout and tail areas lead and
  # grow (longer snout and tail), as the hand-made paths have them.
  assert set(area["path"]["truth_order"][:2]) == {"snout", "tail"}
  assert area["truth"]["tail"] > 0.3 and area["truth"]["snout"] > 0.3
  assert area["path"]["top_k_overlap"] >= 2 and area["sign_agreement"] >= 2
  assert out["parameters"][0]["param"] == "body_sat"
  # Both statistics reach the tables.
  rec = validate.score_units(_vectors(), np.arange(12), ((2, "ear_len"),), PARTS,
                             sparsity=np.linspace(0, 1, 12))
  rec["entry_scaling"] = rec
  rec.update(n_samples=10, min_area=5.0, median_sparsity=0.5)
  md, _ = validate.tables({"recovery": rec, "boundary": out})
  assert "## Boundary check" in md and f"sign right for {area['sign_agreement']}/3" in md
  assert "| tail | 0.500 | +1.000 |" in md


def test_measurability_against_a_direct_computation():
  """Within-breed r of a parameter with its part metric, on G(z) with the segmenter and on the
  render with the true mask, recomputed here from the same images."""
  from linkjax import bundle as bundle_lib  # noqa: PLC0415
  from linkjax.miniworld import groundtruth  # noqa: PLC0415

  models, params = bundle_lib.ModelBundle.load(generator=demo.BUILTIN["generator"],
                                               segmenter=demo.BUILTIN["segmenter"])
  key = jax.random.key(4)
  got = truth_lib.measurability(models, params, ("tail_len", "body_luminance"), key=key, n=60,
                                min_area=5.0, batch=30)
  z, c = groundtruth.heldout_latents(key, 60, models.z_dim)
  # The same batch sizes as measurability's, so both compute the very same float32 metrics.
  data = groundtruth.generate_and_segment(models, params, z, c, psi=1.0, batch=30)
  meas, true = groundtruth.paired_part_metrics(data, len(miniworld.PART_NAMES), 30)
  theta = np.asarray(groundtruth.true_theta(z, c))
  for name, part, metric in (("tail_len", "tail", "area"), ("body_luminance", "body", "luminance")):
    l, m = miniworld.PART_NAMES.index(part) - 1, quantify.METRIC_NAMES.index(metric)
    value = np.asarray(planted_lib.param_values(jax.numpy.asarray(theta), (name,)))[:, 0]
    sel = (meas[:, l, 0] >= 5.0) & (true[:, l, 0] >= 5.0)
    for key_name, x in (("r_generated_segmenter", meas[:, l, m]), ("r_render_true", true[:, l, m])):
      a, b = x[sel].astype(np.float64), value[sel].astype(np.float64)
      for k in np.unique(c[sel]):
        s = c[sel] == k
        a[s] -= a[s].mean()
        b[s] -= b[s].mean()
      want = (a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())
      assert got[name][key_name] == pytest.approx(want, abs=1e-6), (name, key_name)
    assert got[name]["n"] == int(sel.sum()) and (got[name]["part"], got[name]["metric"]) == (part, metric)
  # Exact masks on renders see the body's luminance within a breed almost perfectly.
  assert got["body_luminance"]["r_render_true"] > 0.8


def test_pair_csv_is_read_by_column_name(tmp_path):
  """Columns in another order, an extra column: the same numbers; a missing one is an error."""
  from linkjax import files  # noqa: PLC0415
  from linkjax.counterfactual import figures as cf_figures  # noqa: PLC0415

  rng = np.random.default_rng(0)
  pm = rng.normal(size=(3, len(PARTS), M))
  names = [f"{p}_{m}" for p in PARTS for m in quantify.METRIC_NAMES]
  header = ["step", "is_boundary", "lpips"] + names[::-1]
  rows = [[s, int(s == 1), 0.1] + list(pm[s].reshape(-1)[::-1]) for s in range(3)]
  files.write_csv(tmp_path / "p.csv", header, rows)
  vals, boundary = cf_figures.read_pair_csv(tmp_path / "p.csv", PARTS)
  assert boundary == 1
  np.testing.assert_allclose(vals, pm, rtol=1e-8)
  files.write_csv(tmp_path / "q.csv", header[:-1], [r[:-1] for r in rows])
  with pytest.raises(ValueError, match=f"{PARTS[0]}_{quantify.METRIC_NAMES[0]}"):
    cf_figures.read_pair_csv(tmp_path / "q.csv", PARTS)


def test_boundary_change_signed():
  pm = np.ones((3, 2, M))
  pm[:, 0, quantify.AREA] = [1.0, 0.5, 0.8]
  pm[:, 1, 1] = [0.0, -0.2, 0.3]
  np.testing.assert_allclose(validate.boundary_change(pm, 1)[:, [0, 1]], [[-0.5, 1.0],
                                                                          [0.0, -0.2]])
  np.testing.assert_allclose(validate.boundary_change(pm, -1)[0, 0], -0.2)


def test_tables_render_both_scalings():
  """A unit named nose angle by the method's scaling and ear area per entry: the row shows
  both answers, the notes both counts."""
  n = 12
  v = _vectors(n)
  nose_angle, ear = _entry("nose", "angle"), _entry("ear", "area")
  v[:, nose_angle[0], nose_angle[1]] = np.linspace(35.0, 35.5, n)  # every unit (noise)
  v[:, _entry("body", "area")[0], _entry("body", "area")[1]] = 0.6  # raises the area RMS
  v[2][ear] = 0.5
  sp = np.linspace(0, 1, n)
  rec = validate.score_units(v, np.arange(n), ((2, "ear_len"),), PARTS, sparsity=sp)
  rec["entry_scaling"] = validate.score_units(v, np.arange(n), ((2, "ear_len"),), PARTS,
                                              sparsity=sp, scaling="entry")
  rec.update(n_samples=10, min_area=5.0, median_sparsity=0.5)
  md, html = validate.tables({"recovery": rec})
  assert md.startswith("# Planted-truth validation") and "<table" in html
  row = next(r for r in md.splitlines() if r.startswith("| 2 | ear_len |"))
  assert "| nose angle | no |" in row and "| ear area | yes |" in row
  assert "0/1 planted units named" in md and "Entry scaling (each part metric / its RMS over " \
      "units): 1/1 right" in md


# -------------------------------------------------------------------- the benchmark end to end


def test_demo_refuses_a_sweep_that_leaves_out_planted_units(tmp_path):
  """With the planted classifier, a sweep missing planted units fails before anything runs."""
  from linkjax.demo import run as run_lib  # noqa: PLC0415

  cfg = demo.make_config(classifier=str(validate.PLANTED_DIR), world=True,
                         sweep={"units": "0-200"})
  with pytest.raises(ValueError, match=r"planted units \[280, 360, 440\]"):
    demo.run_demo(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  planted = validate.read_planted(validate.PLANTED_DIR)
  for units in ("all", "40,120,200,280,360,440", "0-511"):
    run_lib.check_planted_swept(demo.make_config(world=True, sweep={"units": units}), planted)
  run_lib.check_planted_swept(cfg, ())  # no planted units: any sweep


@pytest.mark.slow
@pytest.mark.skipif(not all((p / "config.json").exists() for p in demo.BUILTIN.values()),
                    reason="miniworld weights not shipped in this tree")
def test_benchmark_on_a_tiny_run(tmp_path):
  """The whole benchmark at toy sizes, with a made-up planted map on the shipped classifier."""
  clf = tmp_path / "clf"
  shutil.copytree(demo.BUILTIN["classifier"], clf)
  record = json.loads((clf / "metrics.json").read_text())
  record["planted"] = [{"unit": 3, "param": "ear_len", "r": 0.5},
                       {"unit": 5, "param": "body_luminance", "r": 0.5}]
  (clf / "metrics.json").write_text(json.dumps(record))
  cfg = validate_benchmark.BenchmarkConfig(classifier=str(clf), pairs_per_class=12, units="0-7",
                                 samples_per_class=1, chunk=16, cf_pairs=1, cf_max_steps=20,
                                 quality_images=20, render_images=20)
  log: list[str] = []
  summary = validate_benchmark.run_benchmark(cfg, tmp_path / "run", log=log.append)
  out = tmp_path / "run" / "validate"
  v = json.loads((out / "validation.json").read_text())
  assert [e["unit"] for e in v["recovery"]["planted"]] == [3, 5]
  assert v["recovery"]["n_units"] == 8 and v["recovery"]["planted"][0]["r_heldout_renders"] == 0.5
  assert set(v["boundary"]["per_metric"]) == {"area", "luminance"}
  for strip in v["strips"]:
    assert (out / strip).is_file()
  assert (out / "recovery.md").read_text().startswith("# Planted-truth validation")
  report = (tmp_path / "run" / "report.html").read_text()
  assert report.index("Planted-truth validation") < report.index("Key numbers")
  assert summary["planted_units"] == 2
  assert set(v["measurability"]) == {"ear_len", "body_luminance"}
  for e in v["recovery"]["planted"]:
    assert e["metric_r_within_true"] == v["measurability"][e["param"]]["r_render_true"]
  assert v["recovery"]["entry_scaling"]["scaling"] == "entry"
  assert {"planted_right_entry_scaling", "planted_sparsity_top_decile"} <= set(summary)
  assert set(summary["boundary_spearman"]) == {"area_path", "area_boundary", "luminance_path",
                                               "luminance_boundary"}
  assert not (tmp_path / "run" / "similarity").exists()  # the benchmark's stages only
  again: list[str] = []
  validate_benchmark.run_benchmark(cfg, tmp_path / "run", log=again.append)
  assert all(f"[{s}] already done" in "\n".join(again) for s in validate_benchmark.BENCHMARK_STAGES)


def test_benchmark_refuses_bad_breeds_and_a_classifier_without_planted_units(tmp_path):
  with pytest.raises(ValueError, match="two different breeds"):
    validate_benchmark.BenchmarkConfig(orig=2, target=2)
  with pytest.raises(ValueError, match="two different breeds"):
    validate_benchmark.BenchmarkConfig(target=miniworld.NUM_CLASSES)
  cfg = validate_benchmark.BenchmarkConfig(classifier=str(demo.BUILTIN["classifier"]))
  with pytest.raises(ValueError, match="no planted units"):
    validate_benchmark.run_benchmark(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()
