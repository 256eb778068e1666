"""The demo pipeline (linkjax.demo) and the miniworld segmenter / ground-truth helpers."""

import json
import pathlib
import re
import time

import numpy as np
import pytest

from linkjax import demo, jobs
from linkjax.miniworld import groundtruth


def _weights_present() -> bool:
  return all((p / "config.json").exists() for p in demo.BUILTIN.values())


def test_segmentation_iou_matches_hand_count():
  pred = np.array([[[0, 1], [1, 2]], [[2, 2], [0, 1]]])
  true = np.array([[[0, 1], [2, 2]], [[2, 1], [0, 0]]])
  iou = groundtruth.segmentation_iou(pred, true, 4)
  # label 0: pred {a00, b10}, true {a00, b10, b11}: 2/3; label 1: pred {a01, a10, b11},
  # true {a01, b01}: 1/4; label 2: pred {a11, b00, b01}, true {a10, a11, b00}: 2/4; label 3: none.
  np.testing.assert_allclose(iou[:3], [2 / 3, 1 / 4, 2 / 4])
  assert np.isnan(iou[3])


def test_metric_correlations_linear_noise_and_absent():
  rng = np.random.default_rng(0)
  true = rng.uniform(30, 100, size=(40, 3, 5))
  measured = 2.0 * true + 1.0
  measured[:, 1, 1] = rng.normal(size=40)  # part 1 luminance: unrelated
  measured[:, 2, 0] = 0.0  # part 2 never found by the segmenter
  out = groundtruth.metric_correlations(measured, true, min_area=20.0)
  np.testing.assert_allclose(out["r"][0], 1.0, atol=1e-12)
  assert abs(out["r"][1, 1]) < 0.5
  assert np.all(np.isnan(out["r"][2]))
  np.testing.assert_array_equal(out["n"], [40, 40, 0])


def test_quality_checks_thresholds():
  results = {"world": {"classifier_accuracy_renders": 0.97, "classifier_accuracy_generated": 0.85,
                       "segmenter": {"miou": 0.61}},
             "link": {"mse_ratio_to_shuffled": 0.2}}
  q = demo.quality_checks(results, demo.Thresholds())
  assert {k: v["passed"] for k, v in q.items()} == {
      "classifier_accuracy_renders": True, "classifier_accuracy_generated": False,
      "segmenter_miou": True, "link_mse_ratio_to_shuffled": True}
  q = demo.quality_checks({"link": {"mse_ratio_to_shuffled": 0.6}},
                          demo.Thresholds(link_mse_ratio=0.5))
  assert list(q) == ["link_mse_ratio_to_shuffled"] and not q["link_mse_ratio_to_shuffled"]["passed"]


def test_rerun_with_other_settings_is_refused(tmp_path):
  (tmp_path / "run.json").write_text(json.dumps({"kind": "demo", "seed": 123}))
  with pytest.raises(jobs.JobError, match="other arguments"):
    demo.run_demo(demo.tiny_config(), tmp_path, log=lambda s: None)
  other = tmp_path / "mine"
  other.mkdir()
  (other / "thesis.txt").write_text("keep")
  with pytest.raises(jobs.JobError, match="not a linkjax demo run"):
    demo.run_demo(demo.tiny_config(), other, log=lambda s: None)
  assert (other / "thesis.txt").read_text() == "keep"


def test_unknown_stage_is_refused_before_anything_is_written(tmp_path):
  with pytest.raises(ValueError, match="unknown stages"):
    demo.run_demo(demo.tiny_config(), tmp_path / "run", log=lambda s: None, only=("sweeps",))
  assert not (tmp_path / "run").exists()


def test_tiny_config_merges_nested_overrides():
  cfg = demo.tiny_config(sweep={"units": "0-3"}, seed=5)
  assert cfg.sweep.units == "0-3" and cfg.sweep.samples_per_class == 1  # the preset's, kept
  assert cfg.seed == 5 and cfg.check_quality
  with pytest.raises(ValueError, match="need classes"):
    demo.make_config(generator="/some/checkpoint")


