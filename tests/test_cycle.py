"""Tests of linkjax.cycle, and end to end of make_pairs / fit_link / cycle on the tiny fixtures."""

import csv
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import bundle, checkpoint, cycle, jobs, link, pairs

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = [1, 980]
N_PER_CLASS = 6
PSI = 0.7


def test_baseline_partner_is_a_seeded_derangement():
  for n in (2, 3, 10, 101):
    p = cycle.baseline_partner(n, seed=n)
    assert sorted(p) == list(range(n))  # a permutation ...
    assert np.all(p != np.arange(n))  # ... without fixed points
    np.testing.assert_array_equal(p, cycle.baseline_partner(n, seed=n))
  assert not np.array_equal(cycle.baseline_partner(50, 0), cycle.baseline_partner(50, 1))
  with pytest.raises(ValueError):
    cycle.baseline_partner(1, 0)


def test_heldout_indices_sources(caplog):
  idx, src = cycle.heldout_indices(100, {"test_idx": [5, 1, 9]}, n=10, seed=0)
  np.testing.assert_array_equal(idx, [1, 5, 9])
  assert "test_idx" in src
  # The split fit_link used is reconstructed from the link meta (holdout, seed, sizes).
  meta = {"holdout": 0.2, "seed": 3, "n_train": 80, "n_test": 20}
  _, test = link.split_holdout(100, 0.2, 3)
  idx, src = cycle.heldout_indices(100, meta, n=50, seed=0)
  np.testing.assert_array_equal(idx, test)
  idx, _ = cycle.heldout_indices(100, meta, n=5, seed=0)
  assert len(idx) == 5 and set(idx) <= set(test) and np.all(np.diff(idx) > 0)
  # A link fitted on other pairs: warn and fall back to a seeded subset of all pairs.
  idx, src = cycle.heldout_indices(90, meta, n=7, seed=1)
  assert len(idx) == 7 and "cannot reconstruct" in caplog.text and "all pairs" in src
  np.testing.assert_array_equal(idx, cycle.heldout_indices(90, meta, n=7, seed=1)[0])
  with pytest.raises(ValueError, match="out of range"):
    cycle.heldout_indices(3, {"test_idx": [0, 3]}, n=2, seed=0)


def _run(module, *args):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """The converted fixture models, saved as checkpoints, and pairs made by the make_pairs binary."""
  fixtures = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
  if not fixtures.is_dir():
    pytest.skip(f"reference fixtures not found at {fixtures}")
  from ports import stylegan_xl as port_sgxl  # noqa: PLC0415
  from ports import torch_pickle  # noqa: PLC0415
  from ports import torchvision as port_tv  # noqa: PLC0415

  d = tmp_path_factory.mktemp("tiny")
  gen = port_sgxl.convert_network_pickle(fixtures / "sgxl_tiny.pkl")
  sd = torch_pickle.load_state_dict(fixtures / "resnet_bottleneck_1111.pth")
  # 32x32 generator images go to the classifier as they are (no 256 resize / 224 crop).
  clf = port_tv.convert_state_dict(sd, port_tv.infer_config(sd, resize=None, crop=None))
  checkpoint.save(d / "generator", gen)
  checkpoint.save(d / "classifier", clf)
  # keep=all: a random-weight classifier rarely names the generator's class.
  _run("experiments.make_pairs", f"--generator={d / 'generator'}",
       f"--classifier={d / 'classifier'}", f"--classes={','.join(map(str, CLASSES))}",
       f"--n_per_class={N_PER_CLASS}", f"--psi={PSI}", "--seed=0", "--batch=4", "--keep=all",
       f"--out={d / 'pairs'}")
  return {"dir": d, "generator": gen, "classifier": clf, "pairs": pairs.load(d / "pairs")}


