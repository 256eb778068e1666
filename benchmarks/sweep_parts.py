r"""Per-part cost of the unit-sweep pipeline on the built-in miniworld: new code vs the old one.

  python -m benchmarks.sweep_parts --batch=64 --repeats=5

Parts, each timed per image at --batch images (inputs computed once, beforehand):
  generator   `synthesis(ws)` (the image); old: the whole batch in one pass; new: in strided
              micro-batches of --micro_batch (`batching.micro_batched`, as the sweep pipeline
              now runs it).
  generator+segmenter
              `synthesis(ws, return_features=True)` -> `predict_masks`, as in the pipeline: old:
              whole batch, old segmenter path; new: micro-batched, new path (the features never
              leave a step). (Returning all features of 64 images from micro-batched steps costs
              more than it saves: the sweep never does that.)
  classifier  exact uint8 input path + ResNet forward; old / new as the generator.
  segmenter   `predict_masks` from the feature list; old: `head(concat_features(...))` (the
              first convolution on the resized concatenation); new: the model's forward
              (first convolution at each map's resolution, `upsampled_conv`), once over the
              whole batch ('segmenter') and as the pipeline runs it ('segmenter (micro)').
  metrics     `quantify.part_metrics` on the 64 x 64 images and masks; old: a frozen copy of the
              previous implementation (below); new: `linkjax.quantify`.
  pipeline    link -> generator -> classifier + segmenter -> part metrics, one jitted call as in
              `sweep.sweep_chunk`: old = whole batch, old segmenter path, old metrics; new =
              `ModelBundle.sweep_outputs` micro-batched + `quantify.part_metrics`.
Old and new are timed interleaved in the same process (the machine's cores may be shared:
wall clock is noisy), --repeats times each after a compiling call; the median is reported, with
process CPU time alongside. FLOPs come from XLA's cost analysis of the function without
micro-batching (a micro-batched call does the same arithmetic, but XLA counts a loop body
once); GFLOP/s = FLOPs / median wall time.
"""

from __future__ import annotations

import pathlib
import statistics
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from linkjax import batching, bundle, checkpoint, link, preprocess, quantify
from linkjax.models import segmenter as seg_lib
from linkjax.models import stylegan_xl

_BATCH = flags.DEFINE_integer("batch", 64, "Images per call (the sweep's chunk).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median reported).")
_MICRO = flags.DEFINE_integer("micro_batch", 2, "Images per step of the micro-batched variants.")
_PARTS = flags.DEFINE_list("parts", ["generator", "classifier", "segmenter", "metrics",
                                     "pipeline"], "Parts to measure.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of latents, classes and the random link.")

WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "linkjax" / "miniworld" / "weights"


# ---- frozen copy of the previous part metrics (linkjax/quantify.py before this change) ------


def _old_local_entropy(grey: jax.Array, radius: int = 5) -> jax.Array:
  *batch, h, w = grey.shape
  r = radius
  pad = [(0, 0)] * len(batch) + [(r, r), (r, r)]
  padded = jnp.pad(grey.astype(jnp.int32), pad, constant_values=-1)
  levels = jnp.arange(256, dtype=jnp.int32)[:, None, None]
  onehot = (padded[..., None, :, :] == levels).astype(jnp.uint8)
  zeros = jnp.zeros((*batch, 256, h + 2 * r, 1), jnp.uint8)
  prefix = jnp.concatenate([zeros, jnp.cumsum(onehot, axis=-1, dtype=jnp.uint8)], axis=-1)
  counts = jnp.zeros((*batch, 256, h, w), jnp.uint8)
  for i, hw in enumerate(quantify.disk_half_widths(r)):
    rows = prefix[..., i:i + h, :]
    counts = counts + (rows[..., r + hw + 1:r + hw + 1 + w] - rows[..., r - hw:r - hw + w])
  n = jnp.sum(counts.astype(jnp.int32), axis=-3).astype(jnp.float32)
  c = counts.astype(jnp.float32)
  c_log_c = jnp.sum(c * jnp.log2(jnp.maximum(c, 1.0)), axis=-3)
  return jnp.log2(n) - c_log_c / n


class _OldParts(NamedTuple):
  image: jax.Array
  masks: jax.Array
  area: jax.Array

  def mean(self, x):
    return jnp.sum(self.masks * x, axis=(1, 2)) / jnp.where(self.area > 0, self.area, 1.0)


def _old_inertia(p):
  h, w = p.masks.shape[1:]
  rows = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  dr = rows - p.mean(rows)[:, None, None]
  dc = cols - p.mean(cols)[:, None, None]
  return p.mean(dc * dc), -p.mean(dr * dc), p.mean(dr * dr)


