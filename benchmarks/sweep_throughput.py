r"""Unit-sweep throughput: batched, sharded sweep vs a reference-style loop, same models, same run.

  python -m benchmarks.sweep_throughput --samples=4 --units=16 --steps=3 --chunk=64

Models (random weights; timing does not depend on them): the generator is a random
`stylegan_xl.tiny_config(--resolution)` model or the checkpoint in --generator; the classifier a
bottleneck ResNet with one block per stage and width --resnet_width (input transform resize 72 /
crop 64); the segmenter a size-S head on the reference's feature layers at --seg_resolution; the
link a random linear map R -> w_dim. Each image goes through link -> generator (+ features) ->
uint8 -> classifier (exact input path) and segmenter -> part metrics.

Timed variants (after a warm-up call that compiles):
  loop     one (sample, unit) at a time, the unit's `steps` values as one batch per call of one
           jitted function (link, generator, classifier, segmenter and JAX part metrics fused,
           compiled once), results copied to the host after every call: the same compiled
           computation as `batched`, so the ratio isolates batching / sharding / pipelining.
  loop_ref what the reference does: one (sample, unit) at a time, `steps` images per call, each
           model a separate (jitted) call with the results on the host in between (link, then
           synthesis + features, then classifier on the uint8 images, then segmenter), and the
           part metrics per image on the host with scikit-image (`regionprops`,
           `filters.rank.entropy`), as the reference's numpy/skimage/OpenCV analysis did.
  batched  `linkjax.sweep`'s compiled chunk function over chunks of --chunk triples, sharded over
           all devices, dispatch of chunk k+1 overlapping the host copy of chunk k.
  run_sweep the full driver (shards written to disk, unperturbed baseline included), counted as
           S x U x steps images.
Prints images/s (wall clock; CPU seconds alongside, since a shared machine's wall clock is noisy)
and the ratios batched / loop and batched / loop_ref.
"""

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from linkjax import bundle, checkpoint, classifier, jobs, link, preprocess, quantify, sweep, testing
from linkjax.models import resnet, segmenter, stylegan_xl

_SAMPLES = flags.DEFINE_integer("samples", 4, "Base samples.")
_UNITS = flags.DEFINE_integer("units", 16, "Units swept.")
_STEPS = flags.DEFINE_integer("steps", 3, "Values per unit.")
_CHUNK = flags.DEFINE_integer("chunk", 64, "Triples per compiled call of the batched sweep.")
_RESOLUTION = flags.DEFINE_integer("resolution", 32, "Random tiny generator's resolution.")
_GENERATOR = flags.DEFINE_string("generator", None, "Optional generator checkpoint instead of "
                                 "the random tiny one.")
_SEG_RES = flags.DEFINE_integer("seg_resolution", 32, "Segmenter / metrics resolution (128 in "
                                "the paper).")
_RESNET_WIDTH = flags.DEFINE_integer("resnet_width", 4, "Tiny ResNet width (R = 32 x width).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions (best is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and activations.")


def build_models(seed: int):
  """Random small models as a bundle with a random linear link; returns (models, params, R)."""
  if _GENERATOR.value:
    gen = checkpoint.load(_GENERATOR.value, role="generator")
  else:
    gen = stylegan_xl.StyleGANXL(stylegan_xl.tiny_config(_RESOLUTION.value), rngs=nnx.Rngs(seed))
  clf = testing.random_module(resnet.ResNet, testing.tiny_resnet_config(1000, _RESNET_WIDTH.value),
                              seed + 1)
  layers = segmenter.reference_feature_layers(gen.layer_names)
  g_def, g_state = nnx.split(gen)
  _, feats = jax.eval_shape(lambda s, w: nnx.merge(g_def, s).synthesis(
      stylegan_xl.broadcast_w(w, gen.config.num_ws), return_features=True),
      g_state, jax.ShapeDtypeStruct((1, gen.config.w_dim), jnp.float32))
  seg = testing.random_module(segmenter.FewShotSegmenter, segmenter.SegmenterConfig(
      in_channels=sum(feats[n].shape[1] for n in layers), n_labels=10, feature_layers=layers,
      resolution=_SEG_RES.value), seed + 2)
  _DEFS.update(generator=g_def, classifier=nnx.graphdef(clf), segmenter=nnx.graphdef(seg),
               num_ws=int(gen.config.num_ws), layers=layers)
  r_dim = clf.config.num_features
  rng = np.random.default_rng(seed)
  link_params = {"kernel": (rng.standard_normal((r_dim, gen.config.w_dim)) /
                            np.sqrt(r_dim)).astype(np.float32),
                 "bias": rng.standard_normal(gen.config.w_dim).astype(np.float32)}
  models, params = bundle.ModelBundle.from_models(generator=gen, classifier=clf, segmenter=seg,
                                                  link=link_params)
  return models, params, r_dim


_DEFS = {}


def _skimage_metrics(image: np.ndarray, mask: np.ndarray, n_labels: int) -> np.ndarray:
  """The reference's per-image analysis on the host (scikit-image): [L, 5] metrics."""
  from skimage.color import rgb2gray  # noqa: PLC0415
  from skimage.filters.rank import entropy  # noqa: PLC0415
  from skimage.measure import regionprops  # noqa: PLC0415
  from skimage.morphology import disk  # noqa: PLC0415
  from skimage.util import img_as_ubyte  # noqa: PLC0415
  ent = entropy(img_as_ubyte(rgb2gray(image)), disk(5))
  luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
  out = np.full((n_labels - 1, 5), np.nan)
  out[:, 0] = 0
  for p in regionprops(mask.astype(np.int64)):
    inside = mask == p.label
    out[p.label - 1] = [p.area, luma[inside].mean(), ent[inside].mean(), p.eccentricity,
                        np.degrees(p.orientation)]
  return out


