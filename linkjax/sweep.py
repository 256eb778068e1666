"""Unit sweeps (paper Sec. 3.2, 4.3): set one unit of R across its range, regenerate, measure.

For every (sample s, unit u, step k) triple the sample's activations r[s] get unit u *replaced* by
`sweep_values(lo, hi, steps)[u, k]` (other units keep the sample's values), then

    r' -> w = link.predict(r') -> ws = broadcast_w(w, num_ws) -> image (+ synthesis features)
       -> classifier probabilities (exact uint8 input path: `to_uint8`, `classifier_input`)
       -> segmenter masks [R, R] -> `quantify.part_metrics` on the R x R image.

The segmenter predicts masks at its own resolution R (128 in the paper) from the synthesis
features; the part metrics need the image at that resolution too. The generator's uint8 image is
resized to R x R with `preprocess.resize_uint8`: Pillow's antialiased bilinear filter, bit-exact,
i.e. what `PIL.Image.fromarray(img).resize((R, R), Image.BILINEAR)` gives (for 256 -> 128 a
triangle filter of support 2 pixels). No resize happens when the generator's resolution is R.

The core is a pure function, `sweep_chunk(apply, params, r_samples, values, sample, unit, step)`,
over a chunk of triples given as three int32 index arrays; the model parameters (`nnx.split`
states and the link pytree) enter as arguments, never as captured constants. `run_sweep` compiles
it once per chunk size with the chunk axis sharded over a 1-D device mesh ('data' axis;
`r_samples`, `values` and the parameters replicated), streams each chunk's results to an
atomically written shard file, resumes from finished shards, and assembles `sweep.npz`.

On disk (`out_dir`):
  run.json            the run's identity (units, samples, classes, steps, chunk, hashes of r and
                      of the sweep values, pipeline description); a rerun with other arguments is
                      refused unless `overwrite=True`.
  shards/base.npz     the unperturbed images' results (unit untouched; r -> f(r) -> ...).
  shards/shard_KKKKKKK.npz
                      results of the triples with flat index in [K*shard_size, (K+1)*shard_size)
                      of the C-ordered [S, U, steps] grid (metrics, probs, pred); shard_size is a
                      multiple of the chunk, each shard is computed chunk by chunk.
  sweep.npz           the assembled arrays (see `run_sweep`), written once every shard exists.
  strips/unit_UUUU.png (+ .npz)
                      image strips (rows: samples, columns: steps) for the units asked for.

Base samples. The reference sweeps samples drawn at psi 0.7 with seed 136 and no correctness filter.
We take them from a pair directory (`linkjax.pairs`): the first `samples_per_class` draws of each
class by draw index (`select_samples`). To reproduce the reference's sample set, make that pair
directory with `experiments.make_pairs --psi=0.7 --seed=136 --keep=all` (keep=all is the absence of
the correctness filter); with a correctness-filtered training pair set the sweep uses correctly
classified samples instead. The per-unit range is the empirical [min, max] over the selected base
samples pooled across classes, as in the reference (`range_from='samples'`), or over every pair.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from linkjax import quantify
from linkjax import rundir

RUN_FILE = "run.json"
SWEEP_FILE = "sweep.npz"
SHARD_DIR = "shards"
STRIP_DIR = "strips"
BASE_SHARD = "base.npz"
FORMAT_VERSION = 1
NO_UNIT = -1  # unit index meaning "leave r unchanged" (the unperturbed baseline)


class SweepError(RuntimeError):
  """Missing, incomplete or conflicting sweep output."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ill-defined
class SweepPipeline:
  """The models of a sweep as one pure function with its parameters carried separately.

  Attributes:
    apply: `(params, r [B, R] float32) -> {'probs': [B, C] float32 class probabilities,
      'masks': [B, H, W] int32 part labels, 'images': [B, H, W, 3] uint8 images at the masks'
      resolution}`; JAX-traceable and per-sample (row i depends on row i only).
    params: pytree of arrays passed to `apply` (nnx states, link params); replicated on devices.
    n_labels: number of segmenter labels including background 0 (metrics cover 1..n_labels-1).
    info: JSON-serialisable description stored in run.json (part of the run's identity).
  """

  apply: Callable[[Any, jax.Array], Mapping[str, jax.Array]]
  params: Any
  n_labels: int
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------- small parts