def _old_image_metrics(image, mask, labels):
  m = (mask[None, :, :] == labels[:, None, None]).astype(jnp.float32)
  p = _OldParts(image=image.astype(jnp.float32), masks=m, area=jnp.sum(m, axis=(1, 2)))
  luminance = p.mean(p.image @ jnp.asarray(quantify._LUMA, jnp.float32))  # noqa: SLF001
  entropy = p.mean(_old_local_entropy(quantify.to_grey_uint8(p.image), 5))
  a, b, c = _old_inertia(p)
  half_tr = 0.5 * (a + c)
  disc = jnp.sqrt(0.25 * (a - c) ** 2 + b * b)
  l1, l2 = jnp.maximum(half_tr + disc, 0.0), jnp.maximum(half_tr - disc, 0.0)
  ecc = jnp.where(l1 > 0, jnp.sqrt(jnp.clip(1.0 - l2 / jnp.where(l1 > 0, l1, 1.0), 0.0, 1.0)),
                  0.0)
  a, b, c = _old_inertia(p)  # the old code recomputed the moments for the angle
  tol = jnp.float32(1e-6) * (a + c)
  orient = jnp.where(jnp.abs(a - c) <= tol,
                     jnp.where(b < -tol, jnp.float32(np.pi / 4), jnp.float32(-np.pi / 4)),
                     0.5 * jnp.arctan2(-2.0 * b, c - a))
  values = jnp.stack([p.area, luminance, entropy, ecc, jnp.degrees(orient)], axis=-1)
  is_area = jnp.arange(5) == 0
  return jnp.where((p.area > 0)[:, None] | is_area[None, :], values, jnp.float32(jnp.nan))


def old_part_metrics(images, masks, n_labels=10):
  """`quantify.part_metrics` as it was (frozen for this benchmark)."""
  labels = jnp.arange(1, n_labels, dtype=jnp.int32)
  return jax.vmap(lambda im, m: _old_image_metrics(im, m.astype(jnp.int32), labels))(images,
                                                                                      masks)


# ---- measurement -------------------------------------------------------------------------


def _flops(fn, *args) -> float:
  # XLA counts a loop body once: the entropy's loop over grey-level blocks runs as one block of
  # all 256 levels here (the same operations per level).
  block, quantify._LEVEL_BLOCK = quantify._LEVEL_BLOCK, 256  # noqa: SLF001
  try:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  finally:
    quantify._LEVEL_BLOCK = block  # noqa: SLF001
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan")))


