r"""Motion fields (`linkjax.motion`) against the miniworld's true motion, vs scikit-image.

  python -m benchmarks.motion_validation --pairs=40 --out=/tmp/motion_validation.json

Pairs, cases, truth, the scikit-image baseline and the numbers: `linkjax.miniworld.motion_check`.

Worlds: 'render' (the renderer's images, exact truth) and 'generator' (the built-in
generator's images of the same thetas, which reproduce the renders only approximately
(PSNR ~21 dB), so their truth is approximate too; this is where the generator's synthesis
features and the classifier's feature maps can serve as descriptors; the warp cases use them
nowhere, since a warped image has no features of its own).

Methods:
  pixels       motion.estimate on normalised 3x3 luminance patches + colour (the default)
  pixels_sim   the same with a similarity (model='similarity') as the global motion
  pixels_flow  the same with model='none' (one dense pass, no global fit)
  rgb_patch    normalised 3x3 RGB patches + colour (patch_grey=False)
  rgb          colour only (patch_radius=0)
  gen / gen+px synthesis features at --gen_layers (margins cut), alone / with the pixels
  clf / clf+px classifier feature maps (--clf_layers), alone / with the pixels
  tvl1         skimage.registration.optical_flow_tvl1 on grey images (defaults); its global
               affine: skimage.measure.ransac(AffineTransform) on its flow (every 2nd pixel)
  pcc+tvl1     phase_cross_correlation (upsample 10) translation, then TV-L1 on the residual

Numbers (`motion_check.evaluate`): EPE (px) of the total flow per part, the affine error, the
mean local part motion's error (part_epe) and correlation (r) with the truth.

Speed (--speed): `motion.estimate` on a batch of 64 pairs (64 x 64) after compilation, against
TV-L1 (and pcc + TV-L1) on the same pairs, interleaved and repeated in this process; wall and
CPU seconds per batch.
"""

from __future__ import annotations

import os

# Two host devices, so the speed test can shard a batch over both CPU cores (as the tests
# configure four); everything else runs on the first device.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()

import functools
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from linkjax import bundle, files, jobs, motion, preprocess
from linkjax.demo.config import BUILTIN
from linkjax.miniworld import motion_check as mc
from linkjax.miniworld import motion_truth
from linkjax.models import segmenter

_PAIRS = flags.DEFINE_integer("pairs", 40, "Pairs per case.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the pairs and of RANSAC.")
_OUT = flags.DEFINE_string("out", None, "JSON file for all numbers (optional).")
_CASES = flags.DEFINE_list("cases", None, "Cases to run (default: all).")
_WORLDS = flags.DEFINE_list("worlds", ["render", "generator"], "Worlds: render, generator.")
_METHODS = flags.DEFINE_list("methods", None, "Methods to run (default: all that apply).")
_GEN_LAYERS = flags.DEFINE_list("gen_layers", ["L4_36_32", "L6_68_32", "L8_64_16"],
                                "Synthesis layers used as descriptors.")
_CLF_LAYERS = flags.DEFINE_list("clf_layers", ["stem", "layer1"],
                                "Classifier feature maps used as descriptors.")
_SPEED = flags.DEFINE_bool("speed", True, "Also time a batch of 64 pairs against skimage.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions in the speed test.")
_FIGURES = flags.DEFINE_string("figures", None, "Directory for example figures (optional): "
                               "I_o, I_p, our residual flow, the true local motion, TV-L1.")

FEATURE_METHODS = ("gen", "gen+px", "clf", "clf+px")
OUR_CONFIGS = {
    "pixels": motion.MotionConfig(),
    "pixels_sim": motion.MotionConfig(model="similarity"),
    "pixels_flow": motion.MotionConfig(model="none"),
    "rgb_patch": motion.MotionConfig(patch_grey=False),
    "rgb": motion.MotionConfig(patch_radius=0),
    "gen": motion.MotionConfig(),
    "gen+px": motion.MotionConfig(pixel_weight=1.0),
    "clf": motion.MotionConfig(),
    "clf+px": motion.MotionConfig(pixel_weight=1.0),
}


