"""Unit sweeps: the perturbation, device / chunk invariance, resume, and the real tiny models."""

import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import (bundle, checkpoint, classifier, jobs, link, pairs, preprocess, quantify,
                     sweep, testing)
from linkjax.models import segmenter, stylegan_xl
from ports import stylegan_xl as port

ROOT = pathlib.Path(__file__).resolve().parents[1]
R_DIM = 6
RES = 16


def _toy_inputs(n=6, seed=0):
  rng = np.random.default_rng(seed)
  r = rng.uniform(0.0, 2.0, (n, R_DIM)).astype(np.float32)
  return r, np.repeat(np.arange(n // 2, dtype=np.int32), 2)


TOY = testing.ToySweep(r_dim=R_DIM, resolution=RES)
TOY_PARAMS = TOY.params()


@pytest.fixture(scope="module")
def toy():
  return TOY


@pytest.fixture(scope="module")
def reference_run(toy, tmp_path_factory):
  """An uninterrupted 4-device run, chunk 8, that other tests compare against."""
  r, c = _toy_inputs()
  out = tmp_path_factory.mktemp("ref")
  res = sweep.run_sweep(out, toy, TOY_PARAMS, r, c, units=[0, 2, 3], steps=3, chunk=8,
                        mesh=jobs.data_mesh(4))
  sweep.save_strips(out, toy, TOY_PARAMS, r, c, [0], lo=r.min(0), hi=r.max(0), steps=3, chunk=8,
                    mesh=jobs.data_mesh(4))
  return out, res


def assert_metrics_close(a, b, **kw):
  """Metrics agree; angles as axes (an axis at +90 is the one at -90: for a horizontal band the
  sign follows rounding, which may depend on the batch shape)."""
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a[..., :4], b[..., :4], **kw)
  d = np.mod(a[..., 4] - b[..., 4] + 90.0, 180.0) - 90.0
  np.testing.assert_allclose(np.where(np.isnan(a[..., 4]) & np.isnan(b[..., 4]), 0.0, d), 0.0,
                             atol=1e-3)


def test_ranges_values_units_and_samples():
  r = np.array([[0.0, 5.0], [2.0, 1.0], [1.0, 3.0]], np.float32)
  lo, hi = sweep.unit_ranges(r)
  np.testing.assert_array_equal(lo, [0.0, 1.0])
  np.testing.assert_array_equal(hi, [2.0, 5.0])
  np.testing.assert_allclose(sweep.sweep_values(lo, hi, 3), [[0, 1, 2], [1, 3, 5]])
  np.testing.assert_array_equal(sweep.parse_units("0-2,7", 10), [0, 1, 2, 7])
  np.testing.assert_array_equal(sweep.parse_units("all", 3), [0, 1, 2])
  for bad in ("10", "3,3", "5-2"):
    with pytest.raises(ValueError):
      sweep.parse_units(bad, 10)
  cls = np.array([1, 0, 1, 1, 0, 2])
  draw = np.array([5, 3, 0, 2, 1, 0])
  # class order sorted; within class by draw index; first 2.
  np.testing.assert_array_equal(sweep.select_samples(cls, draw, 2), [4, 1, 2, 3, 5])
  np.testing.assert_array_equal(sweep.strip_samples(np.array([0, 0, 1, 1, 2]), 4), [0, 2, 4, 1])


def test_sweep_sets_exactly_the_unit(tmp_path):
  """A probe pipeline whose 'probabilities' are r' itself shows every perturbed activation."""
  def apply(params, r):
    b = r.shape[0]
    return {"probs": r * params["one"], "masks": jnp.zeros((b, 4, 4), jnp.int32),
            "images": jnp.zeros((b, 4, 4, 3), jnp.uint8)}

  probe = testing.FnSweep(apply=apply, n_labels=2)
  r, c = _toy_inputs()
  units = [4, 1]
  res = sweep.run_sweep(tmp_path, probe, {"one": jnp.float32(1.0)}, r, c, units=units, steps=4,
                        chunk=12, classes=range(R_DIM), mesh=jobs.data_mesh(4))
  values = np.linspace(r.min(0), r.max(0), 4, axis=-1)
  expected = np.repeat(np.repeat(r[:, None, None, :], 2, 1), 4, 2)  # [S, U, steps, R]
  for i, u in enumerate(units):
    expected[:, i, :, u] = values[u][None, :]
  np.testing.assert_allclose(res["probs"], expected, rtol=1e-6)
  np.testing.assert_array_equal(res["pred"], expected.argmax(-1))
  np.testing.assert_array_equal(res["base_probs"], r)  # baseline: r untouched
  np.testing.assert_allclose(res["values"], values[units], rtol=1e-6)
  np.testing.assert_array_equal(res["class_idx"], c)
  assert res["metrics"].shape == (6, 2, 4, 1, 5)


def test_toy_part_areas_follow_the_swept_unit(reference_run):
  _, res = reference_run
  r, _ = _toy_inputs()
  pos = np.abs(np.arange(RES) - (RES - 1) / 2)

  def square_area(v):  # independent count of the toy's label-1 square
    return float(np.sum(pos < 2 + 3 * np.float32(v))) ** 2

  v0 = res["values"][0]
  for s in range(r.shape[0]):
    np.testing.assert_array_equal(res["metrics"][s, 0, :, 0, 0], [square_area(v) for v in v0])
    for i in (1, 2):  # units 2 and 3 leave w[0], hence the square, alone
      np.testing.assert_array_equal(res["metrics"][s, i, :, 0, 0], square_area(r[s, 0]))
    assert res["base_metrics"][s, 0, 0] == square_area(r[s, 0])


@pytest.mark.parametrize("n_dev,chunk,shard_size", [(1, 8, 4096), (4, 12, 24), (2, 2, 6)])
def test_same_results_for_devices_and_chunks(toy, reference_run, tmp_path, n_dev, chunk,
                                             shard_size):
  ref_dir, ref = reference_run
  r, c = _toy_inputs()
  res = sweep.run_sweep(tmp_path, toy, TOY_PARAMS, r, c, units=[0, 2, 3], steps=3, chunk=chunk,
                        shard_size=shard_size, mesh=jobs.data_mesh(n_dev))
  assert res.keys() == ref.keys()
  for k in ref:
    if "metrics" in k:
      assert_metrics_close(res[k], ref[k], rtol=1e-6, atol=1e-5)
    elif res[k].dtype.kind == "U":
      np.testing.assert_array_equal(res[k], ref[k], err_msg=k)
    else:
      np.testing.assert_allclose(res[k], ref[k], rtol=1e-6, atol=1e-6, err_msg=k)
  np.testing.assert_array_equal(res["metrics"][..., 0], ref["metrics"][..., 0])  # areas exact


def test_resume_after_interruption(toy, reference_run, tmp_path):
  _, ref = reference_run
  r, c = _toy_inputs()
  written = []

  class Stop(Exception):
    pass

  def stop_after_2(k):
    written.append(k)
    if len(written) == 2:
      raise Stop

  # 54 triples, chunk 8, shards of 2 chunks: 4 shards (16, 16, 16, 6 triples).
  kwargs = dict(units=[0, 2, 3], steps=3, chunk=8, shard_size=16, mesh=jobs.data_mesh(4))
  with pytest.raises(Stop):
    sweep.run_sweep(tmp_path, toy, TOY_PARAMS, r, c, on_shard=stop_after_2, **kwargs)
  assert not (tmp_path / sweep.SWEEP_FILE).exists()
  first = sorted(written)
  shard_dir = tmp_path / jobs.SHARD_DIR

  def shard(k):
    return shard_dir / f"shard_{k:07d}.npz"

  # A damaged shard (as a crash of a non-atomic writer would leave) is recomputed; a stray
  # temporary file of a killed write is removed.
  damaged = shard(first[-1])
  damaged.write_bytes(damaged.read_bytes()[:50])
  (shard_dir / ".shard_0000003.npz.tmp999").write_bytes(b"partial")
  first = first[:-1]
  mtimes = {k: shard(k).stat().st_mtime_ns for k in first}
  again = []
  res = sweep.run_sweep(tmp_path, toy, TOY_PARAMS, r, c, on_shard=again.append, **kwargs)
  assert sorted(first + again) == list(range(4))  # every shard exactly once
  assert not list(shard_dir.glob(".*tmp*"))
  for k in first:  # finished shards untouched
    assert shard(k).stat().st_mtime_ns == mtimes[k]
  for k in ref:
    np.testing.assert_array_equal(res[k], ref[k], err_msg=k)
  done = []
  sweep.run_sweep(tmp_path, toy, TOY_PARAMS, r, c, on_shard=done.append, **kwargs)  # finished
  assert done == []
  with pytest.raises(sweep.SweepError, match="other arguments"):
    sweep.run_sweep(tmp_path, toy, TOY_PARAMS, r, c, units=[0, 2], steps=3, chunk=8)


def test_no_retrace_and_strips(toy, reference_run, tmp_path):
  ref_dir, _ = reference_run
  r, c = _toy_inputs()
  mesh = jobs.data_mesh(4)
  step = sweep.make_step(toy, (0, 1, 2), mesh)
  n0 = step._cache_size()
  assert n0 >= 1
  sweep.run_sweep(tmp_path, toy, TOY_PARAMS, r * np.float32(0.5), c, units=[1, 5], steps=3,
                  chunk=8, mesh=mesh)
  assert step._cache_size() == n0  # new data, same chunk shape: no recompilation
  with np.load(ref_dir / "strips" / "unit_0000.npz") as f:
    images, values = f["images"], f["values"]
  assert not (ref_dir / "strips" / "unit_0002.png").exists()
  assert images.shape == (6, 3, RES, RES, 3) and images.dtype == np.uint8
  np.testing.assert_allclose(values, np.linspace(r[:, 0].min(), r[:, 0].max(), 3), rtol=1e-6)
  assert not np.array_equal(images[:, 0], images[:, -1])  # the square grows along the strip
  # The PNG: rows the samples, columns the steps (as the demo's captions say).
  from PIL import Image  # noqa: PLC0415

  with Image.open(ref_dir / "strips" / "unit_0000.png") as im:
    grid = np.asarray(im.convert("RGB"))
  np.testing.assert_array_equal(grid, images.transpose(0, 2, 1, 3, 4).reshape(6 * RES, 3 * RES, 3))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
  fixtures = ROOT.parent / "shared" / "fixtures"
  if not (fixtures / "sgxl_tiny.pkl").exists():
    pytest.skip(f"reference fixtures not found at {fixtures}")
  d = tmp_path_factory.mktemp("world")
  checkpoint.save(d / "gen_src", port.convert_network_pickle(fixtures / "sgxl_tiny.pkl"))
  return testing.build_tiny_world(d / "world", seed=0, n_pairs=16, generator_dir=d / "gen_src",
                                  segmenter_labels=4, batch=16)


@pytest.mark.slow
def test_end_to_end_tiny_models(tiny_world, tmp_path):
  """The sweep binary on the converted fixture generator, a tiny ResNet, segmenter and OLS link,
  checked against an independent per-image recomputation."""
  w = tiny_world
  out = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "experiments.sweep_units", f"--pairs={w['pairs']}",
         f"--link={w['link']}", f"--generator={w['generator']}",
         f"--classifier={w['classifier']}", f"--segmenter={w['segmenter']}", "--units=3,100",
         "--samples_per_class=1", "--steps=2", "--chunk=4", "--save_strips_for=100",
         f"--out={out}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = sweep.load(out)
  data = pairs.load(w["pairs"])
  rows = res["sample_idx"]
  n_s = rows.size
  assert res["metrics"].shape == (n_s, 2, 2, 3, len(quantify.METRICS))
  assert res["probs"].shape[:3] == (n_s, 2, 2)
  assert (out / "strips" / "unit_0100.png").exists()

  # Independent recomputation of (sample 0, unit 100, last step) and the unperturbed sample 0.
  gen = checkpoint.load(w["generator"])
  clf = checkpoint.load(w["classifier"])
  seg = checkpoint.load(w["segmenter"])
  params, _ = link.load(w["link"])
  r_all = data["r"][rows]
  r1 = np.array(r_all[:1])
  r1[0, 100] = r_all[:, 100].max()
  rs = np.concatenate([r1, r_all[:1]])
  ws = stylegan_xl.broadcast_w(link.predict(params, jnp.asarray(rs)), gen.config.num_ws)
  img, feats = gen.synthesis(ws, return_features=True)
  images = preprocess.to_uint8(img)
  masks = segmenter.predict_masks(seg, segmenter.select_features(feats, seg.config.feature_layers))
  c_def, c_state = nnx.split(clf)
  probs = classifier.classify(c_def, c_state, images)["probs"]
  metrics = quantify.part_metrics(jnp.asarray(images, jnp.float32) / 255.0, jnp.asarray(masks), 4)
  cls = list(res["classes"])
  col = cls.index(res["class_idx"][0])
  np.testing.assert_allclose(res["probs"][0, 1, 1, col], probs[0, res["class_idx"][0]], rtol=1e-4)
  np.testing.assert_allclose(res["base_probs"][0, col], probs[1, res["class_idx"][0]], rtol=1e-4)
  assert res["pred"][0, 1, 1] == int(np.argmax(probs[0]))
  assert_metrics_close(res["metrics"][0, 1, 1], metrics[0], rtol=1e-4, atol=1e-4)
  assert_metrics_close(res["base_metrics"][0], metrics[1], rtol=1e-4, atol=1e-4)
  # The same arguments in-process find the finished sweep (nothing recomputed).
  mtime = (out / sweep.SWEEP_FILE).stat().st_mtime_ns
  models, params = bundle.ModelBundle.load(generator=w["generator"], classifier=w["classifier"],
                                           segmenter=w["segmenter"], link=w["link"])
  again = sweep.run(w["pairs"], models, params, out, sweep.SweepConfig(
      units="3,100", samples_per_class=1, steps=2, chunk=4, strip_units=(100,)))
  assert (out / sweep.SWEEP_FILE).stat().st_mtime_ns == mtime
  np.testing.assert_array_equal(again["arrays"]["metrics"], res["metrics"])
  assert list(res["label_names"]) == list(models.label_names)


@pytest.mark.slow
def test_toy_world_binary_with_motion(tmp_path):
  """make_pairs + sweep_units --toy_world --motion: unit 0 (the only one that changes the
  square's size) moves the square more than unit 2 (its grey level only)."""
  import json

  pairs_dir, out = tmp_path / "pairs", tmp_path / "sweep"
  for cmd in (["experiments.make_pairs", f"--out={pairs_dir}", "--toy_world",
               "--toy_dims=8,6,5,4", "--classes=0,1,2", "--n_per_class=4", "--seed=0",
               "--batch=4", "--keep=all"],
              ["experiments.sweep_units", f"--pairs={pairs_dir}", "--toy_world", f"--out={out}",
               "--units=all", "--samples_per_class=2", "--steps=3", "--chunk=8",
               "--save_strips_for=0,2", "--motion"]):
    proc = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
  motion = json.loads((out / "motion.json").read_text())
  assert motion["units"] == [0, 2]
  for u in ("0", "2"):
    assert (out / "strips" / f"motion_unit_{int(u):04d}.png").stat().st_size > 1000
  square = lambda u, end: motion["per_unit"][u][end]["total"]["square"]["mean_norm"]  # noqa: E731
  for end in ("low", "high"):
    assert square("0", end) > 2 * square("2", end), motion["per_unit"]
