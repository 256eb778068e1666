"""Cycle evaluation of a linking network (paper Fig. 3B/C): w -> I -> r -> w~ = f(r) -> I~.

For each evaluated pair the stored w is rendered (tiled to every ws row, as for generation),
classified through the exact input path to get r, mapped back with the link to w~, and w~ is
rendered again. Reported per sample:

  mse_w           mean over w's entries of (w - w~)^2
  mse_w_baseline  the same against the w~ of another sample (random pairing, see `baseline_partner`)
  pixel_mse       mean over pixels and channels of (I - I~)^2, images clipped to [-1, 1] and
                  mapped to [0, 1]
  pixel_mse_baseline, lpips, lpips_baseline
                  likewise; LPIPS (AlexNet, v0.1, `linkjax.perceptual.lpips`) on the clipped
                  [-1, 1] images; NaN when LPIPS is unavailable
  mse_r           mean of (r - r~)^2 with r~ the classifier's representation of I~
  class_tilde     argmax of the classifier on I~ (does the regenerated image keep its class?)

Which pairs are evaluated: `heldout_indices` uses the link checkpoint's held-out split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from linkjax import bundle as bundle_lib
from linkjax import figures, files, jobs, link, perceptual, preprocess
from linkjax import pairs as pairs_lib

PER_SAMPLE_KEYS = ("mse_w", "mse_w_baseline", "pixel_mse", "pixel_mse_baseline", "lpips",
                   "lpips_baseline", "mse_r", "class_tilde")

LpipsFn = Callable[[jax.Array, jax.Array], jax.Array]


def heldout_indices(n_pairs: int, link_meta: Mapping[str, Any], n: int, seed: int
                    ) -> tuple[np.ndarray, str]:
  """Indices of the pairs to evaluate: up to `n` of the link's held-out pairs.

  The held-out set is, in order of preference: explicit indices in the link meta ('test_idx',
  'heldout_idx' or 'holdout_idx'); the split `link.split_holdout(n_pairs, meta['holdout'],
  meta['seed'])` that `link.fit_and_evaluate` used (only when meta's n_train + n_test equals
  n_pairs, i.e. the link was fitted on these pairs); otherwise all pairs, with a warning. When the
  set is larger than `n`, a seeded random subset of `n` is taken (sorted).

  Args:
    n_pairs: number of pairs in the pairs file.
    link_meta: the link checkpoint's meta.
    n: number of samples wanted.
    seed: seed of the subset choice (numpy default_rng).

  Returns:
    (sorted int64 indices, a short description of where they came from).
  """
  idx = None
  for key in ("test_idx", "heldout_idx", "holdout_idx"):
    if key in link_meta and link_meta[key] is not None:
      idx, source = np.asarray(link_meta[key], np.int64), f"link meta {key!r}"
      break
  if idx is None and link_meta.get("holdout") and "seed" in link_meta:
    n_fit = link_meta.get("n_train", 0) + link_meta.get("n_test", 0)
    if n_fit == n_pairs:
      _, idx = link.split_holdout(n_pairs, float(link_meta["holdout"]), int(link_meta["seed"]))
      source = (f"link held-out split (holdout={link_meta['holdout']}, "
                f"seed={link_meta['seed']})")
    else:
      logging.warning("the link was fitted on %d pairs but the pairs file has %d: cannot "
                      "reconstruct its held-out split", n_fit, n_pairs)
  if idx is None:
    logging.warning("no held-out split known for this link: evaluating on a random subset of all "
                    "pairs (they may include training pairs)")
    idx, source = np.arange(n_pairs), "all pairs (no held-out split known)"
  if idx.size and (idx.min() < 0 or idx.max() >= n_pairs):
    raise ValueError(f"held-out indices out of range for {n_pairs} pairs")
  if idx.size > n:
    idx = np.random.default_rng(seed).choice(idx, n, replace=False)
  elif idx.size < n:
    logging.warning("only %d held-out pairs available (asked for %d)", idx.size, n)
  return np.sort(idx), source


def baseline_partner(n: int, seed: int) -> np.ndarray:
  """A random pairing without fixed points: partner[i] != i (for n >= 2).

  Args:
    n: number of samples.
    seed: numpy default_rng seed.

  Returns:
    [n] int64: sample i is compared with sample partner[i] for the random-pairs baseline.
  """
  if n < 2:
    raise ValueError("the random-pairs baseline needs at least 2 samples")
  perm = np.random.default_rng(seed).permutation(n)
  partner = np.empty(n, np.int64)
  partner[perm] = np.roll(perm, -1)  # a cycle through a random order: a derangement
  return partner


def render_and_represent(models: bundle_lib.ModelBundle, params: Any, w: Any, *,
                         batch: int = 16, mesh: jax.sharding.Mesh | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Renders single ws and classifies the images, in fixed-size sharded batches.

  Args:
    models, params: a bundle with generator and classifier, and its weights.
    w: [N, w_dim] latents (tiled to all ws rows).
    batch: rows per compiled call (padded to a multiple of the device count; one compilation).
    mesh: 1-D 'data' mesh (default: all devices).
  Returns:
    images [N, 3, H, W] float32 (generator output, unclipped), r [N, R], logits [N, C] (numpy).
  """
  return jobs.map_batches(functools.partial(bundle_lib.render_and_represent, models), params,
                          np.asarray(w, np.float32), batch=batch, mesh=mesh)


