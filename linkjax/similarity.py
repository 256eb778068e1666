"""How similarly W and R organise the samples (paper Fig. 3A): k-means ARI and RSA.

Per repeat, `n_classes` classes and `n_per_class` samples of each are drawn (seeded). Then
  * k-means with k = n_classes (20 initialisations) in W and in R, scored with the adjusted Rand
    index against the class labels. A jitted, vmapped JAX k-means with scikit-learn's algorithm:
    ~0.1 s per call on 500 x 2048 versus ~20 s for sklearn.cluster.KMeans on the same (busy)
    2-core machine; both reached the same inertia;
  * RSA: the Pearson-correlation similarity matrices of the samples in W and in R, and their
    Euclidean distance matrices; the Pearson correlation between the flattened upper triangles
    (diagonal excluded) of the W and R matrices of each kind.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import adjusted_rand_score

from linkjax import figures, files
from linkjax import pairs as pairs_lib

CSV_COLUMNS = ("repeat", "ari_w", "ari_r", "rsa_corr", "rsa_dist")


@jax.jit
def correlation_matrix(x: jax.Array) -> jax.Array:
  """Pearson correlation between samples (rows).

  Args:
    x: [N, F] features.

  Returns:
    [N, N] correlations; rows with zero variance give 0 (not NaN).
  """
  xc = x - jnp.mean(x, axis=1, keepdims=True)
  norm = jnp.sqrt(jnp.sum(xc * xc, axis=1, keepdims=True))
  xn = xc / jnp.where(norm > 0, norm, jnp.float32(1.0))
  return xn @ xn.T


@jax.jit
def distance_matrix(x: jax.Array) -> jax.Array:
  """Euclidean distances between samples (rows).

  Args:
    x: [N, F] features.

  Returns:
    [N, N] distances with an exact zero diagonal.
  """
  # Centring first (distances are translation invariant) keeps the |a|^2 + |b|^2 - 2ab expansion
  # accurate: R activations share a large common offset that would otherwise cancel.
  x = x - jnp.mean(x, axis=0)
  sq = jnp.sum(x * x, axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
  d2 = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d2)
  return jnp.sqrt(d2)


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  a = a - jnp.mean(a)
  b = b - jnp.mean(b)
  return jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))


@jax.jit
def rsa(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Representational similarity between two views of the same samples.

  Args:
    x: [N, F1] samples in one space (e.g. W).
    y: [N, F2] the same samples in another space (e.g. R).

  Returns:
    (rsa_corr, rsa_dist): Pearson correlation between the upper triangles (k=1) of the two
    correlation matrices, and of the two Euclidean distance matrices.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  iu = jnp.triu_indices(x.shape[0], k=1)
  rsa_corr = _pearson(correlation_matrix(x)[iu], correlation_matrix(y)[iu])
  rsa_dist = _pearson(distance_matrix(x)[iu], distance_matrix(y)[iu])
  return rsa_corr, rsa_dist


def _sq_dists(x: jax.Array, x_sq: jax.Array, centres: jax.Array) -> jax.Array:
  d = x_sq[:, None] - 2.0 * (x @ centres.T) + jnp.sum(centres * centres, axis=1)[None, :]
  return jnp.maximum(d, 0.0)


def _kmeans_single(key: jax.Array, x: jax.Array, k: int, max_iter: int, tol: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """One k-means++ initialisation followed by Lloyd iterations; returns (labels, inertia)."""
  n = x.shape[0]
  x_sq = jnp.sum(x * x, axis=1)
  key, sub = jax.random.split(key)
  first = x[jax.random.randint(sub, (), 0, n)]
  centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
  d2 = jnp.sum((x - first) ** 2, axis=1)

  def add_centre(i, carry):
    centres, d2, key = carry
    key, sub = jax.random.split(key)
    # k-means++: the next centre is drawn with probability proportional to d^2.
    logits = jnp.where(d2 > 0, jnp.log(jnp.where(d2 > 0, d2, 1.0)), -jnp.inf)
    c = x[jax.random.categorical(sub, logits)]
    return centres.at[i].set(c), jnp.minimum(d2, jnp.sum((x - c) ** 2, axis=1)), key

  centres, _, _ = jax.lax.fori_loop(1, k, add_centre, (centres, d2, key))

  def lloyd(state):
    centres, _, it = state
    onehot = jax.nn.one_hot(jnp.argmin(_sq_dists(x, x_sq, centres), axis=1), k, dtype=x.dtype)
    counts = jnp.sum(onehot, axis=0)
    new = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
    new = jnp.where(counts[:, None] > 0, new, centres)  # an emptied cluster keeps its centre
    return new, jnp.sum((new - centres) ** 2), it + 1

  def not_done(state):
    _, shift, it = state
    return (it < max_iter) & (shift > tol)

  centres, _, _ = jax.lax.while_loop(not_done, lloyd, (centres, jnp.float32(jnp.inf), 0))
  dists = _sq_dists(x, x_sq, centres)
  return jnp.argmin(dists, axis=1).astype(jnp.int32), jnp.sum(jnp.min(dists, axis=1))


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter"))
def kmeans(key: jax.Array, x: jax.Array, *, k: int, n_init: int = 20, max_iter: int = 300
           ) -> tuple[jax.Array, jax.Array]:
  """k-means (k-means++ seeding, Lloyd iterations), best of `n_init` runs by inertia.

  Same algorithm and stopping rule as scikit-learn's `KMeans(n_init=n_init)` (tol 1e-4 times the
  mean feature variance, on the squared centre shift), with plain instead of greedy k-means++
  seeding; the `n_init` runs are vmapped.

  Args:
    key: PRNG key for the seeding.
    x: [N, F] samples.
    k: number of clusters.
    n_init: number of initialisations.
    max_iter: Lloyd iterations per run at most.

  Returns:
    (labels [N] int32, inertia) of the best run.
  """
  # Centring (as scikit-learn does) keeps the distance expansion in _sq_dists accurate.
  x = x.astype(jnp.float32)
  x = x - jnp.mean(x, axis=0)
  tol = jnp.float32(1e-4) * jnp.mean(jnp.var(x, axis=0))
  labels, inertia = jax.vmap(lambda kk: _kmeans_single(kk, x, k, max_iter, tol))(
      jax.random.split(key, n_init))
  best = jnp.argmin(inertia)
  return labels[best], inertia[best]


def kmeans_ari(key: jax.Array, x: np.ndarray, labels: np.ndarray, k: int, *, n_init: int = 20
               ) -> float:
  """Adjusted Rand index of k-means clusters (`kmeans`, `n_init` restarts) vs `labels`.

  Args:
    key: PRNG key for `kmeans`.
    x: [N, F] samples.
    labels: [N] integer labels.
    k: number of clusters.
    n_init: number of k-means initialisations.

  Returns:
    the ARI (1 = clusters equal the labels, ~0 = chance).
  """
  pred, _ = kmeans(key, jnp.asarray(x, jnp.float32), k=k, n_init=n_init)
  return float(adjusted_rand_score(labels, np.asarray(pred)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimilarityConfig:
  """Sampling for `w_r_similarity`."""
  repeats: int = 100
  n_classes: int = 5
  n_per_class: int = 100
  n_init: int = 20
  seed: int = 0


def draw_subset(rng: np.random.Generator, class_idx: np.ndarray, n_classes: int,
                n_per_class: int) -> np.ndarray:
  """Indices of `n_per_class` random samples of each of `n_classes` random classes.

  Args:
    rng: numpy generator (advanced in place).
    class_idx: [N] labels of all samples.
    n_classes: classes to draw among those present (without replacement).
    n_per_class: samples per drawn class (without replacement).

  Returns:
    [n_classes * n_per_class] indices, grouped by class.
  """
  present = np.unique(class_idx)
  if n_classes > present.size:
    raise ValueError(f"n_classes={n_classes} but only {present.size} classes are present")
  chosen = rng.choice(present, size=n_classes, replace=False)
  out = []
  for c in chosen:
    members = np.flatnonzero(class_idx == c)
    if members.size < n_per_class:
      raise ValueError(f"class {c} has {members.size} samples, fewer than n_per_class="
                       f"{n_per_class}")
    out.append(rng.choice(members, size=n_per_class, replace=False))
  return np.concatenate(out)


def w_r_similarity(w: np.ndarray, r: np.ndarray, class_idx: np.ndarray,
                   config: SimilarityConfig) -> dict[str, np.ndarray]:
  """Runs the Fig. 3A analysis.

  Repeat i uses numpy default_rng([seed, i]) for the subset and fold_in(key(seed), i) for
  k-means, so a repeat's result does not depend on the number of repeats.

  Args:
    w: [N, D] latents.
    r: [N, R] activations of the same samples.
    class_idx: [N] labels.
    config: sampling settings.

  Returns:
    {column: [repeats] array} for the columns in CSV_COLUMNS.
  """
  rows: dict[str, list[Any]] = {c: [] for c in CSV_COLUMNS}
  for i in range(config.repeats):
    rng = np.random.default_rng([config.seed, i])
    idx = draw_subset(rng, class_idx, config.n_classes, config.n_per_class)
    labels = class_idx[idx]
    key_w, key_r = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), i))
    rsa_corr, rsa_dist = rsa(jnp.asarray(w[idx], jnp.float32), jnp.asarray(r[idx], jnp.float32))
    rows["repeat"].append(i)
    rows["ari_w"].append(kmeans_ari(key_w, w[idx], labels, config.n_classes,
                                    n_init=config.n_init))
    rows["ari_r"].append(kmeans_ari(key_r, r[idx], labels, config.n_classes,
                                    n_init=config.n_init))
    rows["rsa_corr"].append(float(rsa_corr))
    rows["rsa_dist"].append(float(rsa_dist))
  return {c: np.asarray(v) for c, v in rows.items()}


def write_csv(path: Any, results: dict[str, np.ndarray]) -> None:
  """Writes `results` (from `w_r_similarity`) as CSV with header CSV_COLUMNS."""
  files.write_csv(path, CSV_COLUMNS, [[int(results["repeat"][i])] +
                                      [float(results[c][i]) for c in CSV_COLUMNS[1:]]
                                      for i in range(len(results["repeat"]))])


def box_plot(path: Any, results: dict[str, np.ndarray]) -> None:
  """Saves a box plot of ARI in W and R and of the two RSA correlations (PNG)."""
  fig, axes = figures.subplots(1, 2, figsize=(7, 3.5))
  axes[0].boxplot([results["ari_w"], results["ari_r"]])
  axes[0].set_xticks([1, 2], ["W", "R"])
  axes[0].set_ylabel("adjusted Rand index")
  lowest = float(min(np.min(results["ari_w"]), np.min(results["ari_r"])))
  axes[0].set_ylim(min(-0.05, lowest - 0.05), 1.05)  # ARI: 0 = chance, 1 = the labels
  axes[0].set_title("k-means vs class labels")
  axes[1].boxplot([results["rsa_corr"], results["rsa_dist"]])
  axes[1].set_xticks([1, 2], ["correlation", "Euclidean"])
  axes[1].set_ylabel("Pearson r (W vs R)")
  axes[1].set_title("RSA")
  fig.tight_layout()
  figures.save(fig, path, dpi=120)


def run(pairs_dir: Any, out_dir: Any, config: SimilarityConfig) -> dict[str, Any]:
  """Fig. 3A on a pair directory: writes results.csv and similarity.png, returns medians.

  `config.n_classes` and `config.n_per_class` are capped at what the pairs hold (all classes
  present; the smallest class's count).

  Returns:
    {'ari_w', 'ari_r', 'rsa_corr', 'rsa_dist' (medians over repeats), 'repeats', 'n_classes',
     'n_per_class'}.
  """
  data = pairs_lib.load(pairs_dir)
  present, counts = np.unique(data["class_idx"], return_counts=True)
  if present.size < 2:
    raise ValueError(f"similarity needs pairs of at least 2 classes, have {present.tolist()}")
  config = dataclasses.replace(config, n_classes=int(min(config.n_classes, present.size)),
                               n_per_class=int(min(config.n_per_class, counts.min())))
  res = w_r_similarity(data["w"], data["r"], data["class_idx"], config)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(out / "results.csv", res)
  box_plot(out / "similarity.png", res)
  summary = {c: float(np.median(res[c])) for c in CSV_COLUMNS[1:]}
  summary.update(repeats=config.repeats, n_per_class=config.n_per_class,
                 n_classes=config.n_classes)
  return summary