def unit_ranges(r: Any) -> tuple[np.ndarray, np.ndarray]:
  """Empirical per-unit range over samples (pooled over classes).

  Args:
    r: [N, R] activations.
  Returns:
    (lo [R], hi [R]) float32: column minima and maxima.
  """
  r = np.asarray(r, np.float32)
  if r.ndim != 2 or r.shape[0] == 0:
    raise ValueError(f"expected r of shape [N > 0, R], got {r.shape}")
  return r.min(axis=0), r.max(axis=0)


def sweep_values(lo: Any, hi: Any, steps: int) -> np.ndarray:
  """Per-unit sweep values `numpy.linspace(lo[u], hi[u], steps)` (computed in float64).

  Args:
    lo: [R] lower ends; hi: [R] upper ends.
    steps: values per unit (>= 2: the first is lo, the last hi).
  Returns:
    [R, steps] float32.
  """
  if steps < 2:
    raise ValueError(f"steps must be >= 2, got {steps}")
  lo = np.asarray(lo, np.float64)
  hi = np.asarray(hi, np.float64)
  return np.linspace(lo, hi, steps, axis=-1).astype(np.float32)


def parse_units(spec: str, num_units: int) -> np.ndarray:
  """Unit list from 'all', a range 'a-b' (inclusive), a list '3,5,7' or a mix '0-3,10'.

  Args:
    spec: the specification.
    num_units: R; every unit must be in [0, R).
  Returns:
    [U] int32 unit indices, in the order given, without duplicates.
  """
  spec = spec.strip()
  if spec == "all":
    return np.arange(num_units, dtype=np.int32)
  out: list[int] = []
  for part in spec.split(","):
    part = part.strip()
    if not part:
      continue
    if "-" in part:
      a, b = (int(x) for x in part.split("-", 1))
      if b < a:
        raise ValueError(f"empty unit range {part!r}")
      out.extend(range(a, b + 1))
    else:
      out.append(int(part))
  if not out:
    raise ValueError(f"no units in {spec!r}")
  bad = [u for u in out if not 0 <= u < num_units]
  if bad:
    raise ValueError(f"units {bad[:5]} outside [0, {num_units})")
  if len(set(out)) != len(out):
    raise ValueError(f"duplicate units in {spec!r}")
  return np.asarray(out, np.int32)


def select_samples(class_idx: Any, draw_idx: Any, n_per_class: int,
                   classes: Sequence[int] | None = None) -> np.ndarray:
  """Rows of a pair set: the first `n_per_class` draws (by draw index) of each class.

  Args:
    class_idx: [N] class of each pair.
    draw_idx: [N] draw index of each pair.
    n_per_class: samples per class (a class with fewer pairs contributes what it has).
    classes: classes to take, in this order (default: sorted unique `class_idx`).
  Returns:
    [S] int64 row indices, grouped by class in `classes` order, by draw index within a class.
  """
  class_idx = np.asarray(class_idx)
  draw_idx = np.asarray(draw_idx)
  if classes is None:
    classes = np.unique(class_idx)
  rows = []
  for c in classes:
    idx = np.flatnonzero(class_idx == c)
    if idx.size == 0:
      raise ValueError(f"class {c} has no pairs")
    if idx.size < n_per_class:
      logging.warning("class %d has only %d pairs (< %d)", c, idx.size, n_per_class)
    rows.append(idx[np.argsort(draw_idx[idx], kind="stable")][:n_per_class])
  return np.concatenate(rows).astype(np.int64)


# ------------------------------------------------------------------------------------ the core


def set_unit(r: jax.Array, unit: jax.Array, value: jax.Array) -> jax.Array:
  """r with entry `unit` replaced by `value` (unchanged for unit == NO_UNIT).

  Args:
    r: [R] activations of one sample; unit: [] int32; value: [] float32.
  Returns:
    [R] float32.
  """
  return jnp.where(jnp.arange(r.shape[-1]) == unit, value, r.astype(jnp.float32))


