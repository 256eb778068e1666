"""Ground-truth check of `linkjax.motion` on the miniworld: pairs with a known change, their true
motion, a scikit-image baseline and the numbers (benchmarks/motion_validation.py, the demo).

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

Truth (`motion_truth.true_flow`): every pixel of I_o mapped through its part's primitive into
theta_p's geometry and the warp; valid where it lands on the same part of I_p. The true global
affine is the pose change (a rotation about the body centre plus a shift) followed by the warp.

Baseline (`run_skimage`, needs scikit-image, a development dependency): 'tvl1' is
`skimage.registration.optical_flow_tvl1` on grey images; 'pcc+tvl1' first removes the
translation `phase_cross_correlation` finds. Their global affine: `skimage.measure.ransac`
(AffineTransform) on the flow at every second pixel.

Numbers (`evaluate`): EPE (endpoint error, px) of the total flow (where each I_o pixel lands in
I_p) over the valid pixels of each part ('animal': all parts, 'bg': background); 'aff': mean
over animal pixels of |A_est x - A_true x|; per pair and part, the mean local displacement
(total minus the true global motion) of estimate and truth: 'part_epe' is the mean distance
between them, 'r' the Pearson correlation of their components pooled over pairs and parts
(parts with >= 10 valid pixels; NaN where the true local motion does not vary).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from linkjax import figures
from linkjax import miniworld as world
from linkjax import motion, motion_figures
from linkjax.miniworld import motion_truth

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
LABELS = world.PART_NAMES
COLUMNS = ("animal", "bg") + tuple(LABELS[1:]) + ("aff", "part_epe", "r")
SKIMAGE_METHODS = ("tvl1", "pcc+tvl1")


def _pose_affine(theta_o: np.ndarray, theta_p: np.ndarray) -> np.ndarray:
  """[n, 2, 3] pixel-index affine moving a point fixed in the animal frame from o to p."""
  po = {k: np.asarray(v, np.float64) for k, v in world.physical(jnp.asarray(theta_o)).items()}
  pp = {k: np.asarray(v, np.float64) for k, v in world.physical(jnp.asarray(theta_p)).items()}

  def rot(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s], [s, c]])

  out = []
  for i in range(len(theta_o)):
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
  """Pairs and truth of one case (see the module docstring).

  Returns:
    {'eps_o', 'eps_p' [n, D] noise, 'cls' [n], 'theta_o', 'theta_p' [n, D], 'images_o',
     'images_p' [n, 64, 64, 3] float in [0, 1], 'masks_o', 'masks_p' [n, 64, 64], 'warp'
     [n, 2, 3], 'flow' [n, 64, 64, 2] true total flow, 'valid' [n, 64, 64] bool, 'affine'
     [n, 2, 3] true global motion}.
  """
  if name not in CASES:
    raise ValueError(f"unknown motion case {name!r}; cases: {list(CASES)}")
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
  size = img_o.shape[1]
  warp_aff = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (n, 1, 1))
  if warp:
    for i in range(n):
      s = rng.uniform(*WARP["zoom"])
      t = math.radians(rng.uniform(-WARP["rotation_deg"], WARP["rotation_deg"]))
      a = s * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
      c = np.array([(size - 1) / 2.0] * 2)
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


def skimage_available() -> bool:
  try:
    import skimage  # noqa: F401
  except ImportError:
    return False
  return True


def tvl1(o: np.ndarray, p: np.ndarray) -> np.ndarray:
  """scikit-image's TV-L1 flow (defaults) of one pair [H, W, 3] in [0, 1] -> [H, W, 2] (dx, dy)."""
  from skimage import color, registration

  v = registration.optical_flow_tvl1(color.rgb2gray(o), color.rgb2gray(p))
  return np.stack([v[1], v[0]], -1)  # (row, col) -> (dx, dy)


def run_skimage(name: str, img_o: np.ndarray, img_p: np.ndarray, seed: int
                ) -> dict[str, np.ndarray]:
  """The baseline `name` ('tvl1' or 'pcc+tvl1') on pairs [n, H, W, 3] in [0, 1].

  Returns:
    {'total_flow' [n, H, W, 2], 'affine' [n, 2, 3]} (affine: RANSAC on the flow).
  """
  from skimage import color, measure, registration, transform

  if name not in SKIMAGE_METHODS:
    raise ValueError(f"unknown baseline {name!r}; expected one of {SKIMAGE_METHODS}")
  flows, affs = [], []
  yy, xx = np.mgrid[:img_o.shape[1], :img_o.shape[2]].astype(np.float64)
  for i in range(len(img_o)):
    if name == "tvl1":
      f = tvl1(img_o[i], img_p[i])
    else:
      shift, _, _ = registration.phase_cross_correlation(color.rgb2gray(img_o[i]),
                                                         color.rgb2gray(img_p[i]),
                                                         upsample_factor=10)
      t = -np.asarray(shift)  # (row, col) displacement of I_p relative to I_o
      back = ndimage.shift(img_p[i], (-t[0], -t[1], 0), order=1, mode="nearest")
      f = tvl1(img_o[i], back) + np.array([t[1], t[0]])
    src = np.stack([xx, yy], -1)[::2, ::2].reshape(-1, 2)
    dst = src + f[::2, ::2].reshape(-1, 2)
    model, _ = measure.ransac((src, dst), transform.AffineTransform, min_samples=3,
                              residual_threshold=1.0, max_trials=200,
                              rng=np.random.default_rng([seed, i]))
    flows.append(f)
    affs.append(model.params[:2] if model is not None else np.eye(3)[:2])
  return {"total_flow": np.asarray(flows, np.float32), "affine": np.asarray(affs, np.float32)}


