"""Motion fields: known translations and affines on smooth random textures, the robust fit,
per-part summaries, determinism, no retrace, and the miniworld's true motion."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from linkjax import miniworld as world
from linkjax import motion, motion_figures
from linkjax.miniworld import motion_truth

S = 32  # image side of the synthetic pairs
# Small and fast: 3 levels (32, 16, 8), the affine pass stops at 16 x 16; two Gauss-Newton
# rounds per level (the default's one leaves ~0.12 px on these textures). One compilation
# (same config and batch shape) serves the affine, translation and no-retrace tests.
CFG = motion.MotionConfig(levels=3, affine_level=1, hypotheses=32, refine_iters=2)
MARGIN = 6  # pixels from the border left out (content entering from outside is unknown)


def _texture_pairs(affines: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """I_o: a smooth random RGB texture; I_p(M x) = I_o(x), sampled with cubic splines from a
  larger texture (so nothing in view is made up at the borders)."""
  rng = np.random.default_rng(seed)
  pad = 16
  big = ndimage.gaussian_filter(rng.random((len(affines), S + 2 * pad, S + 2 * pad, 3)),
                                (0, 1.5, 1.5, 0))
  lo, hi = big.min(axis=(1, 2, 3), keepdims=True), big.max(axis=(1, 2, 3), keepdims=True)
  big = (big - lo) / (hi - lo)
  yy, xx = np.mgrid[:S, :S].astype(np.float64)

  def sample(img, x, y):
    return np.stack([ndimage.map_coordinates(img[..., c], [y + pad, x + pad], order=3,
                                             mode="reflect") for c in range(3)], -1)

  io, ip = [], []
  for b, m in zip(big, affines):
    io.append(sample(b, xx, yy))
    a_inv = np.linalg.inv(m[:, :2])
    q = np.stack([xx - m[0, 2], yy - m[1, 2]], -1) @ a_inv.T
    ip.append(sample(b, q[..., 0], q[..., 1]))
  return (np.clip(np.asarray(io), 0, 1).astype(np.float32),
          np.clip(np.asarray(ip), 0, 1).astype(np.float32))


def _affine(scale=1.0, rot_deg=0.0, tx=0.0, ty=0.0, shear=0.0) -> np.ndarray:
  """About the image centre: x' = c + R diag(s) [[1, shear], [0, 1]] (x - c) + t."""
  t = math.radians(rot_deg)
  a = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * scale
  a = a @ np.array([[1.0, shear], [0.0, 1.0]])
  c = np.array([(S - 1) / 2.0] * 2)
  return np.concatenate([a, (c - a @ c + np.array([tx, ty]))[:, None]], 1)


AFFINES = np.stack([_affine(tx=2.3, ty=-1.6), _affine(rot_deg=5.0, tx=-1.0),
                    _affine(scale=1.05, ty=1.4), _affine(scale=0.96, rot_deg=-4.0, tx=1.2,
                                                         shear=0.03)]).astype(np.float32)