# --- pairs and truth ----------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _generate(models, params, z, c):
  img, feats = models.render(params, models.mapping(params, z, c), features=True)
  img01 = jnp.clip((jnp.transpose(img, (0, 2, 3, 1)) + 1.0) / 2.0, 0.0, 1.0)
  _, acts = models.classify_uint8(params, preprocess.to_uint8(img))
  return img01, feats, acts


def generator_world(data: dict[str, np.ndarray], models, params) -> dict[str, object]:
  """The generator's images (and descriptor maps) of the case's thetas; warp as in the case."""
  layers = tuple(_GEN_LAYERS.value)
  margins = segmenter.stylegan_margins(models.generator_config, layers)
  out = {}
  for side in ("o", "p"):
    img, feats, acts = _generate(models, params, jnp.asarray(data[f"eps_{side}"]),
                                 jnp.asarray(data["cls"], jnp.int32))
    out[f"images_{side}"] = np.asarray(img)
    out[f"gen_{side}"] = motion.feature_maps(feats, layers, margins)
    out[f"clf_{side}"] = tuple(acts[k] for k in _CLF_LAYERS.value)
  if not np.allclose(data["warp"], np.array([[1, 0, 0], [0, 1, 0]])):
    out["images_p"] = np.asarray(motion_truth.warp_render(
        jnp.asarray(out["images_p"]), jnp.asarray(data["masks_p"]), jnp.asarray(data["warp"]))[0])
    out["warped"] = True
  return out


# --- methods ------------------------------------------------------------------------------------

def run_ours(name: str, img_o, img_p, extra, key) -> dict[str, np.ndarray]:
  desc_o = desc_p = None
  if name.startswith("gen"):
    desc_o, desc_p = extra["gen_o"], extra["gen_p"]
  elif name.startswith("clf"):
    desc_o, desc_p = extra["clf_o"], extra["clf_p"]
  return mc.run_ours(img_o, img_p, key=key, config=OUR_CONFIGS[name], descriptors_o=desc_o,
                     descriptors_p=desc_p)


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
  print(f"\n{title}")
  print(f"{'method':>10} " + " ".join(f"{c[:7]:>7}" for c in mc.COLUMNS))
  for method, r in rows.items():
    print(f"{method:>10} " + " ".join(f"{r.get(c, math.nan):7.3f}" for c in mc.COLUMNS))


# --- speed ----------------------------------------------------------------------------------

def speed(data: dict[str, np.ndarray], repeats: int, key) -> dict[str, float]:
  """Seconds per batch of 64 pairs: ours (pixels, compiled; on one device, and sharded over
  the two host devices) vs TV-L1 on the same pairs, interleaved; best of `repeats`."""
  img_o, img_p = data["images_o"][:64], data["images_p"][:64]
  jo, jp = jnp.asarray(img_o), jnp.asarray(img_p)
  cfg = OUR_CONFIGS["pixels"]
  mesh = jobs.data_mesh()
  sharded = jax.jit(lambda _, a, b: motion.estimate(a, b, key=key, config=cfg))
  runs = {
      "ours_1dev": lambda: jax.block_until_ready(motion.estimate(jo, jp, key=key, config=cfg)),
      f"ours_{len(mesh.devices)}dev": lambda: jobs.map_batches(sharded, (), img_o, img_p,
                                                               batch=64, mesh=mesh),
      "tvl1": lambda: [mc.tvl1(img_o[i], img_p[i]) for i in range(len(img_o))],
  }
  out: dict[str, float] = {"n_pairs": len(img_o), "repeats": repeats,
                           "devices": len(mesh.devices)}
  for name, fn in runs.items():
    if name.startswith("ours"):
      t = time.perf_counter()
      fn()
      out[f"{name}_first_call_s"] = time.perf_counter() - t
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, fn in runs.items():
      w, c = time.perf_counter(), time.process_time()
      fn()
      times[name].append((time.perf_counter() - w, time.process_time() - c))
  for name, v in times.items():
    v = np.asarray(v)
    out[f"{name}_wall"] = float(v[:, 0].min())
    out[f"{name}_wall_median"] = float(np.median(v[:, 0]))
    out[f"{name}_cpu"] = float(v[:, 1].min())
  out["load_average"] = os.getloadavg()[0]
  return out