def evaluate(est: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
  """Errors of an estimate ({'total_flow' [n, H, W, 2], 'affine' [n, 2, 3]}) against a case's
  truth (`make_case`); see the module docstring for the numbers."""
  flow, valid, masks = data["flow"], data["valid"], data["masks_o"]
  h, w = flow.shape[1:3]
  err = np.linalg.norm(est["total_flow"] - flow, axis=-1)
  out = {"animal": float(err[valid & (masks > 0)].mean()),
         "bg": float(err[valid & (masks == 0)].mean())}
  for lab, name in enumerate(LABELS[1:], 1):
    sel = valid & (masks == lab)
    out[name] = float(err[sel].mean()) if sel.any() else math.nan
  true_aff = np.asarray(motion.affine_flow(jnp.asarray(data["affine"]), h, w))
  est_aff = np.asarray(motion.affine_flow(jnp.asarray(est["affine"]), h, w))
  out["aff"] = float(np.linalg.norm(est_aff - true_aff, axis=-1)[masks > 0].mean())
  pe, pt = part_motion(est["total_flow"], data)
  out["part_epe"] = float(np.linalg.norm(pe - pt, axis=-1).mean())
  # No local change (translate, rotate, affine): nothing to correlate with.
  out["r"] = (float(np.corrcoef(pe.ravel(), pt.ravel())[0, 1]) if pt.std() > 0.05
              else math.nan)
  out["true_local"] = float(np.linalg.norm(pt, axis=-1).mean())
  return out


def part_motion(total_flow: np.ndarray, data: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
  """Per pair and part (>= 10 valid pixels), the mean local displacement (total flow minus the
  true global motion) of an estimate and of the truth: ([K, 2], [K, 2])."""
  flow, valid, masks = data["flow"], data["valid"], data["masks_o"]
  true_aff = np.asarray(motion.affine_flow(jnp.asarray(data["affine"]), *flow.shape[1:3]))
  pe, pt = [], []
  for i in range(len(flow)):
    for lab in range(1, len(LABELS)):
      sel = valid[i] & (masks[i] == lab)
      if sel.sum() >= 10:
        pe.append((total_flow[i] - true_aff[i])[sel].mean(0))
        pt.append((flow[i] - true_aff[i])[sel].mean(0))
  return np.asarray(pe).reshape(-1, 2), np.asarray(pt).reshape(-1, 2)


def run_ours(img_o: np.ndarray, img_p: np.ndarray, *, key: jax.Array,
             config: motion.MotionConfig = motion.MotionConfig(), descriptors_o=None,
             descriptors_p=None) -> dict[str, np.ndarray]:
  """`motion.estimate` on pairs [n, H, W, 3] in [0, 1] (optional descriptor maps) as numpy:
  {'total_flow', 'flow', 'affine', 'confidence'}."""
  res = motion.estimate(jnp.asarray(img_o), jnp.asarray(img_p), descriptors_o, descriptors_p,
                        key=key, config=config)
  return {"total_flow": np.asarray(res.total_flow), "affine": np.asarray(res.affine),
          "flow": np.asarray(res.flow), "confidence": np.asarray(res.confidence)}


def figure(path, data: dict[str, np.ndarray], est: dict[str, np.ndarray],
           baseline: dict[str, np.ndarray] | None, title: str, n: int = 4) -> None:
  """Rows: pairs; columns: I_o, I_p, our residual (local) flow, the true local motion (on the
  animal), and the baseline's total flow if given."""
  h, w = data["flow"].shape[1:3]
  true_aff = np.asarray(motion.affine_flow(jnp.asarray(data["affine"]), h, w))
  n = min(n, len(data["flow"]))
  cols = 5 if baseline is not None else 4
  fig, axes = figures.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n), squeeze=False)
  for i in range(n):
    ax = axes[i]
    ax[0].imshow(data["images_o"][i])
    ax[1].imshow(data["images_p"][i])
    top = max(1.0, float(np.abs(data["flow"][i] - true_aff[i]).max()))
    motion_figures.plot_flow(ax[2], data["images_o"][i], est["flow"][i], est["confidence"][i],
                     step=3, margin=3, min_percentile=0, min_norm=0.3, max_norm=top)
    on = data["valid"][i] & (data["masks_o"][i] > 0)  # the (textureless) background left out
    true_local = np.where(on[..., None], data["flow"][i] - true_aff[i], 0.0)
    motion_figures.plot_flow(ax[3], data["images_o"][i], true_local, None, step=3, margin=3,
                     min_percentile=0, min_norm=0.3, max_norm=top)
    if baseline is not None:
      motion_figures.plot_flow(ax[4], data["images_o"][i], baseline["total_flow"][i], None, step=3,
                       margin=3, min_percentile=0, min_norm=0.3)
    for a in ax[:2]:
      a.set_xticks([])
      a.set_yticks([])
  for a, t in zip(axes[0], ("I_o", "I_p", "ours: local flow", "truth: local motion",
                            "TV-L1: total flow")):
    a.set_title(t, fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  figures.save(fig, path, dpi=110)