def _batched_lpips(lpips_fn: LpipsFn, a: np.ndarray, b: np.ndarray, batch: int) -> np.ndarray:
  out = []
  for start, stop in jobs.chunks(len(a), batch):
    n = stop - start  # constant shape: one compilation
    out.append(np.asarray(lpips_fn(jnp.asarray(jobs.pad_rows(a[start:stop], batch)),
                                   jnp.asarray(jobs.pad_rows(b[start:stop], batch))))[:n])
  return np.concatenate(out).astype(np.float32)


def cycle_eval(models: bundle_lib.ModelBundle, params: Any, w: Any, *, seed: int = 0,
               batch: int = 16, lpips_fn: LpipsFn | None = None,
               mesh: jax.sharding.Mesh | None = None) -> dict[str, np.ndarray]:
  """Runs the cycle w -> I -> r -> w~ -> I~ and measures how much of w and I survives.

  Args:
    models, params: a bundle with generator, classifier and link, and its weights.
    w: [N, w_dim] latents of the evaluated pairs (N >= 2).
    seed: seed of the random-pairs baseline (`baseline_partner`).
    batch: rows per compiled call.
    lpips_fn: `(a, b) -> [B]` perceptual distance on [B, 3, H, W] images in [-1, 1], or None to
      skip (NaN columns).
    mesh: 1-D 'data' mesh (default: all devices).

  Returns:
    The per-sample arrays of the module doc ([N] each; class_tilde int32), plus 'w', 'w_tilde'
    [N, w_dim], 'r', 'r_tilde' [N, R], 'images', 'images_tilde' [N, H, W, 3] uint8 (the exact
    uint8 images the classifier saw), and 'partner' [N] (baseline pairing).
  """
  w = np.asarray(w, np.float32)
  partner = baseline_partner(len(w), seed)
  img, r, _ = render_and_represent(models, params, w, batch=batch, mesh=mesh)
  w_tilde = np.asarray(link.predict(params["link"], jnp.asarray(r)))
  img_t, r_t, logits_t = render_and_represent(models, params, w_tilde, batch=batch, mesh=mesh)
  img_c, img_tc = np.clip(img, -1.0, 1.0), np.clip(img_t, -1.0, 1.0)

  def pix(a, b):
    return np.mean(((a - b) * np.float32(0.5)) ** 2, axis=(1, 2, 3))

  res = {
      "mse_w": np.mean((w - w_tilde) ** 2, axis=1),
      "mse_w_baseline": np.mean((w - w_tilde[partner]) ** 2, axis=1),
      "pixel_mse": pix(img_c, img_tc),
      "pixel_mse_baseline": pix(img_c, img_tc[partner]),
      "mse_r": np.mean((r - r_t) ** 2, axis=1),
      "class_tilde": np.argmax(logits_t, axis=1).astype(np.int32),
  }
  if lpips_fn is not None:
    res["lpips"] = _batched_lpips(lpips_fn, img_c, img_tc, batch)
    res["lpips_baseline"] = _batched_lpips(lpips_fn, img_c, img_tc[partner], batch)
  else:
    res["lpips"] = res["lpips_baseline"] = np.full(len(w), np.nan, np.float32)
  res = {k: np.asarray(v, np.int32 if k == "class_tilde" else np.float32) for k, v in res.items()}

  def u8(x):
    return np.asarray(preprocess.to_uint8(jnp.asarray(x)))

  res.update(w=w, w_tilde=w_tilde, r=r, r_tilde=r_t, images=u8(img), images_tilde=u8(img_t),
             partner=partner)
  return res