def _time(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
  """Median (wall s, CPU s) per call of each zero-argument fn, interleaved."""
  for fn in fns.values():
    jax.block_until_ready(fn())  # compile
  samples = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      samples[k].append((time.perf_counter() - t0, time.process_time() - c0))
  return {k: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
          for k, v in samples.items()}


def _row(name: str, variant: str, sec: tuple[float, float], flops: float, batch: int) -> str:
  wall, cpu = sec
  gflops = flops / wall / 1e9
  return (f"{name:20s} {variant:4s} {wall / batch * 1e3:9.2f} {cpu / batch * 1e3:9.2f} "
          f"{flops / batch / 1e6:10.1f} {gflops:8.1f}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # checkpoint loading is chatty
  b, m = _BATCH.value, _MICRO.value
  gen = checkpoint.load(WEIGHTS / "generator", role="generator")
  clf = checkpoint.load(WEIGHTS / "classifier", role="classifier")
  seg = checkpoint.load(WEIGHTS / "segmenter", role="segmenter")
  g_def, g_state = nnx.split(gen)
  c_def, c_state = nnx.split(clf)
  s_def, s_state = nnx.split(seg)
  cfg = seg.config
  rng = np.random.default_rng(_SEED.value)
  z = jnp.asarray(rng.normal(size=(b, gen.config.z_dim)), jnp.float32)
  cls = jnp.asarray(rng.integers(0, gen.config.c_dim, b), jnp.int32)
  ws = jax.jit(lambda s, z, c: nnx.merge(g_def, s).mapping(z, c, psi=0.7))(g_state, z, cls)
  resize, crop = clf.config.resize, clf.config.crop

  def synth(state, w):
    img, feats = nnx.merge(g_def, state).synthesis(w, return_features=True)
    return img, seg_lib.select_features(feats, cfg.feature_layers)

  def classify(state, u8):
    logits, _ = nnx.merge(c_def, state)(preprocess.classifier_input(u8, resize=resize,
                                                                    crop=crop))
    return logits

  def seg_old(state, maps):
    model = nnx.merge(s_def, state)
    x = seg_lib.concat_features(maps, cfg.resolution, cfg.feature_margins)
    return jnp.argmax(model.head(x), axis=-1).astype(jnp.int32)

  def seg_new(state, maps):
    return seg_lib.predict_masks(nnx.merge(s_def, state), maps)

  img, maps = jax.jit(synth)(g_state, ws)
  u8 = preprocess.to_uint8(img)
  masks = jax.jit(seg_new)(s_state, maps)
  images = u8.astype(jnp.float32) / jnp.float32(255.0)
  agree = float(jnp.mean(masks == jax.jit(seg_old)(s_state, maps)))

  # A random linear link r -> w around the sampled ws, for the whole-pipeline row.
  r_dim = clf.config.num_features
  link_params = {"kernel": rng.normal(size=(r_dim, gen.config.w_dim)).astype(np.float32) * 0.02,
                 "bias": np.asarray(ws[0, 0])}
  r = jnp.asarray(rng.gamma(1.0, 1.0, (b, r_dim)), jnp.float32)
  models, bparams = bundle.ModelBundle.from_models(generator=gen, classifier=clf, segmenter=seg,
                                                   link=link_params)
  new_outputs = batching.micro_batched(models.sweep_outputs, m)

  def old_apply(params, rr):  # the pipeline as it was: old segmenter path, whole batch
    w = link.predict(params["link"], rr)
    im, fl = synth(params["generator"], stylegan_xl.broadcast_w(w, gen.config.num_ws))
    small = preprocess.to_uint8(im)
    return (jax.nn.softmax(classify(params["classifier"], small), axis=-1),
            old_part_metrics(small.astype(jnp.float32) / jnp.float32(255.0),
                             seg_old(params["segmenter"], fl), cfg.n_labels))

  def new_apply(params, rr):
    out = new_outputs(params, rr)
    return out["probs"], quantify.part_metrics(out["images"].astype(jnp.float32) / 255.0,
                                               out["masks"], n_labels=cfg.n_labels)

  def unbatched_new_apply(params, rr):  # same arithmetic, for the FLOP count
    out = models.sweep_outputs(params, rr)
    return out["probs"], quantify.part_metrics(out["images"].astype(jnp.float32) / 255.0,
                                               out["masks"], n_labels=cfg.n_labels)

  mb = lambda fn: batching.micro_batched(fn, m)
  # part -> [(variant, function, args, flops function)]
  image = lambda state, w: nnx.merge(g_def, state).synthesis(w)
  gen_seg_old = lambda st, w: seg_old(st[1], synth(st[0], w)[1])
  gen_seg_new = lambda st, w: seg_new(st[1], synth(st[0], w)[1])
  parts = {
      "generator": [("old", image, (g_state, ws), image), ("new", mb(image), (g_state, ws), image)],
      "generator+segmenter": [("old", gen_seg_old, ((g_state, s_state), ws), gen_seg_old),
                              ("new", mb(gen_seg_new), ((g_state, s_state), ws), gen_seg_new)],
      "classifier": [("old", classify, (c_state, u8), classify),
                     ("new", mb(classify), (c_state, u8), classify)],
      "segmenter": [("old", seg_old, (s_state, maps), seg_old),
                    ("new", seg_new, (s_state, maps), seg_new)],
      "segmenter (micro)": [("old", seg_old, (s_state, maps), seg_old),
                            ("new", mb(seg_new), (s_state, maps), seg_new)],
      "metrics": [("old", old_part_metrics, (images, masks), old_part_metrics),
                  ("new", lambda i, k: quantify.part_metrics(i, k, cfg.n_labels), (images, masks),
                   lambda i, k: quantify.part_metrics(i, k, cfg.n_labels))],
      "pipeline": [("old", old_apply, (bparams, r), old_apply),
                   ("new", new_apply, (bparams, r), unbatched_new_apply)],
  }
  wanted = set(_PARTS.value)
  parts = {k: v for k, v in parts.items() if set(k.split(" ")[0].split("+")) <= wanted}
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; batch {b}, micro-batch "
        f"{m}, {_REPEATS.value} repeats (median); segmenter masks old == new on {agree:.6f} of "
        "pixels")
  print(f"{'part':20s} {'var':4s} {'ms/img':>9s} {'cpu ms':>9s} {'MFLOP/img':>10s} "
        f"{'GFLOP/s':>8s}  ratio old/new (wall, cpu)")
  for name, variants in parts.items():
    fns = {v: (lambda f=jax.jit(fn), a=args: f(*a)) for v, fn, args, _ in variants}
    times = _time(fns, _REPEATS.value)
    for v, _, args, ffn in variants:
      print(_row(name, v, times[v], _flops(ffn, *args), b))
    (w_old, c_old), (w_new, c_new) = times["old"], times["new"]
    print(f"{'':20s} ratio {w_old / w_new:.2f}x wall, {c_old / c_new:.2f}x CPU")


if __name__ == "__main__":
  app.run(main)