def test_make_pairs_binary_follows_the_contracts(tiny):
  got, gen, clf = tiny["pairs"], tiny["generator"], tiny["classifier"]
  assert got["w"].shape == (12, gen.config.w_dim) and got["r"].shape == (12, 2048)
  assert got["logits"].shape == (12, 1000) and np.all(got["r"] >= 0)
  np.testing.assert_array_equal(got["class_idx"], np.repeat(CLASSES, N_PER_CLASS))
  np.testing.assert_array_equal(got["draw_idx"], np.tile(np.arange(N_PER_CLASS), 2))
  # Independent recomputation of w from (seed, class, draw) through the generator's mapping
  # (r is checked against an independent rendering in the cycle test).
  cls = jnp.asarray(got["class_idx"])
  z = jax.vmap(lambda c, d: jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(jax.random.key(0), c), d), (gen.config.z_dim,)))(
          cls, jnp.asarray(got["draw_idx"]))
  np.testing.assert_array_equal(np.asarray(z), got["z"])
  g_def, g_state = nnx.split(gen)
  ws = jax.jit(lambda s, z, c: nnx.merge(g_def, s).mapping(z, c, psi=PSI))(g_state, z, cls)
  np.testing.assert_allclose(np.asarray(ws[:, 0]), got["w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(clf.head(jnp.asarray(got["r"]))), got["logits"],
                             rtol=1e-4, atol=1e-5)


def test_cycle_eval_with_a_constant_link(tiny):
  """A link that ignores r and returns w[0]: every number of the cycle is predictable."""
  gen, clf, got = tiny["generator"], tiny["classifier"], tiny["pairs"]
  w = got["w"][:6]
  params = {"kernel": np.zeros((2048, w.shape[1]), np.float32), "bias": w[0]}

  def l1(a, b):  # a cheap stand-in for LPIPS (the binary test runs the real one)
    return jnp.mean(jnp.abs(a - b), axis=(1, 2, 3))

  models, bparams = bundle.ModelBundle.from_models(generator=gen, classifier=clf, link=params)
  res = cycle.cycle_eval(models, bparams, w, seed=0, batch=4, lpips_fn=l1,
                         mesh=jobs.data_mesh(jax.devices()[:2]))
  np.testing.assert_array_equal(res["w_tilde"], np.broadcast_to(w[0], w.shape))
  np.testing.assert_allclose(res["mse_w"], np.mean((w - w[0]) ** 2, axis=1), rtol=1e-6)
  assert res["mse_w"][0] == 0
  # Rendering a pair's w reproduces its stored r (all ws rows are equal before synthesis). Not
  # bit-exact: another batch layout changes the generator output by ~1 ulp, which can move a value
  # that sits on a uint8 truncation boundary by one level (the tolerance covers a few such pixels).
  np.testing.assert_allclose(res["r"], got["r"][:6], rtol=1e-3,
                             atol=1e-3 * float(np.abs(got["r"]).max()))
  assert np.median(np.abs(res["r"] - got["r"][:6])) < 1e-5
  # Every I~ is the image of w[0]: the same for all rows, equal to I for row 0.
  assert np.all(res["images_tilde"] == res["images"][0])
  for k in ("pixel_mse", "lpips", "mse_r"):
    assert res[k][0] < 1e-6, k
    assert np.all(res[k][1:] > 0), k
  # With identical I~ the random-pairs baseline of images equals the real distance.
  np.testing.assert_allclose(res["pixel_mse_baseline"], res["pixel_mse"], rtol=1e-6)
  np.testing.assert_allclose(res["lpips_baseline"], res["lpips"], rtol=1e-6)
  p = res["partner"]
  np.testing.assert_allclose(res["mse_w_baseline"], np.mean((w - w[0]) ** 2, axis=1), rtol=1e-6)
  assert np.all(p != np.arange(6))
  # Pixel MSE is on [0, 1] images: compare with the uint8 images (quantisation ~1/255).
  ref = np.mean(((res["images"].astype(np.float32) - res["images_tilde"]) / 255.0) ** 2,
                axis=(1, 2, 3))
  np.testing.assert_allclose(res["pixel_mse"], ref, atol=2e-4)


def test_cycle_binary_end_to_end(tiny):
  d, got = tiny["dir"], tiny["pairs"]

  params, metrics = link.fit_and_evaluate(got["r"], got["w"], model="ridge", holdout=0.5, seed=0)
  link.save(d / "link", params, metrics)
  _run("experiments.cycle", f"--pairs={d / 'pairs'}", f"--link={d / 'link'}",
       f"--generator={d / 'generator'}", f"--classifier={d / 'classifier'}", "--n=4", "--batch=4",
       "--n_show=2", f"--out={d / 'cycle'}")
  _, test_idx = link.split_holdout(len(got["w"]), 0.5, 0)
  with open(d / "cycle" / "cycle.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4
  assert {int(r["pair_idx"]) for r in rows} <= set(test_idx.tolist())
  for r in rows:
    i = int(r["pair_idx"])
    assert int(r["class_idx"]) == got["class_idx"][i] and int(r["draw_idx"]) == got["draw_idx"][i]
    assert float(r["lpips"]) >= 0 and float(r["mse_w"]) > 0
  summary = json.loads((d / "cycle" / "summary.json").read_text())
  assert summary["n"] == 4 and summary["lpips_available"]
  assert "held-out split" in summary["heldout_source"]
  mean = np.mean([float(r["mse_w"]) for r in rows])
  assert summary["metrics"]["mse_w"]["mean"] == pytest.approx(mean, rel=1e-6)
  assert (d / "cycle" / "pairs.png").stat().st_size > 1000
  assert (d / "cycle" / "cycle_scatter.png").stat().st_size > 1000