def summarize(res: Mapping[str, np.ndarray], class_idx: np.ndarray) -> dict[str, Any]:
  """Means and standard deviations of the per-sample metrics (JSON-serialisable).

  Args:
    res: output of `cycle_eval`.
    class_idx: [N] class of each evaluated pair.

  Returns:
    {'n', 'metrics': {name: {'mean', 'std'}}, 'mse_w_ratio_to_baseline',
     'class_kept_fraction' (fraction of I~ classified as the pair's class), 'lpips_available'}.
  """
  def stats(x):
    x = np.asarray(x, np.float64)
    if np.all(np.isnan(x)):
      return {"mean": None, "std": None}
    return {"mean": float(np.mean(x)), "std": float(np.std(x))}

  metrics = {k: stats(res[k]) for k in PER_SAMPLE_KEYS if k != "class_tilde"}
  ratio = (metrics["mse_w"]["mean"] / metrics["mse_w_baseline"]["mean"]
           if metrics["mse_w_baseline"]["mean"] else None)
  return {
      "n": int(len(res["mse_w"])),
      "metrics": metrics,
      "mse_w_ratio_to_baseline": ratio,
      "class_kept_fraction": float(np.mean(res["class_tilde"] == np.asarray(class_idx))),
      "lpips_available": bool(not np.all(np.isnan(res["lpips"]))),
  }