def sweep_chunk(apply: Callable[[Any, jax.Array], Mapping[str, jax.Array]], params: Any,
                r_samples: jax.Array, values: jax.Array, sample: jax.Array, unit: jax.Array,
                step: jax.Array, *, classes: Sequence[int], n_labels: int,
                return_images: bool = False) -> dict[str, jax.Array]:
  """Results of a chunk of (sample, unit, step) triples. Pure; jit/shard it from outside.

  Args:
    apply: `SweepPipeline.apply`.
    params: its parameters.
    r_samples: [S, R] base activations of the samples.
    values: [R, steps] sweep values of every unit (`sweep_values`).
    sample: [B] int32 rows of `r_samples`.
    unit: [B] int32 units to set (NO_UNIT: leave r unchanged).
    step: [B] int32 steps (columns of `values`).
    classes: class indices whose probabilities are returned.
    n_labels: segmenter labels including background.
    return_images: also return the images.
  Returns:
    {'metrics': [B, n_labels - 1, 5] float32 (`quantify.part_metrics`), 'probs': [B, len(classes)],
     'pred': [B] int32 argmax over all classes, ('images': [B, H, W, 3] uint8)}.
  """
  r = jnp.take(r_samples, sample, axis=0)
  value = values[jnp.maximum(unit, 0), step]
  r_new = jax.vmap(set_unit)(r, unit, value)
  out = apply(params, r_new)
  images = out["images"]
  metrics = quantify.part_metrics(images.astype(jnp.float32) / jnp.float32(255.0),
                                  out["masks"].astype(jnp.int32), n_labels=n_labels)
  probs = out["probs"].astype(jnp.float32)
  res = {"metrics": metrics, "probs": probs[:, jnp.asarray(classes, jnp.int32)],
         "pred": jnp.argmax(probs, axis=-1).astype(jnp.int32)}
  if return_images:
    res["images"] = images
  return res


