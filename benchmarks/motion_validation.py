r"""Motion fields (`linkjax.motion`) against the miniworld's true motion, vs scikit-image.

  python -m benchmarks.motion_validation --pairs=40 --out=/tmp/motion_validation.json

Pairs. For each case, theta_o is drawn from the class-conditional distribution (classes
cycled) and theta_p differs from it in the case's parameters only: the standard-normal noise
eps behind theta = tanh(m_c + s eps) has the changed entries set to +-a (a uniform in the
case's range) and the other entries rescaled so that mean(eps^2) = 1, and eps_p negates the
changed entries. Since the miniworld generator normalises z to mean(z^2) = 1, z = eps gives
generated images of exactly theta_o and theta_p too.

Cases (changed parameters; "warp": I_p is then moved by a random image affine: zoom 0.9-1.1,
rotation +-8 degrees, shift +-3 px about the image centre):
  translate  pose_x, pose_y (the whole animal shifts; the background stays)
  rotate     pose_angle (the animal turns about its body centre)
  affine     none, warp (everything moves by the affine)
  leg_len, body_len, head_r, tail_len   one part changes; attached parts move with it
  combined   pose_x + leg_len, warp (global motion plus a local change)

Truth (`linkjax.miniworld.motion_truth.true_flow`): every pixel of I_o mapped through its
part's primitive (ellipse or capsule) into theta_p's geometry and the warp; valid where it lands
on the same part of I_p (occlusions left out) and, on the body, where its texture and outline
agree. The true global affine is the pose change (a rotation about the body centre plus a
shift) followed by the warp.

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

Numbers: EPE (endpoint error, px) of the total flow (where each I_o pixel lands in I_p),
pooled over the valid pixels of each part ('animal': all parts, 'bg': background); 'aff': mean
over animal pixels of |A_est x - A_true x|; 'part': per pair and part, the mean local
displacement (total minus the true global motion) of estimate and truth; 'part_epe' is the
mean distance between them, 'r' the Pearson correlation of their components pooled over pairs
and parts (parts with >= 10 valid pixels).

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
from scipy import ndimage
from skimage import color, measure, registration, transform

from linkjax import bundle, figures, files, jobs, motion, preprocess
from linkjax import miniworld as world
from linkjax.demo.config import BUILTIN
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

WARP = {"zoom": (0.9, 1.1), "rotation_deg": 8.0, "shift": 3.0}
CASES = {
    "translate": ({"pose_x": (0.5, 1.2), "pose_y": (0.5, 1.2)}, False),
    "rotate": ({"pose_angle": (0.6, 1.4)}, False),
    "affine": ({}, True),
    "leg_len": ({"leg_len": (1.2, 2.5)}, False),
    "body_len": ({"body_len": (1.2, 2.5)}, False),
    "head_r": ({"head_r": (1.2, 2.5)}, False),
    "tail_len": ({"tail_len": (1.2, 2.5)}, False),
    "combined": ({"pose_x": (0.4, 1.0), "leg_len": (1.2, 2.5)}, True),
}
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
SKIMAGE_METHODS = ("tvl1", "pcc+tvl1")
LABELS = world.PART_NAMES


# --- pairs and truth ----------------------------------------------------------------------------

def _pose_affine(theta_o: np.ndarray, theta_p: np.ndarray) -> np.ndarray:
  """[n, 2, 3] pixel-index affine moving a point fixed in the animal frame from o to p."""
  po = {k: np.asarray(v, np.float64) for k, v in world.physical(jnp.asarray(theta_o)).items()}
  pp = {k: np.asarray(v, np.float64) for k, v in world.physical(jnp.asarray(theta_p)).items()}
  out = []
  for i in range(len(theta_o)):
    rot = lambda deg: np.array([[math.cos(math.radians(deg)), -math.sin(math.radians(deg))],
                                [math.sin(math.radians(deg)), math.cos(math.radians(deg))]])
    # Renderer: animal = R(ang) (X - P) with R(a) = [[c, -s], [s, c]]; X = R(ang)^T a + P.
    a = rot(pp["pose_angle"][i]).T @ rot(po["pose_angle"][i])
    c_o = np.array([po["pose_x"][i], po["pose_y"][i]]) - 0.5  # body centre, index coords
    c_p = np.array([pp["pose_x"][i], pp["pose_y"][i]]) - 0.5
    out.append(np.concatenate([a, (c_p - a @ c_o)[:, None]], 1))
  return np.asarray(out)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a after b, [n, 2, 3]."""
  lin = a[:, :, :2] @ b[:, :, :2]
  return np.concatenate([lin, (a[:, :, :2] @ b[:, :, 2:] + a[:, :, 2:])], axis=2)