def _interp_tolerance(io: np.ndarray, ip: np.ndarray, affines: np.ndarray) -> float:
  """Displacement tolerance from interpolation error: the rms photometric gap between I_o and
  I_p moved back by the TRUE affine with bilinear interpolation (the matcher's own
  interpolation), converted to pixels through the texture's rms gradient; 0.05 px at least."""
  aligned = np.asarray(motion.warp_affine(jnp.asarray(ip), jnp.asarray(affines)))
  inner = (slice(None), slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
  gap = np.sqrt(np.mean((aligned - io)[inner] ** 2))
  gy, gx = np.gradient(io, axis=(1, 2))
  grad = np.sqrt(np.mean((gx ** 2 + gy ** 2)[inner]))
  return max(0.05, gap / grad)


@pytest.fixture(scope="module")
def affine_case():
  io, ip = _texture_pairs(AFFINES)
  res = motion.estimate(jnp.asarray(io), jnp.asarray(ip), key=jax.random.key(0), config=CFG)
  return io, ip, jax.tree.map(np.asarray, res)


def test_affines_recovered(affine_case):
  io, ip, res = affine_case
  tol = _interp_tolerance(io, ip, AFFINES)
  assert tol < 0.15, tol  # the textures are smooth enough for a meaningful test
  true = np.asarray(motion.affine_flow(jnp.asarray(AFFINES), S, S))
  est = np.asarray(motion.affine_flow(jnp.asarray(res.affine), S, S))
  err = np.linalg.norm(est - true, axis=-1)[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
  assert err.mean(axis=(1, 2)).max() < tol, (err.mean(axis=(1, 2)), tol)
  # The total flow matches the truth away from the borders, and the residual is ~0 there.
  tot = np.linalg.norm(res.total_flow - true, axis=-1)[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
  assert tot.mean() < tol and np.percentile(tot, 95) < 4 * tol, (tot.mean(), tol)
  assert np.abs(res.flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN]).mean() < tol
  # Decomposition: scale and rotation; the shift of the image centre in pair 0.
  p = res.affine_params
  names = motion.AFFINE_PARAM_NAMES
  true_p = np.asarray(motion.decompose_affine(jnp.asarray(AFFINES)))
  np.testing.assert_allclose(p[:, names.index("rotation_deg")],
                             true_p[:, names.index("rotation_deg")], atol=0.5)
  np.testing.assert_allclose(p[:, :2], true_p[:, :2], atol=0.01)
  centre = np.array([(S - 1) / 2.0] * 2)
  moved = res.affine[0, :, :2] @ centre + res.affine[0, :, 2]
  np.testing.assert_allclose(moved - centre, [2.3, -1.6], atol=tol)  # pair 0: a translation
  assert (res.inliers > 0.8).all()
  # The aligned image is I_p warped back onto I_o.
  gap = np.abs(res.aligned - io)[:, MARGIN:-MARGIN, MARGIN:-MARGIN].mean()
  assert gap < 0.02, gap


def test_translation_flow_equals_shift_away_from_borders():
  shifts = np.array([[1.5, -2.25], [-3.0, 0.5], [0.0, 0.0], [4.5, 3.5]], np.float32)
  affs = np.stack([_affine(tx=t[0], ty=t[1]) for t in shifts]).astype(np.float32)
  io, ip = _texture_pairs(affs, seed=1)
  tol = _interp_tolerance(io, ip, affs)
  res = motion.estimate(jnp.asarray(io), jnp.asarray(ip), key=jax.random.key(0), config=CFG)
  flow = np.asarray(res.total_flow)[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
  err = np.linalg.norm(flow - shifts[:, None, None], axis=-1)
  assert err.mean() < tol and np.median(err) < tol, (err.mean(), tol)
  np.testing.assert_allclose(np.asarray(res.affine)[:, :, :2], np.eye(2)[None].repeat(4, 0),
                             atol=0.01)
  # Identical images: zero motion exactly where the matcher sees no difference.
  np.testing.assert_allclose(flow[2], 0.0, atol=1e-3)
  # Confidence is high on the texture away from the borders.
  assert np.asarray(res.confidence)[:, MARGIN:-MARGIN, MARGIN:-MARGIN].mean() > 0.5


def test_fit_ignores_planted_outliers():
  rng = np.random.default_rng(0)
  m_true = _affine(scale=1.1, rot_deg=12.0, tx=3.0, ty=-2.0)
  src = rng.uniform(0, S, (200, 2))
  dst = src @ m_true[:, :2].T + m_true[:, 2] + rng.normal(0, 0.05, (200, 2))
  bad = rng.random(200) < 0.4
  dst[bad] = rng.uniform(0, S, (bad.sum(), 2))  # 40 % wrong correspondences
  w = jnp.ones(200)
  field_err = lambda m: np.linalg.norm(src @ (np.asarray(m)[:, :2] - m_true[:, :2]).T
                                       + np.asarray(m)[:, 2] - m_true[:, 2], axis=-1).mean()
  m, frac = motion.fit_affine(jnp.asarray(src), jnp.asarray(dst), w, jax.random.key(3))
  assert field_err(m) < 0.03  # noise 0.05 px on ~120 inliers
  assert abs(float(frac) - 0.6) < 0.08
  # Plain least squares is pulled far away: the robust fit is what passes above.
  x = np.concatenate([src, np.ones((200, 1))], 1)
  plain = np.linalg.lstsq(x, dst, rcond=None)[0].T
  assert field_err(plain) > 3.0
  # The similarity and translation models.
  m_sim, _ = motion.fit_affine(jnp.asarray(src), jnp.asarray(dst), w, jax.random.key(3),
                               model="similarity")
  assert field_err(m_sim) < 0.03
  shift = src + np.array([1.5, -0.5])
  shift[bad] = rng.uniform(0, S, (bad.sum(), 2))
  m_t, _ = motion.fit_affine(jnp.asarray(src), jnp.asarray(shift), w, jax.random.key(3),
                             model="translation")
  np.testing.assert_allclose(np.asarray(m_t), [[1, 0, 1.5], [0, 1, -0.5]], atol=0.01)


def test_decompose_affine_round_trip():
  m = _affine(scale=1.2, rot_deg=30.0, shear=0.1, tx=2.0, ty=-1.0)
  p = np.asarray(motion.decompose_affine(jnp.asarray(m, jnp.float32)))
  sx, sy, rot, shear, tx, ty = p
  t = math.radians(rot)
  a = (np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
       @ np.diag([sx, sy]) @ np.array([[1.0, shear], [0.0, 1.0]]))
  np.testing.assert_allclose(a, m[:, :2], atol=1e-5)
  np.testing.assert_allclose([sx, sy, rot, shear], [1.2, 1.2, 30.0, 0.1], atol=1e-4)
  np.testing.assert_allclose([tx, ty], m[:, 2], atol=1e-5)


def test_warp_affine_matches_scipy():
  rng = np.random.default_rng(0)
  img = rng.random((1, 12, 16, 2)).astype(np.float32)
  m = _affine(scale=1.1, rot_deg=10.0, tx=1.0)[None].astype(np.float32)
  out = np.asarray(motion.warp_affine(jnp.asarray(img), jnp.asarray(m)))[0]
  yy, xx = np.mgrid[:12, :16].astype(np.float64)
  qx = m[0, 0, 0] * xx + m[0, 0, 1] * yy + m[0, 0, 2]
  qy = m[0, 1, 0] * xx + m[0, 1, 1] * yy + m[0, 1, 2]
  ref = np.stack([ndimage.map_coordinates(img[0, ..., c], [qy, qx], order=1, mode="nearest")
                  for c in range(2)], -1)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_part_summary_on_hand_made_masks():
  masks = np.zeros((1, 8, 8), np.int32)
  masks[0, :4] = 1
  masks[0, 4:, :4] = 2  # label 3 absent
  flow = np.zeros((1, 8, 8, 2), np.float32)
  flow[0, :4] = [3.0, 4.0]  # |f| = 5 on label 1
  flow[0, 4:, :4, 0] = np.arange(4, dtype=np.float32)[None]  # dx = 0..3 across label 2
  conf = np.ones((1, 8, 8), np.float32)
  conf[0, 4:, 3] = 0.0  # the dx = 3 column of label 2 is unreliable
  out = np.asarray(motion.part_summary(jnp.asarray(flow), jnp.asarray(conf),
                                       jnp.asarray(masks), 4))
  f = {n: i for i, n in enumerate(motion.SUMMARY_FIELDS)}
  np.testing.assert_allclose(out[0, 1, [f["mean_dx"], f["mean_dy"], f["mean_norm"],
                                        f["max_norm"], f["area"], f["confidence"]]],
                             [3, 4, 5, 5, 32, 1])
  np.testing.assert_allclose(out[0, 2, [f["mean_dx"], f["mean_dy"], f["max_norm"],
                                        f["area"], f["confidence"]]], [1.0, 0, 2.0, 16, 0.75])
  np.testing.assert_allclose(out[0, 0, [f["mean_dx"], f["area"]]], [0.0, 16])  # background
  assert np.isnan(out[0, 3, f["mean_dx"]]) and out[0, 3, f["area"]] == 0


def test_deterministic_from_key_and_no_retrace(affine_case):
  io, ip, res = affine_case
  again = motion.estimate(jnp.asarray(io), jnp.asarray(ip), key=jax.random.key(0), config=CFG)
  for a, b in zip(jax.tree.leaves(res), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, np.asarray(b))
  size = motion.estimate._cache_size()
  motion.estimate(jnp.asarray(ip), jnp.asarray(io), key=jax.random.key(5), config=CFG)
  assert motion.estimate._cache_size() == size


def test_caller_descriptor_maps():
  # A translated texture matched on caller-given half-resolution maps only (the pixels off).
  affs = np.stack([_affine(tx=2.0, ty=1.0)]).astype(np.float32)
  io, ip = _texture_pairs(affs, seed=2)
  half = lambda x: jnp.asarray(x.reshape(1, S // 2, 2, S // 2, 2, 3).mean(axis=(2, 4)))
  cfg = motion.MotionConfig(levels=3, affine_level=1, model="translation", pixel_weight=0.0)
  res = motion.estimate(jnp.asarray(io), jnp.asarray(ip), (half(io),), (half(ip),),
                        key=jax.random.key(0), config=cfg)
  np.testing.assert_allclose(np.asarray(res.affine)[0, :, 2], [2.0, 1.0], atol=0.15)
  with pytest.raises(ValueError, match="descriptor maps"):
    motion.estimate(jnp.asarray(io), jnp.asarray(ip), (half(io),), (), key=jax.random.key(0),
                    config=cfg)


def test_feature_maps_cut_margins():
  feats = {"a": jnp.arange(2 * 3 * 8 * 8, dtype=jnp.float32).reshape(2, 3, 8, 8)}
  (out,) = motion.feature_maps(feats, ["a"], [2])
  assert out.shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(np.asarray(out)[1, 0, 0], np.asarray(feats["a"])[1, :, 2, 2])


def test_config_checks():
  with pytest.raises(ValueError, match="model"):
    motion.MotionConfig(model="homography")
  with pytest.raises(ValueError, match="affine_level"):
    motion.MotionConfig(levels=2, affine_level=2)


def test_plot_flow_writes_png(tmp_path):
  rng = np.random.default_rng(0)
  flow = rng.normal(size=(32, 32, 2))
  motion_figures.plot_flow(tmp_path / "f.png", rng.random((32, 32, 3)), flow, np.ones((32, 32)),
                           step=3, margin=2, overlay=0.3, title="t")
  assert (tmp_path / "f.png").stat().st_size > 1000
  ys, _ = motion_figures.select_vectors(flow, step=2, margin=4, min_percentile=0,
                                        min_norm=0.0)
  assert ys.min() >= 4 and ys.max() < 28 and len(ys) == 144
  rgb = motion_figures.flow_to_hsv(np.array([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]), 1.0)
  np.testing.assert_allclose(rgb[0], [1, 0, 0])  # +x: red at full value
  np.testing.assert_allclose(rgb[2], [0, 0, 0])  # no motion: black


# --- the miniworld's true motion ------------------------------------------------------------

def test_truth_primitives_reproduce_the_renderers_masks():
  theta = world.sample_theta(jax.random.key(1), jnp.arange(20) % world.NUM_CLASSES)
  _, masks = world.render(theta, antialias=False)
  np.testing.assert_array_equal(np.asarray(motion_truth.primitive_masks(theta)),
                                np.asarray(masks))


@pytest.mark.parametrize("param", ["pose_x", "pose_angle", "leg_len", "head_r", "tail_len"])
def test_true_flow_moves_colours_onto_colours(param):
  # Hard-edged renders: wherever the truth is valid, I_p at x + flow(x) (nearest pixel) shows
  # I_o's colour at x, except on the body's texture, sampled off its pixel centres.
  theta = world.sample_theta(jax.random.key(2), jnp.arange(10) % world.NUM_CLASSES)
  theta_p = theta.at[:, world.PARAM_NAMES.index(param)].add(0.6).clip(-1, 1)
  img_o, m_o = (np.asarray(x) for x in world.render(theta, antialias=False))
  img_p, m_p = (np.asarray(x) for x in world.render(theta_p, antialias=False))
  flow, valid = (np.asarray(x) for x in motion_truth.true_flow(
      theta, theta_p, jnp.asarray(m_o), jnp.asarray(m_p)))
  yy, xx = np.mgrid[:64, :64]
  tx = np.clip(np.round(xx + flow[..., 0]).astype(int), 0, 63)
  ty = np.clip(np.round(yy + flow[..., 1]).astype(int), 0, 63)
  moved = img_p[np.arange(10)[:, None, None], ty, tx]
  # Pixels inside flat-coloured regions (3x3 neighbourhood of one colour: no part edges and
  # no far/near leg boundary), off the textured body.
  pad = np.pad(img_o, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  uniform = np.all([np.abs(pad[:, 1 + dy:65 + dy, 1 + dx:65 + dx] - img_o).max(-1) < 1e-6
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
  flat = valid & uniform & (m_o > 0) & (m_o != world.PART_NAMES.index("body"))
  assert flat.sum() > 500 and valid[m_o > 0].mean() > 0.85
  np.testing.assert_allclose(moved[flat], img_o[flat], atol=1e-5)
  assert np.abs(flow[valid & (m_o > 0)]).max() > 0.5  # something moved


# --- batched use and the integrations ---------------------------------------------------------

def test_config_for_size():
  assert motion.config_for_size(64) == motion.MotionConfig()
  c32 = motion.config_for_size(32)
  assert (c32.levels, c32.affine_level) == (3, 1)
  c16 = motion.config_for_size(16)
  assert (c16.levels, c16.affine_level) == (2, 0)
  assert motion.config_for_size(24).levels == 2  # 24 -> 12; 6 is below the 8 px floor


def test_estimate_many_equals_estimate_and_ignores_the_batch():
  # Shapes shared with the other tests (estimate on 4 pairs, estimate_many in batches of 4):
  # compilations are the slow part on 2 cores.
  io, ip = _texture_pairs(AFFINES, seed=4)
  u8 = lambda x: np.round(x * 255).astype(np.uint8)
  key = jax.random.key(7)
  whole = motion.estimate(jnp.asarray(u8(io) / np.float32(255)),
                          jnp.asarray(u8(ip) / np.float32(255)), key=key, config=CFG)
  # Five rows in two batches of 4 (the second padded); row i uses fold_in(key, i), as in one
  # call on all pairs, so rows 0-3 equal `estimate`'s; row 4 repeats pair 0 with another key.
  many = motion.estimate_many(u8(io)[[0, 1, 2, 3, 0]], u8(ip)[[0, 1, 2, 3, 0]], key=key,
                              config=CFG, batch=4)
  assert isinstance(many, motion.MotionResult) and many.flow.shape == (5, S, S, 2)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(many)):
    # Two compilations (4 pairs at once vs sharded batches): float32 rounding only (the
    # rotation in degrees carries ~1e-4).
    np.testing.assert_allclose(np.asarray(a), b[:4], atol=1e-3)
  np.testing.assert_allclose(many.affine[4], many.affine[0], atol=0.02)
  with pytest.raises(ValueError, match="uint8"):
    motion.estimate_many(io, ip, key=key, config=CFG)
  # The same input checks as `estimate` (they used to be skipped here).
  with pytest.raises(ValueError, match="divisible"):
    motion.estimate_many(u8(io)[:, :S - 2, :S - 2], u8(ip)[:, :S - 2, :S - 2], key=key,
                         config=CFG)
  with pytest.raises(ValueError, match="nothing to match"):
    motion.estimate_many(u8(io), u8(ip), key=key,
                         config=dataclasses.replace(CFG, pixel_weight=0.0))


def _blob_world(shift_px: int = 4, size: int = 64):
  """Sweep models whose unit 0 moves a textured box (label 1) right by round(shift_px * r[0])
  pixels over a fixed textured background (label 0) and floor band (label 2); other units
  change only the probabilities."""
  from linkjax import testing

  rng = np.random.default_rng(3)
  smooth = lambda a: ndimage.gaussian_filter(a, (1.2, 1.2, 0))  # noqa: E731
  tex = lambda a, lo: lo + 0.4 * (a - a.min()) / (a.max() - a.min())  # noqa: E731
  # Textured everywhere (flat regions have no motion to find); the box brighter than its
  # surroundings: a part with an outline.
  bg = tex(smooth(rng.random((size, size, 3))), 0.0).astype(np.float32)
  box = tex(smooth(rng.random((size, 2 * size, 3))), 0.6).astype(np.float32)
  yy, xx = np.mgrid[:size, :size]

  def apply(params, r):
    s = jnp.round(jnp.float32(shift_px) * r[:, 0]).astype(jnp.int32)[:, None, None]  # [B, 1, 1]
    x = jnp.asarray(xx)[None] - s  # the box's own coordinates
    y = jnp.broadcast_to(jnp.asarray(yy)[None], x.shape)
    inside = (x >= 22) & (x < 38) & (y >= 20) & (y < 36)
    img = jnp.where(inside[..., None], jnp.asarray(box)[y, x + size // 2], jnp.asarray(bg)[None])
    floor = (y >= size - 8) & ~inside
    masks = jnp.where(inside, 1, jnp.where(floor, 2, 0)).astype(jnp.int32)
    u8 = jnp.round(jnp.clip(img, 0, 1) * 255).astype(jnp.uint8)
    return {"probs": jax.nn.softmax(r[:, :3] @ params["c"], axis=-1), "masks": masks,
            "images": u8}

  return testing.FnSweep(apply=apply, n_labels=3, mask_resolution=size,
                         label_names=("background", "box", "floor"))


def test_sweep_motion_follows_the_unit_that_moves_a_part(tmp_path):
  from linkjax import sweep_motion

  models = _blob_world()
  params = {"c": jnp.eye(3, dtype=jnp.float32)}
  r = np.array([[0.25, 0.5, 0.1], [0.75, 0.1, 0.9], [0.5, 0.3, 0.3]], np.float32)  # whole px
  lo, hi = np.array([0.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)
  key = jax.random.key(0)
  summary = sweep_motion.run(tmp_path, models, params, r, np.arange(3, dtype=np.int32), [0, 1],
                             lo=lo, hi=hi, steps=3, key=key, rows=3)
  assert (tmp_path / "strips" / "motion_unit_0000.png").stat().st_size > 1000
  per = files_read(tmp_path / "strips" / "motion_unit_0000.npz")
  f = {n: i for i, n in enumerate(motion.SUMMARY_FIELDS)}
  # Unit 0: the box moves by 4 (v - r0) px along x (1 to 3 px either way); the background
  # stays, and so does the global affine.
  for e, v in enumerate((0.0, 1.0)):
    want = 4.0 * (v - r[:, 0])
    np.testing.assert_allclose(per["total"][:, e, 1, f["mean_dx"]], want, atol=0.3)
    np.testing.assert_allclose(per["local"][:, e, 1, f["mean_dx"]], want, atol=0.3)
    np.testing.assert_allclose(per["total"][:, e, 1, f["mean_dy"]], 0.0, atol=0.3)
    assert (per["total"][:, e, 0, f["mean_norm"]] < 0.35).all()  # background
    np.testing.assert_allclose(per["affine_params"][:, e, :2], 1.0, atol=0.02)
  # Unit 1 changes nothing in the image: no motion anywhere.
  still = files_read(tmp_path / "strips" / "motion_unit_0001.npz")
  assert np.abs(still["total_flow"]).max() < 0.05
  # motion.npz / motion.json: the per-sample summaries aggregated as documented (hand computed).
  agg = files_read(tmp_path / "motion.npz")
  np.testing.assert_array_equal(agg["units"], [0, 1])
  np.testing.assert_allclose(agg["values"], [[0.0, 1.0], [0.0, 1.0]])
  hand = motion.part_summary(jnp.asarray(per["total_flow"][:, 1]),
                             jnp.asarray(per["confidence"][:, 1]), jnp.asarray(per["masks"]), 3)
  hand = np.asarray(hand)
  np.testing.assert_allclose(agg["total"][0, 1, :, f["mean_norm"]],
                             hand[:, :, f["mean_norm"]].mean(0), rtol=1e-5)
  np.testing.assert_allclose(agg["total"][0, 1, :, f["max_norm"]],
                             hand[:, :, f["max_norm"]].max(0), rtol=1e-5)
  box = summary["per_unit"]["0"]["high"]["total"]["box"]
  assert box["mean_dx"] == pytest.approx(float(agg["total"][0, 1, 1, f["mean_dx"]]))
  assert box["mean_norm"] > 5 * summary["per_unit"]["1"]["high"]["total"]["box"]["mean_norm"]
  # A rerun reads the finished units back.
  mtime = (tmp_path / "strips" / "motion_unit_0000.npz").stat().st_mtime_ns
  sweep_motion.run(tmp_path, models, params, r, np.arange(3, dtype=np.int32), [0, 1], lo=lo,
                   hi=hi, steps=3, key=key, rows=3)
  assert (tmp_path / "strips" / "motion_unit_0000.npz").stat().st_mtime_ns == mtime


def files_read(path):
  from linkjax import files
  return files.read_npz(path)


def test_counterfactual_boundary_motion(tmp_path):
  from linkjax.counterfactual import experiment as cf_experiment
  from linkjax.counterfactual import figures as cf_figures
  from linkjax.counterfactual import path as cf_path

  affs = np.stack([_affine(tx=2.0, ty=-1.0), _affine(tx=-1.5, ty=2.5)]).astype(np.float32)
  io, ip = _texture_pairs(affs, seed=5)
  u8 = lambda x: np.round(x * 255).astype(np.uint8)
  io, ip = u8(io), u8(ip)

  def analysis(k, boundary):
    n = 4
    pred = np.where(np.arange(n) >= max(boundary, 0), 1, 0) if boundary >= 0 else np.zeros(n)
    frames = np.arange(n)
    imgs = np.stack([io[k] if (boundary < 0 or i < boundary) else ip[k] for i in frames])
    return cf_path.PairAnalysis(steps=np.arange(n) * 3, pred=pred, probs=np.zeros((n, 2)),
                                boundary=boundary, frames=frames, frame_images=imgs,
                                ref_image=io[k], ref_pred=0, distances={}, part_metrics=None)

  analyses = [analysis(0, 2), analysis(1, 0), analysis(0, -1)]
  out = cf_path.boundary_motion(analyses, key=jax.random.key(0), config=CFG, batch=4)
  assert out[2] is None
  for m, a, shift in ((out[0], analyses[0], [2.0, -1.0]), (out[1], analyses[1], [-1.5, 2.5])):
    np.testing.assert_array_equal(m["after"], ip[0 if a is analyses[0] else 1])
    np.testing.assert_array_equal(m["before"], m["original"])  # before = original image here
    inner = m["total_flow"][:, MARGIN:-MARGIN, MARGIN:-MARGIN]
    np.testing.assert_allclose(np.median(inner, axis=(1, 2)), [shift, shift], atol=0.15)
    nums = cf_experiment._motion_numbers(m)
    for name in ("before_to_flipped", "original_to_flipped"):
      assert nums[name]["affine"]["tx"] == pytest.approx(shift[0], abs=0.15)
      assert nums[name]["affine"]["ty"] == pytest.approx(shift[1], abs=0.15)
      assert nums[name]["mean_local_px"] < 0.3  # a pure shift: the affine explains it all
  cf_figures.plot_boundary_flow(tmp_path / "flow.png", analyses[0], out[0], 0, 1)
  assert (tmp_path / "flow.png").stat().st_size > 1000
  assert cf_experiment._motion_numbers(None) is None


def test_demo_motion_stage_numbers_summary_and_report(tmp_path):
  import types

  from linkjax import demo
  from linkjax.demo import report, stages
  from linkjax.miniworld import motion_check as mc

  cfg = demo.tiny_config(motion={"cases": ("head_r", "leg_len"), "pairs": 3})
  log: list[str] = []
  ctx = types.SimpleNamespace(cfg=cfg, log=log.append, out=tmp_path, classes=(0,),
                              class_names=("a",), paths={})
  (tmp_path / "motion").mkdir()
  out = stages.motion_check(ctx, tmp_path / "motion")
  assert (tmp_path / "motion" / "motion_check.png").stat().st_size > 1000
  # The pooled numbers are those of the cases' pairs together: recomputed here from the truth
  # and the same estimate (pair i of the pool uses fold_in(key, i)).
  cases = [mc.make_case(c, 3, cfg.seed) for c in ("head_r", "leg_len")]
  data = {k: np.concatenate([c[k] for c in cases]) for k in cases[0]}
  u8 = lambda x: np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
  est = motion.estimate_many(u8(data["images_o"]), u8(data["images_p"]),
                             key=jax.random.fold_in(jax.random.key(cfg.seed), 17))
  err = np.linalg.norm(est.total_flow - data["flow"], axis=-1)
  on = data["valid"] & (data["masks_o"] > 0)
  assert out["ours"]["animal"] == pytest.approx(float(err[on].mean()), rel=1e-5)
  leg = data["valid"] & (data["masks_o"] == world.PART_NAMES.index("leg"))
  assert out["ours"]["leg"] == pytest.approx(float(err[leg].mean()), rel=1e-5)
  # Quality on the built-in world's renders (sub-pixel on the animal, the part motion tracked).
  assert out["ours"]["animal"] < 1.0 and out["ours"]["r"] > 0.8, out["ours"]
  results = {"motion": {**out, "_timing": {"wall_s": 1.0, "cpu_s": 1.0}}}
  summary = report.build_summary(ctx, results)
  s = summary["motion"]
  assert s["ours"]["epe_animal"] == pytest.approx(out["ours"]["animal"])
  assert s["ours"]["epe_per_part"]["leg"] == pytest.approx(out["ours"]["leg"])
  assert set(s["ours"]["epe_per_part"]) == set(world.PART_NAMES[1:])
  assert ("tvl1" in s) == mc.skimage_available()
  figs = report.figure_list(ctx, results)
  assert [f[1] for f in figs] == ["motion/motion_check.png"]
  assert f"{out['ours']['animal']:.2f} px" in figs[0][2]