def main(argv):
  del argv
  logging.info("flags: %s", {f.name: f.value for f in flags.FLAGS.get_key_flags_for_module(
      __name__)})
  models, params, r_dim = build_models(_SEED.value)
  n_s, n_u, steps = _SAMPLES.value, _UNITS.value, _STEPS.value
  rng = np.random.default_rng(_SEED.value + 3)
  r = rng.gamma(1.0, 1.0, (n_s, r_dim)).astype(np.float32)
  units = np.arange(n_u, dtype=np.int32)
  lo, hi = sweep.unit_ranges(r)
  values = sweep.sweep_values(lo, hi, steps)
  classes = (0, 1, 2)
  total = n_s * n_u * steps
  mesh = jobs.data_mesh()
  n_dev = mesh.devices.size
  chunk = -(-_CHUNK.value // n_dev) * n_dev
  print(f"devices: {n_dev} x {jax.devices()[0].platform}; {n_s} samples x {n_u} units x "
        f"{steps} steps = {total} images; chunk {chunk}")

  # --- reference-style loop: one (sample, unit) per call, `steps` images per call.
  def ref_call(params, r_rows):
    out = models.sweep_outputs(params, r_rows)
    metrics = quantify.part_metrics(out["images"].astype(jnp.float32) / jnp.float32(255.0),
                                    out["masks"], n_labels=models.n_labels)
    return out["probs"][:, jnp.asarray(classes)], metrics

  ref_jit = jax.jit(ref_call)

  def run_loop():
    for s in range(n_s):
      for u in units:
        rows = np.repeat(r[s:s + 1], steps, axis=0)
        rows[:, u] = values[u]
        probs, metrics = ref_jit(params, rows)
        np.asarray(probs), np.asarray(metrics)  # the reference pulls results every call

  # --- reference-style loop: staged calls, host round trips, scikit-image metrics per image.
  g_def, c_def, s_def = _DEFS["generator"], _DEFS["classifier"], _DEFS["segmenter"]
  num_ws = _DEFS["num_ws"]
  link_jit = jax.jit(link.predict)
  synth_jit = jax.jit(lambda st, w: nnx.merge(g_def, st).synthesis(
      stylegan_xl.broadcast_w(w, num_ws), return_features=True))
  seg_jit = jax.jit(lambda st, f: segmenter.predict_masks(nnx.merge(s_def, st), [
      f[n] for n in _DEFS["layers"]]))
  res = _SEG_RES.value

  def run_loop_ref():
    p = params
    for s in range(n_s):
      for u in units:
        rows = np.repeat(r[s:s + 1], steps, axis=0)
        rows[:, u] = values[u]
        w = np.asarray(link_jit(p["link"], rows))
        img, feats = synth_jit(p["generator"], w)
        u8 = np.asarray(preprocess.to_uint8(img))
        probs = np.asarray(classifier.classify(c_def, p["classifier"], u8)["probs"])[:, list(classes)]
        masks = np.asarray(seg_jit(p["segmenter"], {n: feats[n] for n in _DEFS["layers"]}))
        small = np.asarray(preprocess.resize_uint8(u8, res)) if u8.shape[1] != res else u8
        del probs
        for i in range(steps):
          _skimage_metrics(small[i], masks[i], models.n_labels)

  # --- batched: the sweep's compiled chunk function.
  step_fn = sweep.make_step(models, classes, mesh)
  r_dev, v_dev = jnp.asarray(r), jnp.asarray(values)

  def run_batched():
    pending = None
    for a in range(0, total, chunk):
      flat = np.arange(a, min(a + chunk, total))
      s, u, k = sweep._triples(flat, n_u, steps, units)  # noqa: SLF001
      o = step_fn(params, r_dev, v_dev, jobs.pad_rows(s, chunk), jobs.pad_rows(u, chunk),
                  jobs.pad_rows(k, chunk))
      if pending is not None:
        jax.tree.map(np.asarray, pending)
      pending = o
    jax.tree.map(np.asarray, pending)

  def run_driver():
    with tempfile.TemporaryDirectory() as d:
      sweep.run_sweep(d, models, params, r, np.zeros(n_s, np.int32), units=units, steps=steps,
                      chunk=chunk, lo=lo, hi=hi, classes=classes, mesh=mesh, log_every_s=1e9)

  results = {}
  for name, fn in (("loop", run_loop), ("loop_ref", run_loop_ref), ("batched", run_batched),
                   ("run_sweep", run_driver)):
    t0 = time.perf_counter()
    fn()  # warm-up (compiles)
    t_first = time.perf_counter() - t0
    best = np.inf
    for _ in range(_REPEATS.value):
      t0 = time.perf_counter()
      c0 = time.process_time()
      fn()
      dt = time.perf_counter() - t0
      if dt < best:
        best, cpu = dt, time.process_time() - c0
    results[name] = (total / best, total / cpu)
    print(f"{name:9s}: {total / best:8.1f} images/s wall, {total / cpu:8.1f} images/CPU-s  "
          f"(best of {_REPEATS.value}: {best:.2f} s wall, {cpu:.2f} s CPU; first call incl. "
          f"compile {t_first:.1f} s)")
  for base in ("loop", "loop_ref"):
    for name in ("batched", "run_sweep"):
      print(f"ratio {name} / {base}: {results[name][0] / results[base][0]:.2f}x wall, "
            f"{results[name][1] / results[base][1]:.2f}x CPU")


if __name__ == "__main__":
  app.run(main)