def make_case(name: str, n: int, seed: int) -> dict[str, np.ndarray]:
  """Pairs and truth of one case (see the module docstring)."""
  changes, warp = CASES[name]
  rng = np.random.default_rng([seed, list(CASES).index(name)])
  d = world.THETA_DIM
  eps = rng.standard_normal((n, d))
  changed = [world.PARAM_NAMES.index(p) for p in changes]
  for p, (lo, hi) in changes.items():
    eps[:, world.PARAM_NAMES.index(p)] = rng.choice([-1.0, 1.0], n) * rng.uniform(lo, hi, n)
  others = np.setdiff1d(np.arange(d), changed)
  target = d - np.sum(eps[:, changed] ** 2, axis=1)
  eps[:, others] *= np.sqrt(target / np.sum(eps[:, others] ** 2, axis=1))[:, None]
  eps_p = eps.copy()
  eps_p[:, changed] *= -1.0
  cls = np.arange(n) % world.NUM_CLASSES
  th_o = np.asarray(world.theta_from_noise(jnp.asarray(eps, jnp.float32), jnp.asarray(cls)))
  th_p = np.asarray(world.theta_from_noise(jnp.asarray(eps_p, jnp.float32), jnp.asarray(cls)))
  img_o, m_o = (np.asarray(x) for x in world.render(jnp.asarray(th_o)))
  img_p, m_p = (np.asarray(x) for x in world.render(jnp.asarray(th_p)))
  warp_aff = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
  if warp:
    for i in range(n):
      s = rng.uniform(*WARP["zoom"])
      t = math.radians(rng.uniform(-WARP["rotation_deg"], WARP["rotation_deg"]))
      a = s * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
      c = np.array([31.5, 31.5])
      warp_aff[i] = np.concatenate([a, (c - a @ c + rng.uniform(-WARP["shift"], WARP["shift"],
                                                                  2))[:, None]], 1)
    img_p, m_p = (np.asarray(x) for x in motion_truth.warp_render(
        jnp.asarray(img_p), jnp.asarray(m_p), jnp.asarray(warp_aff, jnp.float32)))
  flow, valid = motion_truth.true_flow(jnp.asarray(th_o), jnp.asarray(th_p), jnp.asarray(m_o),
                                       jnp.asarray(m_p), jnp.asarray(warp_aff, jnp.float32))
  return {"eps_o": eps.astype(np.float32), "eps_p": eps_p.astype(np.float32), "cls": cls,
          "theta_o": th_o, "theta_p": th_p, "images_o": img_o, "images_p": img_p,
          "masks_o": m_o, "masks_p": m_p, "warp": warp_aff.astype(np.float32),
          "flow": np.asarray(flow), "valid": np.asarray(valid),
          "affine": _compose(warp_aff, _pose_affine(th_o, th_p)).astype(np.float32)}


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
  res = motion.estimate(jnp.asarray(img_o), jnp.asarray(img_p), desc_o, desc_p, key=key,
                        config=OUR_CONFIGS[name])
  return {"total_flow": np.asarray(res.total_flow), "affine": np.asarray(res.affine),
          "flow": np.asarray(res.flow), "confidence": np.asarray(res.confidence)}