needs_weights = pytest.mark.skipif(not _weights_present(),
                                   reason="miniworld weights not shipped in this tree")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One `--tiny` run (quality checks off here; asserted separately), timed, and a rerun."""
  out = tmp_path_factory.mktemp("demo_tiny")
  cfg = demo.tiny_config(check_quality=False)
  first_log: list[str] = []
  t0 = time.time()
  summary = demo.run_demo(cfg, out, log=first_log.append)
  first = time.time() - t0
  second_log: list[str] = []
  t0 = time.time()
  again = demo.run_demo(cfg, out, log=second_log.append)
  second = time.time() - t0
  return {"out": out, "summary": summary, "again": again, "first_s": first, "second_s": second,
          "second_log": second_log}


@pytest.mark.slow
@needs_weights
def test_tiny_demo_report_summary_and_resume(tiny_run):
  out = tiny_run["out"]
  report = (out / "report.html").read_text()
  figures = re.findall(r"<img src='([^']+)'", report)
  assert len(figures) >= 15
  for f in figures:
    assert not pathlib.Path(f).is_absolute()
    assert (out / f).is_file(), f
  # Every PNG the stages wrote for the report's figure families is referenced.
  for pattern in ("world/*.png", "similarity/*.png", "cycle/*.png", "units/*.png",
                  "relevance/*.png", "counterfactual/pair0_*.png"):
    for p in out.glob(pattern):
      assert str(p.relative_to(out)) in figures, p
  on_disk = json.loads((out / "summary.json").read_text())
  for key in ("classifier_accuracy_renders", "classifier_accuracy_generated", "segmenter_miou",
              "segmenter_iou_per_label", "link_test_mse", "link_shuffled_mse", "ari_w", "ari_r",
              "rsa_corr", "cycle_mse_w_ratio_to_baseline", "class_relevant_units",
              "counterfactual_success_rate", "groundtruth_correlation", "quality_checks",
              "total_cpu_s", "total_wall_s"):
    assert key in on_disk, key
  assert on_disk["link_test_mse"] < on_disk["link_shuffled_mse"]
  assert on_disk["cycle_mse_w"] < on_disk["cycle_mse_w_baseline"]
  assert set(on_disk["groundtruth_correlation"]) == {"leg", "body", "tail", "tongue", "eye",
                                                     "nose", "snout", "ear", "head"}
  assert on_disk["n_units_swept"] == 24
  # The rerun skips every finished stage and only rewrites the report.
  skipped = [s for s in demo.STAGES
             if any(f"[{s}] already done" in ln for ln in tiny_run["second_log"])]
  # 'validate' runs only for a classifier with planted units, which the shipped one is not.
  assert skipped == [s for s in demo.STAGES if s != "validate"]
  assert not (out / "validate").exists()
  assert tiny_run["second_s"] < min(20.0, 0.25 * tiny_run["first_s"])
  assert tiny_run["again"]["quality_checks"] == tiny_run["summary"]["quality_checks"]


@pytest.mark.slow
@needs_weights
def test_shipped_weights_meet_quality_thresholds(tiny_run):
  checks = tiny_run["summary"]["quality_checks"]
  assert set(checks) == {"classifier_accuracy_renders", "classifier_accuracy_generated",
                         "segmenter_miou", "link_mse_ratio_to_shuffled"}
  failed = {k: v["value"] for k, v in checks.items() if not v["passed"]}
  assert not failed, failed


@pytest.mark.slow
@needs_weights
def test_check_quality_raises_exactly_when_a_threshold_is_missed(tiny_run):
  checks = tiny_run["summary"]["quality_checks"]
  failed = [k for k, v in checks.items() if not v["passed"]]
  log: list[str] = []
  if failed:
    with pytest.raises(demo.QualityError, match=failed[0]):
      demo.run_demo(demo.tiny_config(), tiny_run["out"], log=log.append)
  else:
    demo.run_demo(demo.tiny_config(), tiny_run["out"], log=log.append)
  # Loosened thresholds on the same finished run: everything passes, nothing is recomputed.
  lax = demo.Thresholds(classifier_accuracy_renders=0.0, classifier_accuracy_generated=0.0,
                        segmenter_miou=0.0, link_mse_ratio=10.0)
  demo.run_demo(demo.tiny_config(thresholds=lax), tiny_run["out"], log=log.append)
  assert not any("starting" in ln for ln in log)
