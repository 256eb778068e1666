"""Sweep summaries: label changes, sparsity, strongest labels, clustering, class relevance."""

import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from linkjax import unit_analysis as ua
from linkjax import unit_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
L = 9


def _metrics_for(effects, n_samples=4, steps=3, seed=0):
  """Metrics [S, U, steps, L, 5] where unit i scales label effects[i]'s area and luminance.

  effects: per unit a label index (one-label unit), 'all' (every label and metric changes), or None.
  """
  rng = np.random.default_rng(seed)
  n_u = len(effects)
  m = np.zeros((n_samples, n_u, steps, L, 5), np.float32)
  m[..., 0] = 100.0  # areas well above min_area
  m[..., 1:] = rng.uniform(0.2, 0.8, (n_samples, n_u, 1, L, 4))  # constant along the sweep
  t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
  for u, e in enumerate(effects):
    if e == "all":
      m[:, u, :, :, 0] = 100.0 * (1.0 + t)[None, :, None]
      m[:, u, :, :, 1:] += t[None, :, None, None]
    elif e is not None:
      m[:, u, :, e, 0] = 100.0 * (1.0 + 2.0 * t)[None, :]  # relative area change +2
      m[:, u, :, e, 1] += 0.3 * t[None, :]
  return m


def test_changes_vectors_sparsity_and_strongest_label():
  effects = [3, 7, "all", None]
  m = _metrics_for(effects)
  ch = ua.label_changes(m)
  assert ch.shape == (4, 4, L, 5)
  np.testing.assert_allclose(ch[:, 0, 3, 0], 2.0, rtol=1e-6)  # relative area
  np.testing.assert_allclose(ch[:, 0, 3, 1], 0.3, rtol=1e-5)
  assert np.count_nonzero(ch[:, 0]) == 2 * 4  # only label 3's area and luminance
  vec = ua.unit_vectors(ch)
  np.testing.assert_allclose(vec[1, 7, :2], [2.0, 0.3], rtol=1e-5)
  class_idx = np.array([0, 0, 1, 1])
  sp = ua.sparsity(ch, class_idx, [0, 1])
  assert sp["overall"].shape == (3, 4) and sp["per_metric"].shape == (3, 4, 5)
  # Hoyer of (2, 0.3, 0, ...) over 45 entries, computed by hand.
  x = np.zeros(45)
  x[[15, 16]] = [2.0, 0.3]
  k = np.sqrt(45)
  expected = (k - np.abs(x).sum() / np.linalg.norm(x)) / (k - 1)
  np.testing.assert_allclose(sp["overall"][:, 0], expected, rtol=1e-5)
  np.testing.assert_allclose(sp["per_metric"][:, 0, :2], 1.0, rtol=1e-5)  # one label per metric
  assert np.all(sp["overall"][:, 2] < 0.5)  # 'all' is dense
  np.testing.assert_array_equal(sp["overall"][:, 3], 0.0)  # no change: 0 by convention
  np.testing.assert_array_equal(ua.strongest_label(vec), [3, 7, ua.strongest_label(vec)[2], -1])


def _toy_sweep(n_units=12, seed=0):
  """A synthetic sweep: units 0..n-1 each drive one label (u % L); probabilities with known dp."""
  rng = np.random.default_rng(seed)
  effects = [u % L for u in range(n_units)]
  metrics = _metrics_for(effects, n_samples=4, seed=seed)
  metrics[..., 0] *= rng.uniform(0.9, 1.1, metrics.shape[:-2] + (L,)).astype(np.float32)
  class_idx = np.array([5, 5, 9, 9], np.int32)
  classes = np.array([5, 9], np.int32)
  probs = np.full((4, n_units, 3, 2), 0.5, np.float32)
  # Unit u lowers class 5's probability by 0.02 u at the last step, and class 9's by 0.4 for u < 3.
  probs[:2, :, 2, 0] = 0.5 - 0.02 * np.arange(n_units)
  probs[2:, :3, 1, 1] = 0.1
  return {"metrics": metrics, "probs": probs, "pred": np.zeros((4, n_units, 3), np.int32),
          "base_metrics": metrics[:, 0, 0], "base_probs": np.full((4, 2), 0.6, np.float32),
          "base_pred": np.zeros(4, np.int32), "units": np.arange(n_units, dtype=np.int32) * 10,
          "sample_idx": np.arange(4), "class_idx": class_idx, "classes": classes,
          "values": np.tile(np.linspace(0, 1, 3, dtype=np.float32), (n_units, 1)),
          "lo": np.zeros(n_units, np.float32), "hi": np.ones(n_units, np.float32)}