def _tvl1(o: np.ndarray, p: np.ndarray) -> np.ndarray:
  v = registration.optical_flow_tvl1(color.rgb2gray(o), color.rgb2gray(p))
  return np.stack([v[1], v[0]], -1)  # (row, col) -> (dx, dy)


def run_skimage(name: str, img_o, img_p, seed: int) -> dict[str, np.ndarray]:
  flows, affs = [], []
  yy, xx = np.mgrid[:img_o.shape[1], :img_o.shape[2]].astype(np.float64)
  for i in range(len(img_o)):
    if name == "tvl1":
      f = _tvl1(img_o[i], img_p[i])
    else:
      shift, _, _ = registration.phase_cross_correlation(color.rgb2gray(img_o[i]),
                                                         color.rgb2gray(img_p[i]),
                                                         upsample_factor=10)
      t = -np.asarray(shift)  # (row, col) displacement of I_p relative to I_o
      back = ndimage.shift(img_p[i], (-t[0], -t[1], 0), order=1, mode="nearest")
      f = _tvl1(img_o[i], back) + np.array([t[1], t[0]])
    src = np.stack([xx, yy], -1)[::2, ::2].reshape(-1, 2)
    dst = src + f[::2, ::2].reshape(-1, 2)
    model, _ = measure.ransac((src, dst), transform.AffineTransform, min_samples=3,
                              residual_threshold=1.0, max_trials=200,
                              rng=np.random.default_rng([seed, i]))
    flows.append(f)
    affs.append(model.params[:2] if model is not None else np.eye(3)[:2])
  return {"total_flow": np.asarray(flows, np.float32), "affine": np.asarray(affs, np.float32)}


# --- evaluation ---------------------------------------------------------------------------------