def make_data_mesh(n_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'data' over the first `n_devices` devices (default: all)."""
  devices = jax.devices()[:n_devices] if n_devices else jax.devices()
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


@functools.lru_cache(maxsize=16)
def make_step(apply, classes: tuple[int, ...], n_labels: int, mesh: jax.sharding.Mesh,
              return_images: bool = False):
  """`sweep_chunk` compiled for `mesh`: triples sharded on 'data', everything else replicated.

  Returns `step(params, r_samples, values, sample, unit, step)`; the chunk size must be a
  multiple of the mesh size. Cached, so a pipeline compiles once per chunk shape.
  """
  data = NamedSharding(mesh, P("data"))
  repl = NamedSharding(mesh, P())
  fn = functools.partial(sweep_chunk, apply, classes=classes, n_labels=n_labels,
                         return_images=return_images)
  return jax.jit(fn, in_shardings=(repl, repl, repl, data, data, data), out_shardings=data)


# ------------------------------------------------------------------------------------- models


def model_pipeline(link_params: Any, generator: nnx.Module, classifier: nnx.Module,
                   segmenter: nnx.Module,
                   micro_batch: int | None | str = "auto") -> SweepPipeline:
  """The paper's sweep pipeline from a link, StyleGAN-XL, a ResNet and a few-shot segmenter.

  r' -> `link.predict` -> `broadcast_w` -> `synthesis(ws, return_features=True)`; probabilities =
  softmax of the classifier on `classifier_input(to_uint8(img), config.resize, config.crop)`;
  masks = `predict_masks` on the segmenter's feature layers; images = `to_uint8(img)` resized to
  the segmenter resolution with `preprocess.resize_uint8` (see the module docstring).

  Args:
    link_params: `link.load(...)[0]`.
    generator: `StyleGANXL`; classifier: `ResNet` (eval mode); segmenter: `FewShotSegmenter`.
    micro_batch: images per sequential step of `apply` (`batching.micro_batched`: cache-sized
      temporaries on CPU; a multiple of the data mesh's size); 'auto':
      `batching.default_micro_batch()`; None: the whole batch at once. Results agree up to
      float rounding.
  Returns:
    A `SweepPipeline` with params {'link', 'generator', 'classifier', 'segmenter'}.
  """
  from linkjax import batching  # noqa: PLC0415
  from linkjax import link, preprocess  # noqa: PLC0415  (toys need no model code)
  from linkjax.models import segmenter as seg_lib  # noqa: PLC0415
  from linkjax.models import stylegan_xl  # noqa: PLC0415

  g_def, g_state = nnx.split(generator)
  c_def, c_state = nnx.split(classifier)
  s_def, s_state = nnx.split(segmenter)
  num_ws = int(generator.config.num_ws)
  resize = getattr(classifier.config, "resize", 256)
  crop = getattr(classifier.config, "crop", 224)
  seg_cfg = segmenter.config
  res = int(seg_cfg.resolution)
  layers = tuple(seg_cfg.feature_layers)

  def apply(params, r):
    w = link.predict(params["link"], r)
    ws = stylegan_xl.broadcast_w(w, num_ws)
    img, feats = nnx.merge(g_def, params["generator"]).synthesis(ws, return_features=True)
    u8 = preprocess.to_uint8(img)
    logits, _ = nnx.merge(c_def, params["classifier"])(
        preprocess.classifier_input(u8, resize=resize, crop=crop))
    masks = seg_lib.predict_masks(nnx.merge(s_def, params["segmenter"]),
                                  seg_lib.select_features(feats, layers))
    if u8.shape[1] != u8.shape[2]:
      raise ValueError(f"expected square images, got {u8.shape}")
    small = preprocess.resize_uint8(u8, res) if u8.shape[1] != res else u8
    return {"probs": jax.nn.softmax(logits, axis=-1), "masks": masks, "images": small}

  if micro_batch == "auto":
    micro_batch = batching.default_micro_batch()
  apply = batching.micro_batched(apply, micro_batch)
  link_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), link_params)
  info = {"kind": "models", "num_ws": num_ws, "resize": resize, "crop": crop,
          "segmenter_resolution": res, "feature_layers": list(layers),
          "label_names": list(seg_cfg.label_names),
          "img_resolution": int(generator.config.img_resolution)}
  return SweepPipeline(apply=apply, params={"link": link_params, "generator": g_state,
                                            "classifier": c_state, "segmenter": s_state},
                       n_labels=int(seg_cfg.n_labels), info=info)


def toy_pipeline(*, r_dim: int = 6, w_dim: int = 4, num_classes: int = 5, resolution: int = 16,
                 seed: int = 0) -> SweepPipeline:
  """A tiny stand-in for link + generator + classifier + segmenter (tests, demos).

  Link: w = r @ K + b with K[:, 0] = e_0 and b[0] = 0, so w[0] = r[0]. Image and masks: label 1 is
  a centred square of half-side `2 + 3 * w[0]` pixels (so unit 0, and only unit 0, controls its
  area), label 2 the bottom 3 rows; grey level sigmoid(w[1]) inside the square, a fixed ramp
  elsewhere. Probabilities: softmax(w @ C).

  Args:
    r_dim, w_dim, num_classes: sizes; resolution: image side.
    seed: seed of the fixed random weights (numpy, so no compilation).
  Returns:
    A `SweepPipeline` with 3 labels.
  """
  rng = np.random.default_rng(seed)
  k = (rng.standard_normal((r_dim, w_dim)) / np.sqrt(r_dim)).astype(np.float32)
  k[:, 0] = 0.0
  k[0, 0] = 1.0
  b = rng.standard_normal(w_dim).astype(np.float32)
  b[0] = 0.0
  params = {"k": jnp.asarray(k), "b": jnp.asarray(b),
            "c": jnp.asarray(rng.standard_normal((w_dim, num_classes)).astype(np.float32))}
  res = int(resolution)

  def apply(p, r):
    w = r @ p["k"] + p["b"]
    pos = jnp.abs(jnp.arange(res, dtype=jnp.float32) - jnp.float32((res - 1) / 2))
    half = (jnp.float32(2.0) + jnp.float32(3.0) * w[:, 0])[:, None, None]
    square = (pos[None, :, None] < half) & (pos[None, None, :] < half)
    bottom = jnp.arange(res)[None, :, None] >= res - 3
    masks = jnp.where(square, 1, jnp.where(bottom, 2, 0)).astype(jnp.int32)
    masks = jnp.broadcast_to(masks, (r.shape[0], res, res))
    ramp = jnp.linspace(0.0, 1.0, res, dtype=jnp.float32)[None, None, :]
    grey = jnp.where(square, jax.nn.sigmoid(w[:, 1])[:, None, None], ramp)
    images = jnp.round(jnp.float32(255.0) * grey).astype(jnp.uint8)
    images = jnp.broadcast_to(images[..., None], (r.shape[0], res, res, 3))
    return {"probs": jax.nn.softmax(w @ p["c"], axis=-1), "masks": masks, "images": images}

  return SweepPipeline(apply=apply, params=params, n_labels=3,
                       info={"kind": "toy", "seed": int(seed), "r_dim": r_dim})


# ------------------------------------------------------------------------------------- driver


def _atomic_write(path: pathlib.Path, writer: Callable[[Any], None]) -> None:
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    writer(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _write_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
  _atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # damaged: recompute
    logging.warning("ignoring unreadable %s (%s)", path, e)
    return None


def _hash(*arrays: np.ndarray) -> str:
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _prepare_dir(out_dir: pathlib.Path, run: dict[str, Any], overwrite: bool) -> None:
  path = out_dir / RUN_FILE
  if rundir.must_overwrite(path, run, overwrite=overwrite, what="a sweep", error=SweepError):
    for name in (SHARD_DIR, STRIP_DIR):
      shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (SWEEP_FILE, RUN_FILE):
      (out_dir / name).unlink(missing_ok=True)
  (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
  for p in list(out_dir.glob(".*.tmp*")) + list((out_dir / SHARD_DIR).glob(".*.tmp*")):
    p.unlink(missing_ok=True)  # leftovers of a killed run
  if not path.exists():
    _atomic_write(path, lambda f: f.write((json.dumps(run, indent=2, sort_keys=True) + "\n")
                                          .encode()))


def _triples(flat: np.ndarray, n_units: int, steps: int, units: np.ndarray):
  """(sample, unit, step) int32 arrays of flat indices into the C-ordered [S, U, steps] grid."""
  s, u_pos, k = flat // (n_units * steps), (flat // steps) % n_units, flat % steps
  return s.astype(np.int32), units[u_pos].astype(np.int32), k.astype(np.int32)


def _pad(x: np.ndarray, n: int) -> np.ndarray:
  # Pad by repeating the last row: valid inputs, results dropped afterwards.
  return x if x.shape[0] == n else np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], 0)])


class _Progress:
  """Chunks done / total, images/s over this process's chunks, ETA; at most every `every_s`."""

  def __init__(self, done: int, total: int, every_s: float):
    self.done, self.total, self.every_s = done, total, every_s
    self.t0 = time.perf_counter()
    self.last = self.t0
    self.images = 0
    self.chunks = 0

  def update(self, n_images: int) -> None:
    self.done += 1
    self.chunks += 1
    self.images += n_images
    now = time.perf_counter()
    if now - self.last < self.every_s and self.done < self.total:
      return
    self.last = now
    elapsed = max(now - self.t0, 1e-9)
    eta = (self.total - self.done) * elapsed / self.chunks
    logging.info("sweep: chunks %d/%d, %.1f images/s, ETA %.0f s", self.done, self.total,
                 self.images / elapsed, eta)


def run_sweep(out_dir: str | os.PathLike, pipeline: SweepPipeline, r_samples: Any,
              class_idx: Any, *, units: Sequence[int], steps: int = 3, chunk: int = 64,
              shard_size: int = 4096, lo: Any = None, hi: Any = None, sample_ids: Any = None,
              classes: Sequence[int] | None = None, save_strips_for: Sequence[int] = (),
              strip_rows: int = 8, mesh: jax.sharding.Mesh | None = None,
              overwrite: bool = False, log_every_s: float = 30.0,
              on_shard: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
  """Sweeps units over samples, streaming results to shard files; a rerun resumes.

  Args:
    out_dir: output directory (see the module docstring for its layout).
    pipeline: the models (`model_pipeline`, or a toy).
    r_samples: [S, R] base activations.
    class_idx: [S] class of each sample (its "original class").
    units: [U] units to sweep.
    steps: values per unit.
    chunk: triples per compiled call (rounded up to a multiple of the device count); memory
      grows linearly with it.
    shard_size: triples per shard file (rounded up to a multiple of the chunk): the unit of
      resumption (a full 2048-unit sweep is a few hundred files, not one per chunk).
    lo, hi: [R] unit ranges (default: `unit_ranges(r_samples)`).
    sample_ids: [S] ids stored with the results (e.g. rows of the pair file; default arange).
    classes: classes whose probabilities are kept (default: sorted unique `class_idx`).
    save_strips_for: units whose images are saved as strips (rows: samples, columns: steps).
    strip_rows: samples per strip (round-robin over classes, first samples first).
    mesh: 1-D 'data' mesh (default: all devices).
    overwrite: replace a sweep with other arguments in `out_dir`.
    log_every_s: seconds between progress lines.
    on_shard: called with the shard index after each newly written shard (tests).
  Returns:
    The arrays of `sweep.npz`: 'metrics' [S, U, steps, L, 5], 'probs' [S, U, steps, C],
    'pred' [S, U, steps] int32, 'base_metrics' [S, L, 5], 'base_probs' [S, C], 'base_pred' [S]
    (unperturbed r), 'units' [U], 'sample_idx' [S], 'class_idx' [S], 'classes' [C],
    'values' [U, steps], 'lo' [U], 'hi' [U]; L = n_labels - 1.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  r_samples = np.asarray(r_samples, np.float32)
  class_idx = np.asarray(class_idx, np.int32)
  units = np.asarray(units, np.int32)
  n_s, n_r = r_samples.shape
  n_u = units.size
  if class_idx.shape != (n_s,):
    raise ValueError(f"class_idx must be [{n_s}], got {class_idx.shape}")
  if n_u == 0 or units.min() < 0 or units.max() >= n_r:
    raise ValueError(f"units must be non-empty and in [0, {n_r})")
  if lo is None or hi is None:
    lo, hi = unit_ranges(r_samples)
  values = sweep_values(lo, hi, steps)  # [R, steps]
  sample_ids = np.arange(n_s) if sample_ids is None else np.asarray(sample_ids)
  classes = tuple(int(c) for c in (np.unique(class_idx) if classes is None else classes))
  mesh = mesh or make_data_mesh()
  n_dev = mesh.devices.size
  eff_chunk = -(-int(chunk) // n_dev) * n_dev
  if eff_chunk != chunk:
    logging.info("chunk %d rounded up to %d (a multiple of %d devices)", chunk, eff_chunk, n_dev)
  total = n_s * n_u * steps
  n_chunks = -(-total // eff_chunk)
  chunks_per_shard = max(1, -(-int(shard_size) // eff_chunk))
  shard_size = chunks_per_shard * eff_chunk
  n_shards = -(-total // shard_size)
  run = {"version": FORMAT_VERSION, "units": units.tolist(), "sample_ids": sample_ids.tolist(),
         "class_idx": class_idx.tolist(), "classes": list(classes), "steps": int(steps),
         "chunk": eff_chunk, "shard_size": shard_size, "r_hash": _hash(r_samples),
         "values_hash": _hash(values),
         "n_labels": int(pipeline.n_labels), "pipeline": dict(pipeline.info)}
  _prepare_dir(out, run, overwrite)

  final = out / SWEEP_FILE
  result = _read_npz(final) if final.exists() else None
  shard_dir = out / SHARD_DIR
  params = pipeline.params
  r_dev = jnp.asarray(r_samples)
  v_dev = jnp.asarray(values)
  step_fn = make_step(pipeline.apply, classes, int(pipeline.n_labels), mesh)

  def launch(s, u, k):
    return step_fn(params, r_dev, v_dev, _pad(s, eff_chunk), _pad(u, eff_chunk),
                   _pad(k, eff_chunk))

  if result is None:
    # Unperturbed baseline: every sample once, unit untouched.
    base_path = shard_dir / BASE_SHARD
    base = _read_npz(base_path) if base_path.exists() else None
    if base is None:
      parts = []
      for a in range(0, n_s, eff_chunk):
        s = np.arange(a, min(a + eff_chunk, n_s), dtype=np.int32)
        o = launch(s, np.full_like(s, NO_UNIT), np.zeros_like(s))
        parts.append({k: np.asarray(v)[:s.size] for k, v in o.items()})
      base = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      _write_npz(base_path, base)

    todo = [h for h in range(n_shards) if not _shard_ok(shard_dir, h, shard_size, total)]
    logging.info("sweep: %d samples x %d units x %d steps = %d images in %d chunks of %d "
                 "(%d shard files of %d); %d shards done, %d to go; %d devices", n_s, n_u,
                 steps, total, n_chunks, eff_chunk, n_shards, shard_size, n_shards - len(todo),
                 len(todo), n_dev)
    todo_chunks = sum(-(-(min((h + 1) * shard_size, total) - h * shard_size) // eff_chunk)
                      for h in todo)
    progress = _Progress(n_chunks - todo_chunks, n_chunks, log_every_s)
    parts: dict[int, list[dict[str, np.ndarray]]] = {}

    def finish(h, last, o, n):
      parts.setdefault(h, []).append({k: np.asarray(v)[:n] for k, v in o.items()})
      progress.update(n)
      if last:
        chunks = parts.pop(h)
        _write_npz(_shard_path(shard_dir, h), {k: np.concatenate([c[k] for c in chunks])
                                               for k in chunks[0]})
        if on_shard is not None:
          on_shard(h)

    pending = None
    for h in todo:
      end = min((h + 1) * shard_size, total)
      for a in range(h * shard_size, end, eff_chunk):
        flat = np.arange(a, min(a + eff_chunk, end), dtype=np.int64)
        s, u, k = _triples(flat, n_u, steps, units)
        o = launch(s, u, k)  # dispatched asynchronously
        if pending is not None:
          finish(*pending)  # host work of the previous chunk overlaps this chunk's compute
        pending = (h, a + eff_chunk >= end, o, flat.size)
    if pending is not None:
      finish(*pending)

    shards = [_read_npz(_shard_path(shard_dir, h)) for h in range(n_shards)]
    flat_res = {k: np.concatenate([sh[k] for sh in shards]) for k in shards[0]}
    n_l = flat_res["metrics"].shape[-2]
    result = {
        "metrics": flat_res["metrics"].reshape(n_s, n_u, steps, n_l, len(quantify.METRICS)),
        "probs": flat_res["probs"].reshape(n_s, n_u, steps, len(classes)),
        "pred": flat_res["pred"].reshape(n_s, n_u, steps),
        "base_metrics": base["metrics"], "base_probs": base["probs"], "base_pred": base["pred"],
        "units": units, "sample_idx": sample_ids, "class_idx": class_idx,
        "classes": np.asarray(classes, np.int32), "values": values[units],
        "lo": np.asarray(lo, np.float32)[units], "hi": np.asarray(hi, np.float32)[units],
    }
    _write_npz(final, result)
    logging.info("sweep: wrote %s", final)

  if save_strips_for:
    rows = strip_samples(class_idx, strip_rows)
    img_fn = make_step(pipeline.apply, classes, int(pipeline.n_labels), mesh, True)
    (out / STRIP_DIR).mkdir(exist_ok=True)
    for u in save_strips_for:
      _save_strip(out / STRIP_DIR, int(u), rows, steps, values, img_fn, params, r_dev, v_dev,
                  eff_chunk, sample_ids)
  return result


def _shard_path(shard_dir: pathlib.Path, c: int) -> pathlib.Path:
  return shard_dir / f"shard_{c:07d}.npz"


def _shard_ok(shard_dir: pathlib.Path, c: int, chunk: int, total: int) -> bool:
  path = _shard_path(shard_dir, c)
  if not path.exists():
    return False
  arrays = _read_npz(path)
  n = min(chunk, total - c * chunk)
  return arrays is not None and all(a.shape[0] == n for a in arrays.values())


def strip_samples(class_idx: Any, n_rows: int) -> np.ndarray:
  """Sample rows for strips: round-robin over classes (in order of appearance), first ones first.

  Args:
    class_idx: [S] class of each sample; n_rows: number of rows wanted.
  Returns:
    [min(n_rows, S)] int32 sample positions.
  """
  class_idx = np.asarray(class_idx)
  _, first = np.unique(class_idx, return_index=True)
  groups = [list(np.flatnonzero(class_idx == class_idx[i])) for i in sorted(first)]
  rows: list[int] = []
  depth = 0
  while len(rows) < min(n_rows, class_idx.size):
    for g in groups:
      if depth < len(g) and len(rows) < n_rows:
        rows.append(int(g[depth]))
    depth += 1
  return np.asarray(rows, np.int32)


def _save_strip(strip_dir, unit, rows, steps, values, img_fn, params, r_dev, v_dev, chunk,
                sample_ids) -> None:
  png = strip_dir / f"unit_{unit:04d}.png"
  if png.exists():
    return
  s = np.repeat(rows, steps).astype(np.int32)
  k = np.tile(np.arange(steps, dtype=np.int32), rows.size)
  u = np.full_like(s, unit)
  images = []
  for a in range(0, s.size, chunk):
    sl = slice(a, a + chunk)
    n = s[sl].size
    o = img_fn(params, r_dev, v_dev, _pad(s[sl], chunk), _pad(u[sl], chunk), _pad(k[sl], chunk))
    images.append(np.asarray(o["images"])[:n])
  images = np.concatenate(images).reshape(rows.size, steps, *images[0].shape[1:])
  _write_npz(strip_dir / f"unit_{unit:04d}.npz",
             {"images": images, "values": values[unit], "sample_idx": np.asarray(sample_ids)[rows]})
  from PIL import Image  # noqa: PLC0415  (Pillow ships with matplotlib)
  grid = np.concatenate(np.concatenate(images, axis=2), axis=0)  # [rows*H, steps*W, 3]
  _atomic_write(png, lambda f: Image.fromarray(grid).save(f, format="PNG"))


def load(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads `out_dir/sweep.npz` (see `run_sweep` for the arrays)."""
  path = pathlib.Path(out_dir) / SWEEP_FILE
  if not path.exists():
    raise SweepError(f"no finished sweep at {out_dir} ({SWEEP_FILE} is missing; rerun the same "
                     "sweep command to resume)")
  arrays = _read_npz(path)
  if arrays is None:
    raise SweepError(f"{path} is damaged")
  return arrays


def sweep_from_dirs(*, pairs_dir: str, link_dir: str, generator_dir: str, classifier_dir: str,
                    segmenter_dir: str, out_dir: str, units: str = "all",
                    samples_per_class: int = 100, steps: int = 3, chunk: int = 64,
                    shard_size: int = 4096, save_strips_for: Sequence[int] = (),
                    strip_rows: int = 8,
                    range_from: str = "samples", classes: Sequence[int] | None = None,
                    n_devices: int | None = None, overwrite: bool = False,
                    log_every_s: float = 30.0) -> dict[str, np.ndarray]:
  """Loads the models and the pairs from their directories and runs `run_sweep`.

  Args:
    pairs_dir: pair directory (`linkjax.pairs.load`); base samples = the first
      `samples_per_class` draws of each class (`select_samples`).
    link_dir, generator_dir, classifier_dir, segmenter_dir: checkpoints.
    out_dir: sweep output directory.
    units: unit specification for `parse_units` ('all', '0-99', '3,5,7').
    samples_per_class: base samples per class.
    steps: values per unit.
    chunk: triples per compiled call.
    shard_size: triples per shard file.
    save_strips_for: units whose image strips are saved.
    strip_rows: samples per strip.
    range_from: 'samples' (reference: [min, max] over the base samples) or 'pairs' (all pairs).
    classes: classes to take samples from (default: all classes of the pair file).
    n_devices: devices of the 'data' mesh (default: all).
    overwrite: replace an existing sweep with other arguments.
    log_every_s: seconds between progress lines.
  Returns:
    the arrays of `sweep.npz`.
  """
  from linkjax import batching, checkpoint, link, pairs  # noqa: PLC0415

  data = pairs.load(pairs_dir)
  rows = select_samples(data["class_idx"], data["draw_idx"], samples_per_class, classes)
  r_samples = np.asarray(data["r"], np.float32)[rows]
  if range_from == "samples":
    lo, hi = unit_ranges(r_samples)
  elif range_from == "pairs":
    lo, hi = unit_ranges(data["r"])
  else:
    raise ValueError(f"range_from must be 'samples' or 'pairs', got {range_from!r}")
  link_params, link_meta = link.load(link_dir)
  mesh = make_data_mesh(n_devices)
  pipeline = model_pipeline(
      link_params, checkpoint.load(generator_dir, role="generator"),
      checkpoint.load(classifier_dir, role="classifier"),
      checkpoint.load(segmenter_dir, role="segmenter"),
      micro_batch=batching.default_micro_batch(mesh.devices.size))
  pipeline = dataclasses.replace(pipeline, info={
      **pipeline.info, "link": str(pathlib.Path(link_dir).resolve()),
      "generator": str(pathlib.Path(generator_dir).resolve()),
      "classifier": str(pathlib.Path(classifier_dir).resolve()),
      "segmenter": str(pathlib.Path(segmenter_dir).resolve()), "range_from": range_from})
  unit_list = parse_units(units, r_samples.shape[1])
  logging.info("sweep: %d base samples from %s (%d classes), %d units, link %s", rows.size,
               pairs_dir, np.unique(data["class_idx"][rows]).size, unit_list.size,
               link_meta.get("model", "?"))
  return run_sweep(out_dir, pipeline, r_samples, data["class_idx"][rows], units=unit_list,
                   steps=steps, chunk=chunk, shard_size=shard_size, lo=lo, hi=hi,
                   sample_ids=rows,
                   save_strips_for=save_strips_for, strip_rows=strip_rows,
                   mesh=mesh, overwrite=overwrite, log_every_s=log_every_s)