def test_delta_p_and_class_relevance():
  sw = _toy_sweep()
  u = np.arange(12)
  dp = ua.delta_p(sw, "max_drop")  # base 0.6 - min over steps
  np.testing.assert_allclose(dp[0], 0.6 - (0.5 - 0.02 * u), rtol=1e-5)
  np.testing.assert_allclose(dp[2], np.where(u < 3, 0.5, 0.1), rtol=1e-5)
  fl = ua.delta_p(sw, "first_last")  # p(first) - p(last)
  np.testing.assert_allclose(fl[1], 0.02 * u, atol=1e-6)
  np.testing.assert_allclose(fl[3], 0.0, atol=1e-7)
  rel = ua.class_relevance(dp, sw["class_idx"], [5, 9], threshold=0.15)
  np.testing.assert_allclose(rel["mean"][0], 0.1 + 0.02 * u, rtol=1e-5)
  np.testing.assert_array_equal(rel["relevant"][0], u >= 3)  # 0.1 + 0.02 u > 0.15 <=> u >= 3
  np.testing.assert_array_equal(rel["relevant"][1], u < 3)
  np.testing.assert_array_equal(rel["counts"], [9, 3])
  np.testing.assert_array_equal(rel["shared"], [[9, 0], [0, 3]])
  assert rel["intersections"] == [((5,), 9), ((9,), 3)]
  expected = np.corrcoef(0.1 + 0.02 * u, np.where(u < 3, 0.5, 0.1))[0, 1]
  assert expected < -0.5
  np.testing.assert_allclose(rel["corr"][0, 1], expected, rtol=1e-5)
  with pytest.raises(ValueError):
    ua.delta_p(sw, "nope")


def test_clustering_separates_label_groups():
  x = ua.normalise_vectors(ua.unit_vectors(ua.label_changes(_toy_sweep(18)["metrics"])))
  cl = ua.cluster_units(x, 9)
  labels = cl["labels"]
  for u in range(9):  # units u and u + 9 drive the same label: same cluster, others differ
    assert labels[u] == labels[u + 9]
  assert len(set(labels.tolist())) == 9
  assert sorted(cl["order"].tolist()) == list(range(18))


def test_reports_write_figures_and_tables(tmp_path):
  sw = _toy_sweep(12)
  names = [f"p{i}" for i in range(L)]
  res = unit_report.summarize_units(sw, tmp_path / "sum", label_names=names, n_clusters=4)
  for f in ("sparsity_hist.png", "tsne.png", "clusters.png"):
    assert (tmp_path / "sum" / f).stat().st_size > 2000
  with open(tmp_path / "sum" / "units.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["unit"]) for r in rows] == list(range(0, 120, 10))
  assert [r["strongest_label"] for r in rows] == [names[u % L] for u in range(12)]
  assert all(r["tsne_x"] and 1 <= int(r["cluster"]) <= 4 for r in rows)
  assert res["tsne"].shape == (12, 2) and np.all(np.isfinite(res["tsne"]))
  rel = unit_report.relevance_report(sw, tmp_path / "rel", threshold=0.15)
  for f in ("delta_p_hist.png", "relevant.png", "correlation.png"):
    assert (tmp_path / "rel" / f).stat().st_size > 2000
  with open(tmp_path / "rel" / "relevant_units.csv") as f:
    rows = list(csv.DictReader(f))
  assert rows[1] == {"class": "9", "n_relevant": "3", "units": "0 10 20"}
  assert rel["counts"].tolist() == [9, 3]


def test_binaries_on_a_saved_sweep(tmp_path):
  sw = _toy_sweep(6)
  d = tmp_path / "sweep"
  d.mkdir()
  np.savez(d / "sweep.npz", **sw)
  strips = d / "strips"
  strips.mkdir()
  np.savez(strips / "unit_0010.npz", images=np.zeros((2, 3, 8, 8, 3), np.uint8),
           values=np.linspace(0, 1, 3), sample_idx=np.arange(2))
  for mod, extra in (("experiments.unit_summary", ["--n_clusters=3"]),
                     ("experiments.class_relevance", ["--threshold=0.15", "--delta=first_last"])):
    proc = subprocess.run([sys.executable, "-m", mod, f"--sweep={d}", f"--out={tmp_path / mod}",
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "experiments.unit_summary" / "strip_unit_0010.png").exists()
  assert (tmp_path / "experiments.unit_summary" / "label_vectors.csv").exists()
  with open(tmp_path / "experiments.class_relevance" / "delta_p.csv") as f:
    rows = list(csv.DictReader(f))
  # first_last for class 5: 0.02 u (units 0..5 -> ids 0, 10, ...); class 9: 0.
  np.testing.assert_allclose([float(r["class5"]) for r in rows], 0.02 * np.arange(6), atol=1e-6)
  np.testing.assert_allclose([float(r["class9"]) for r in rows], 0.0, atol=1e-6)