def write_outputs(out_dir: str | os.PathLike, res: Mapping[str, np.ndarray], *,
                  pair_idx: np.ndarray, class_idx: np.ndarray, draw_idx: np.ndarray,
                  info: Mapping[str, Any], n_show: int = 8) -> dict[str, Any]:
  """Writes cycle.csv (per sample), summary.json, pairs.png (rows of I | I~) and
  cycle_scatter.png (the distances against the random-pairs baseline).

  Args:
    out_dir: output directory (created).
    res: output of `cycle_eval`.
    pair_idx, class_idx, draw_idx: [N] index into the pairs file, class and draw index per row.
    info: extra JSON-serialisable fields for summary.json (inputs, held-out source, ...).
    n_show: number of image pairs in pairs.png.
  Returns:
    The summary dict that was written.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(len(pair_idx)):
    row = [int(pair_idx[i]), int(class_idx[i]), int(draw_idx[i]), int(pair_idx[res["partner"][i]])]
    row += [int(res[k][i]) if k == "class_tilde" else float(res[k][i]) for k in PER_SAMPLE_KEYS]
    rows.append(row)
  files.write_csv(out_dir / "cycle.csv",
                  ["pair_idx", "class_idx", "draw_idx", "partner_pair_idx", *PER_SAMPLE_KEYS],
                  rows)
  summary = {**summarize(res, class_idx), **dict(info)}
  files.write_json(out_dir / "summary.json", summary)
  save_pairs_png(out_dir / "pairs.png", res, class_idx, n_show=n_show)
  save_scatter_png(out_dir / "cycle_scatter.png", res)
  return summary


def save_pairs_png(path: str | os.PathLike, res: Mapping[str, np.ndarray],
                   class_idx: Sequence[int], n_show: int = 8) -> None:
  """A figure with one row per sample: I (left) and I~ (right), titled with class and distances."""
  n = min(n_show, len(res["images"]))
  fig, axes = figures.subplots(n, 2, figsize=(4.4, 2.2 * n), squeeze=False)
  for i in range(n):
    lp = res["lpips"][i]
    axes[i, 0].imshow(res["images"][i])
    axes[i, 0].set_title(f"I  (class {int(class_idx[i])})", fontsize=8)
    axes[i, 1].imshow(res["images_tilde"][i])
    axes[i, 1].set_title(f"I~  mse_w {res['mse_w'][i]:.3g}"
                         + ("" if math.isnan(lp) else f", lpips {lp:.3f}"), fontsize=8)
    for ax in axes[i]:
      ax.axis("off")
  fig.tight_layout()
  figures.save(fig, path)


def save_scatter_png(path: str | os.PathLike, res: Mapping[str, np.ndarray]) -> None:
  """Per-sample distances of the cycle vs the random-pairs baseline (Fig. 3C style)."""
  keys = [("mse_w", "mse_w_baseline", "MSE in W"),
          ("pixel_mse", "pixel_mse_baseline", "pixel MSE")]
  if not np.all(np.isnan(res["lpips"])):
    keys.append(("lpips", "lpips_baseline", "LPIPS"))
  fig, axes = figures.subplots(1, len(keys), figsize=(3.3 * len(keys), 3), squeeze=False)
  for ax, (a, b, title) in zip(axes[0], keys):
    ax.boxplot([res[a], res[b]])
    ax.set_xticks([1, 2], ["cycle (I, I~)", "random pairs"])
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  figures.save(fig, path)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CycleConfig:
  """Settings of the cycle evaluation (flags of experiments/cycle.py).

  Attributes:
    n: held-out pairs to evaluate (all if fewer).
    seed: seed of the subset choice and of the random-pairs baseline.
    batch: images per compiled call.
    lpips: compute LPIPS (AlexNet v0.1; needs images of at least 32 px).
    n_show: image pairs drawn in pairs.png.
  """
  n: int = 200
  seed: int = 0
  batch: int = 16
  lpips: bool = True
  n_show: int = 8


def run(pairs_dir: str | os.PathLike, link_dir: str | os.PathLike,
        models: bundle_lib.ModelBundle, params: Any, out_dir: str | os.PathLike,
        config: CycleConfig = CycleConfig(), mesh: jax.sharding.Mesh | None = None
        ) -> dict[str, Any]:
  """The cycle on a link's held-out pairs; writes `write_outputs`' files, returns the summary.

  Args:
    pairs_dir: pair directory; link_dir: the link checkpoint (its held-out split is used).
    models, params: a bundle with generator and classifier (the link is loaded from link_dir).
    out_dir: output directory.
    config: settings.
  """
  data = pairs_lib.load(pairs_dir)
  link_params, meta = link.load(link_dir)
  params = {**params, "link": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), link_params)}
  idx, source = heldout_indices(len(data["w"]), meta, config.n, config.seed)
  logging.info("cycle: evaluating %d pairs (%s)", len(idx), source)
  size = int(models.generator_config.img_resolution)
  lpips_fn = perceptual.lpips if config.lpips and size >= perceptual.MIN_SIZE else None
  if config.lpips and lpips_fn is None:
    logging.warning("LPIPS needs images of at least %d px (these are %d px): columns left empty",
                    perceptual.MIN_SIZE, size)
  res = cycle_eval(models, params, data["w"][idx], seed=config.seed, batch=config.batch,
                   lpips_fn=lpips_fn, mesh=mesh)
  info = {"pairs": str(pathlib.Path(pairs_dir).absolute()),
          "link": str(pathlib.Path(link_dir).absolute()), "seed": config.seed,
          "heldout_source": source}
  return write_outputs(out_dir, res, pair_idx=idx, class_idx=data["class_idx"][idx],
                       draw_idx=data["draw_idx"][idx], info=info, n_show=config.n_show)
