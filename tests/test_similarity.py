"""Tests of linkjax.similarity (Fig. 3A) and the similarity binary."""

import csv
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from linkjax import similarity

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _clustered_w_noise_r(n_classes=6, n_per_class=40, seed=0):
  """W: tight, far-apart class clusters; R: pure noise unrelated to class."""
  rng = np.random.default_rng(seed)
  class_idx = np.repeat(np.arange(n_classes, dtype=np.int32) * 3 + 1, n_per_class)
  centres = rng.standard_normal((n_classes, 16)) * 20.0
  w = (np.repeat(centres, n_per_class, axis=0)
       + rng.standard_normal((len(class_idx), 16))).astype(np.float32)
  r = np.abs(rng.standard_normal((len(class_idx), 32))).astype(np.float32)
  return w, r, class_idx


def test_matrices_match_scipy():
  x = np.random.default_rng(0).standard_normal((12, 7)).astype(np.float32) + 5.0
  np.testing.assert_allclose(np.asarray(similarity.distance_matrix(jnp.asarray(x))),
                             squareform(pdist(x.astype(np.float64))), atol=1e-4)
  np.testing.assert_allclose(np.asarray(similarity.correlation_matrix(jnp.asarray(x))),
                             np.corrcoef(x.astype(np.float64)), atol=1e-5)


def test_rsa_matches_scipy_and_identity():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((20, 5)).astype(np.float32)
  y = (x @ rng.standard_normal((5, 9)) + rng.standard_normal((20, 9))).astype(np.float32)
  iu = np.triu_indices(20, k=1)
  ref_corr = pearsonr(np.corrcoef(x)[iu], np.corrcoef(y)[iu])[0]
  ref_dist = pearsonr(pdist(x), pdist(y))[0]
  got = similarity.rsa(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose([float(got[0]), float(got[1])], [ref_corr, ref_dist], atol=1e-5)
  same = similarity.rsa(jnp.asarray(x), jnp.asarray(x))
  np.testing.assert_allclose([float(same[0]), float(same[1])], [1.0, 1.0], atol=1e-5)


def test_kmeans_matches_sklearn():
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((4, 6)) * 3.0
  x = (np.repeat(centres, 60, axis=0) + rng.standard_normal((240, 6))).astype(np.float32)
  ref = KMeans(n_clusters=4, n_init=20, random_state=0).fit(x.astype(np.float64))
  labels, inertia = similarity.kmeans(jax.random.key(0), jnp.asarray(x), k=4, n_init=20)
  assert float(inertia) <= ref.inertia_ * (1 + 1e-4)
  assert adjusted_rand_score(ref.labels_, np.asarray(labels)) > 0.99
  # Recompute the inertia of our labels independently.
  own = sum(np.sum((x[np.asarray(labels) == c] - x[np.asarray(labels) == c].mean(0)) ** 2)
            for c in range(4))
  assert float(inertia) == pytest.approx(own, rel=1e-4)
  # No retrace for a new key and new data of the same shape.
  before = similarity.kmeans._cache_size()
  similarity.kmeans(jax.random.key(1), jnp.asarray(x[::-1].copy()), k=4, n_init=20)
  assert similarity.kmeans._cache_size() == before


def test_ari_high_in_clustered_w_and_chance_in_noise_r():
  w, r, class_idx = _clustered_w_noise_r()
  config = similarity.SimilarityConfig(repeats=3, n_classes=4, n_per_class=30, n_init=5, seed=0)
  res = similarity.w_r_similarity(w, r, class_idx, config)
  np.testing.assert_allclose(res["ari_w"], 1.0, atol=1e-6)
  assert np.all(np.abs(res["ari_r"]) < 0.1), res["ari_r"]
  assert np.all(np.abs(res["rsa_dist"]) < 0.3), res["rsa_dist"]
  # Deterministic: same config, same numbers.
  again = similarity.w_r_similarity(w, r, class_idx, config)
  for c in similarity.CSV_COLUMNS:
    np.testing.assert_array_equal(res[c], again[c])


def test_draw_subset_classes_and_errors():
  class_idx = np.repeat(np.int32([5, 9, 11]), 10)
  idx = similarity.draw_subset(np.random.default_rng(0), class_idx, 2, 4)
  assert idx.size == 8 and np.unique(idx).size == 8
  assert np.unique(class_idx[idx]).size == 2
  with pytest.raises(ValueError, match="classes"):
    similarity.draw_subset(np.random.default_rng(0), class_idx, 4, 4)
  with pytest.raises(ValueError, match="n_per_class"):
    similarity.draw_subset(np.random.default_rng(0), class_idx, 2, 11)


def test_similarity_binary(tmp_path):
  w, r, class_idx = _clustered_w_noise_r(n_classes=4, n_per_class=20)
  pairs = tmp_path / "pairs"
  pairs.mkdir()
  n = len(class_idx)
  np.savez(pairs / "pairs.npz", w=w, r=r, class_idx=class_idx,
           z=np.zeros((n, 4), np.float32), logits=np.zeros((n, 20), np.float32),
           draw_idx=np.tile(np.arange(20, dtype=np.int32), 4))
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.similarity", f"--pairs={pairs}", "--repeats=2",
       "--n_classes=3", "--n_per_class=10", "--n_init=3", "--seed=1", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["repeat"] for r in rows] == ["0", "1"]
  assert list(rows[0]) == list(similarity.CSV_COLUMNS)
  ref = similarity.w_r_similarity(w, r, class_idx, similarity.SimilarityConfig(
      repeats=2, n_classes=3, n_per_class=10, n_init=3, seed=1))
  np.testing.assert_allclose([float(r["rsa_corr"]) for r in rows], ref["rsa_corr"], rtol=1e-6)
  assert float(rows[0]["ari_w"]) == pytest.approx(1.0)
  png = (out / "similarity.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