def main(argv):
  del argv
  cases = _CASES.value or list(mc.CASES)
  known = {"--cases": (cases, list(mc.CASES)), "--worlds": (_WORLDS.value, ["render", "generator"]),
           "--methods": (_METHODS.value or [], list(OUR_CONFIGS) + list(mc.SKIMAGE_METHODS))}
  for flag, (given, allowed) in known.items():
    bad = [v for v in given if v not in allowed]
    if bad:
      raise app.UsageError(f"{flag}: unknown {bad}; choose from {allowed}")
  key = jax.random.key(_SEED.value)
  results: dict[str, object] = {"pairs": _PAIRS.value, "seed": _SEED.value,
                                "gen_layers": _GEN_LAYERS.value, "clf_layers": _CLF_LAYERS.value,
                                "configs": {k: repr(v) for k, v in OUR_CONFIGS.items()}}
  models = params = None
  if "generator" in _WORLDS.value:
    models, params = bundle.ModelBundle.load(generator=BUILTIN["generator"],
                                             classifier=BUILTIN["classifier"])
  for case in cases:
    data = mc.make_case(case, _PAIRS.value, _SEED.value)
    for wname in _WORLDS.value:
      extra: dict[str, object] = {}
      img_o, img_p = data["images_o"], data["images_p"]
      note = ""
      if wname == "generator":
        extra = generator_world(data, models, params)
        img_o, img_p = extra["images_o"], extra["images_p"]
        # How far the generated image of theta_o sits from its render: the truth's own error
        # in this world (measured with `pixels_flow` between the two images).
        floor = run_ours("pixels_flow", data["images_o"], img_o, extra, key)["total_flow"]
        on = data["masks_o"] > 0
        results.setdefault("generator_floor", {})[case] = float(
            np.linalg.norm(floor, axis=-1)[on].mean())
        note = (f"; render -> generated image of the same theta: mean |flow| "
                f"{results['generator_floor'][case]:.2f} px on the animal")
      methods = _METHODS.value or (list(OUR_CONFIGS) + list(mc.SKIMAGE_METHODS))
      rows, ests = {}, {}
      for m in methods:
        if m in FEATURE_METHODS and (wname != "generator" or extra.get("warped")):
          continue
        t = time.perf_counter()
        ests[m] = (mc.run_skimage(m, img_o, img_p, _SEED.value) if m in mc.SKIMAGE_METHODS
                   else run_ours(m, img_o, img_p, extra, key))
        rows[m] = mc.evaluate(ests[m], data)
        rows[m]["seconds"] = time.perf_counter() - t
      rows_true = float(np.linalg.norm(data["flow"], axis=-1)[data["valid"] & (
          data["masks_o"] > 0)].mean())
      if not rows:  # every method chosen needs another world
        continue
      print_table(f"[{wname}] {case}: EPE (px) of the total flow; mean true |flow| on the "
                  f"animal {rows_true:.2f} px, true local part motion "
                  f"{next(iter(rows.values()))['true_local']:.2f} px{note}", rows)
      results.setdefault(wname, {})[case] = rows
      if _FIGURES.value and "pixels" in ests and "tvl1" in ests:
        shown = dict(data, images_o=img_o, images_p=img_p)
        mc.figure(pathlib.Path(_FIGURES.value) / f"motion_{wname}_{case}.png", shown,
               ests["pixels"], ests["tvl1"], f"[{wname}] {case}")
  if _SPEED.value:
    data = mc.make_case("combined", 64, _SEED.value + 1)
    results["speed"] = sp = speed(data, _REPEATS.value, key)
    print(f"\nspeed: {sp['n_pairs']} pairs of 64x64, best (median) of {sp['repeats']}, "
          f"load average {sp['load_average']:.1f} on this machine")
    for name in ("ours_1dev", f"ours_{sp['devices']}dev", "tvl1"):
      print(f"  {name:>10}: {sp[name + '_wall']:.2f} s wall ({sp[name + '_wall_median']:.2f}),"
            f" {sp[name + '_cpu']:.2f} s CPU"
            + (f"; first call (compile) {sp[name + '_first_call_s']:.1f} s"
               if name + "_first_call_s" in sp else ""))
  if _OUT.value:
    files.write_json(_OUT.value, files.json_safe(results))


if __name__ == "__main__":
  app.run(main)