def evaluate(est: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
  flow, valid, masks = data["flow"], data["valid"], data["masks_o"]
  err = np.linalg.norm(est["total_flow"] - flow, axis=-1)
  out = {"animal": float(err[valid & (masks > 0)].mean()),
         "bg": float(err[valid & (masks == 0)].mean())}
  for lab, name in enumerate(LABELS[1:], 1):
    sel = valid & (masks == lab)
    out[name] = float(err[sel].mean()) if sel.any() else math.nan
  true_aff = np.asarray(motion.affine_flow(jnp.asarray(data["affine"]), 64, 64))
  est_aff = np.asarray(motion.affine_flow(jnp.asarray(est["affine"]), 64, 64))
  out["aff"] = float(np.linalg.norm(est_aff - true_aff, axis=-1)[masks > 0].mean())
  pe, pt = [], []
  for i in range(len(flow)):
    for lab in range(1, len(LABELS)):
      sel = valid[i] & (masks[i] == lab)
      if sel.sum() >= 10:
        pe.append((est["total_flow"][i] - true_aff[i])[sel].mean(0))
        pt.append((flow[i] - true_aff[i])[sel].mean(0))
  pe, pt = np.asarray(pe), np.asarray(pt)
  out["part_epe"] = float(np.linalg.norm(pe - pt, axis=-1).mean())
  # No local change (translate, rotate, affine): nothing to correlate with.
  out["r"] = (float(np.corrcoef(pe.ravel(), pt.ravel())[0, 1]) if pt.std() > 0.05
              else math.nan)
  out["true_local"] = float(np.linalg.norm(pt, axis=-1).mean())
  return out


COLUMNS = ("animal", "bg") + LABELS[1:] + ("aff", "part_epe", "r")


def print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
  print(f"\n{title}")
  print(f"{'method':>10} " + " ".join(f"{c[:7]:>7}" for c in COLUMNS))
  for method, r in rows.items():
    print(f"{method:>10} " + " ".join(f"{r.get(c, math.nan):7.3f}" for c in COLUMNS))


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
      "tvl1": lambda: [_tvl1(img_o[i], img_p[i]) for i in range(len(img_o))],
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


def figure(path: pathlib.Path, data: dict[str, np.ndarray], est: dict[str, np.ndarray],
           tvl1: dict[str, np.ndarray], title: str, n: int = 4) -> None:
  """Rows: pairs; columns: I_o, I_p, our residual flow, the true local motion (on the animal),
  TV-L1's total flow."""
  true_aff = np.asarray(motion.affine_flow(jnp.asarray(data["affine"]), 64, 64))
  fig, axes = figures.subplots(n, 5, figsize=(11, 2.3 * n), squeeze=False)
  for i in range(n):
    ax = axes[i]
    ax[0].imshow(data["images_o"][i])
    ax[1].imshow(data["images_p"][i])
    top = max(1.0, float(np.abs(data["flow"][i] - true_aff[i]).max()))
    motion.plot_flow(ax[2], data["images_o"][i], est["flow"][i], est["confidence"][i],
                     step=3, margin=3, min_percentile=0, min_norm=0.3, max_norm=top)
    on = data["valid"][i] & (data["masks_o"][i] > 0)  # the (textureless) background left out
    true_local = np.where(on[..., None], data["flow"][i] - true_aff[i], 0.0)
    motion.plot_flow(ax[3], data["images_o"][i], true_local, None, step=3, margin=3,
                     min_percentile=0, min_norm=0.3, max_norm=top)
    motion.plot_flow(ax[4], data["images_o"][i], tvl1["total_flow"][i], None, step=3,
                     margin=3, min_percentile=0, min_norm=0.3)
    for a in ax[:2]:
      a.set_xticks([])
      a.set_yticks([])
  for a, t in zip(axes[0], ("I_o", "I_p", "ours: residual flow", "truth: local motion",
                            "TV-L1: total flow")):
    a.set_title(t, fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  figures.save(fig, path, dpi=110)


def main(argv):
  del argv
  cases = _CASES.value or list(CASES)
  key = jax.random.key(_SEED.value)
  results: dict[str, object] = {"pairs": _PAIRS.value, "seed": _SEED.value,
                                "gen_layers": _GEN_LAYERS.value, "clf_layers": _CLF_LAYERS.value,
                                "configs": {k: repr(v) for k, v in OUR_CONFIGS.items()}}
  models = params = None
  if "generator" in _WORLDS.value:
    models, params = bundle.ModelBundle.load(generator=BUILTIN["generator"],
                                             classifier=BUILTIN["classifier"])
  for case in cases:
    data = make_case(case, _PAIRS.value, _SEED.value)
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
      methods = _METHODS.value or (list(OUR_CONFIGS) + list(SKIMAGE_METHODS))
      rows, ests = {}, {}
      for m in methods:
        if m in FEATURE_METHODS and (wname != "generator" or extra.get("warped")):
          continue
        t = time.perf_counter()
        ests[m] = (run_skimage(m, img_o, img_p, _SEED.value) if m in SKIMAGE_METHODS
                   else run_ours(m, img_o, img_p, extra, key))
        rows[m] = evaluate(ests[m], data)
        rows[m]["seconds"] = time.perf_counter() - t
      rows_true = float(np.linalg.norm(data["flow"], axis=-1)[data["valid"] & (
          data["masks_o"] > 0)].mean())
      print_table(f"[{wname}] {case}: EPE (px) of the total flow; mean true |flow| on the "
                  f"animal {rows_true:.2f} px, true local part motion "
                  f"{next(iter(rows.values()))['true_local']:.2f} px{note}", rows)
      results.setdefault(wname, {})[case] = rows
      if _FIGURES.value and "pixels" in ests and "tvl1" in ests:
        shown = dict(data, images_o=img_o, images_p=img_p)
        figure(pathlib.Path(_FIGURES.value) / f"motion_{wname}_{case}.png", shown,
               ests["pixels"], ests["tvl1"], f"[{wname}] {case}")
  if _SPEED.value:
    data = make_case("combined", 64, _SEED.value + 1)
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
