"""VGG, AlexNet and DenseNet ports against torchvision references (tests/reference/).

The references are tiny random torchvision models written by
`tests/reference/make_torchvision_refs.py` (torch 2.14.1, torchvision 0.29.1) with their inputs,
both choices of R, r_2d, named intermediates (NCHW) and logits. Tolerance: 1e-4 of the reference's
largest magnitude (float32 through a few layers; observed errors are ~1e-7).
"""

import dataclasses
import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import checkpoint, classifier, preprocess
from linkjax.models import alexnet, densenet, torch_layers, vgg
from ports import torch_pickle
from ports import torchvision as tv
from ports import torchvision_tables as tables

REPO = pathlib.Path(__file__).resolve().parents[1]
REFS = REPO / "tests" / "reference"
TOL = 1e-4
NAMES = ("vgg_tiny", "vgg_bn_tiny", "alexnet_tiny", "densenet_tiny")
# The configs the converter must infer from the reference state dicts.
EXPECTED = {
    "vgg_tiny": vgg.VGGConfig(layers=(4, "M", 8, "M", 8, 8, "M"), hidden=16, num_classes=7),
    "vgg_bn_tiny": vgg.VGGConfig(layers=(4, "M", 8, 8, "M", 8, "M"), batch_norm=True, hidden=12,
                                 num_classes=7),
    "alexnet_tiny": alexnet.AlexNetConfig(widths=(4, 8, 8, 6, 8), hidden=16, num_classes=7),
    "densenet_tiny": densenet.DenseNetConfig(growth_rate=4, block_config=(2, 3, 1, 2),
                                             num_init_features=8, bn_size=2, num_classes=7),
}
NOT_ACTS = ("img_uint8", "x_nchw", "resize", "crop", "logits", "r_original", "r_penultimate")


def _rel_err(got, ref) -> float:
  return float(np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref)))


@functools.cache
def _ref(name: str):
  return torch_pickle.load_state_dict(REFS / f"{name}.pth"), dict(np.load(REFS / f"{name}_ref.npz"))


def _config(name: str, r_layer: str = "original"):
  _, ref = _ref(name)
  return dataclasses.replace(EXPECTED[name], resize=int(ref["resize"]), crop=int(ref["crop"]),
                             r_layer=r_layer)


def _forward_impl(graphdef, state, x):
  model = nnx.merge(graphdef, state)
  logits, acts = model(x)
  return logits, acts, model.head(model.to_r(acts["r_2d"]))


_forward = jax.jit(_forward_impl, static_argnums=0)


# --- parity with torchvision -------------------------------------------------------------------

@pytest.mark.parametrize("r_layer", ["original", "penultimate"])
@pytest.mark.parametrize("name", NAMES)
def test_parity_with_torchvision(name, r_layer):
  """Converted tiny model on torchvision's input: R, r_2d, intermediates and logits match;
  head(to_r(r_2d)) gives the logits."""
  sd, ref = _ref(name)
  config = tv.infer_config(sd, resize=int(ref["resize"]), crop=int(ref["crop"]), r_layer=r_layer)
  assert config == _config(name, r_layer)
  model = tv.convert_state_dict(sd, config)
  x = jnp.asarray(ref["x_nchw"].transpose(0, 2, 3, 1))
  logits, acts, relinked = _forward(*nnx.split(model), x)
  assert acts["r"].shape == ref[f"r_{r_layer}"].shape
  assert _rel_err(acts["r"], ref[f"r_{r_layer}"]) <= TOL
  assert _rel_err(logits, ref["logits"]) <= TOL
  names = [k for k in ref if k not in NOT_ACTS]
  assert "r_2d" in names and "features" in names and len(names) >= 5
  for k in names:
    a_ref = ref[k].transpose(0, 2, 3, 1) if ref[k].ndim == 4 else ref[k]
    assert acts[k].shape == a_ref.shape, k
    assert _rel_err(acts[k], a_ref) <= TOL, k
  np.testing.assert_allclose(np.asarray(relinked), np.asarray(logits), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_classify_batches_from_uint8(name):
  """uint8 images -> our exact eval transform -> classify_batches reproduces torchvision."""
  sd, ref = _ref(name)
  model = tv.convert_state_dict(sd, _config(name))
  x = preprocess.classifier_input(jnp.asarray(ref["img_uint8"]), resize=int(ref["resize"]),
                                  crop=int(ref["crop"]))
  assert _rel_err(x, ref["x_nchw"].transpose(0, 2, 3, 1)) <= TOL
  out = classifier.classify_batches(model, ref["img_uint8"], batch=1)
  size = classifier.classify._cache_size()
  again = classifier.classify_batches(model, ref["img_uint8"][::-1], batch=1)  # no retrace
  assert classifier.classify._cache_size() == size
  np.testing.assert_array_equal(again["logits"], out["logits"][::-1])
  assert _rel_err(out["r"], ref["r_original"]) <= TOL
  assert _rel_err(out["logits"], ref["logits"]) <= TOL
  np.testing.assert_array_equal(out["pred"], ref["logits"].argmax(-1))


@pytest.mark.parametrize("name", ["vgg_bn_tiny", "densenet_tiny"])
def test_checkpoint_round_trip(name, tmp_path):
  sd, ref = _ref(name)
  model = tv.convert_state_dict(sd, _config(name, "penultimate"))
  checkpoint.save(tmp_path / "ckpt", model)
  assert checkpoint.read_config(tmp_path / "ckpt")[0] == name.split("_")[0]
  loaded = checkpoint.load(tmp_path / "ckpt", role="classifier")
  assert loaded.config == model.config  # tuples (incl. VGG's 'M') survive JSON
  x = jnp.asarray(ref["x_nchw"].transpose(0, 2, 3, 1))
  a, b = _forward(*nnx.split(model), x), _forward(*nnx.split(loaded), x)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]["r"]), np.asarray(b[1]["r"]))
  assert _rel_err(b[1]["r"], ref["r_penultimate"]) <= TOL


def test_converter_cli_infers_family(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-m", "ports.torchvision", "--r_layer=penultimate",
                         f"--pth={REFS / 'alexnet_tiny.pth'}", f"--out={tmp_path / 'ckpt'}",
                         "--resize=104", "--crop=99"], cwd=REPO, env=env, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  arch, config = checkpoint.read_config(tmp_path / "ckpt", role="classifier")
  assert arch == "alexnet" and config == _config("alexnet_tiny", "penultimate")


# --- pooling -----------------------------------------------------------------------------------

def _adaptive_ref(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
  """PyTorch's adaptive_avg_pool2d rule on NHWC, by loops."""
  _, h, w, _ = x.shape
  out = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.float64)
  for i in range(oh):
    for j in range(ow):
      hs, he = (i * h) // oh, -(-((i + 1) * h) // oh)
      ws, we = (j * w) // ow, -(-((j + 1) * w) // ow)
      out[:, i, j] = x[:, hs:he, ws:we].astype(np.float64).mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("h,w,oh,ow", [(7, 7, 7, 7), (14, 14, 7, 7), (9, 13, 7, 7), (5, 3, 7, 7),
                                       (1, 1, 6, 6), (2, 3, 6, 6), (13, 6, 6, 6), (10, 4, 3, 5)])
def test_adaptive_avg_pool_matches_torch_bins(h, w, oh, ow):
  x = np.random.default_rng(h * 31 + w).standard_normal((2, h, w, 3)).astype(np.float32)
  got = np.asarray(torch_layers.adaptive_avg_pool2d(jnp.asarray(x), (oh, ow)))
  np.testing.assert_allclose(got, _adaptive_ref(x, oh, ow), rtol=1e-6, atol=1e-6)
  if oh % h == 0 and ow % w == 0:  # every bin one element: copied exactly
    np.testing.assert_array_equal(got, _adaptive_ref(x, oh, ow).astype(np.float32))


def test_adaptive_bins_overlap_and_repeat():
  assert torch_layers.adaptive_bins(9, 7) == ((0, 2), (1, 3), (2, 4), (3, 6), (5, 7), (6, 8),
                                              (7, 9))
  assert torch_layers.adaptive_bins(2, 6) == ((0, 1),) * 3 + ((1, 2),) * 3


def test_pools_floor_odd_sizes():
  x = np.random.default_rng(0).standard_normal((1, 7, 9, 2)).astype(np.float32) - 5.0
  mp = np.asarray(torch_layers.max_pool2d(jnp.asarray(x), 3, 2, 1))
  ap = np.asarray(torch_layers.avg_pool2d(jnp.asarray(x), 2, 2))
  assert mp.shape == (1, 4, 5, 2) and ap.shape == (1, 3, 4, 2)
  np.testing.assert_array_equal(mp[0, 0, 0], x[0, :2, :2].max((0, 1)))  # -inf padding
  np.testing.assert_allclose(ap[0, 2, 3], x[0, 4:6, 6:8].mean((0, 1)), rtol=1e-6)


# --- architecture and converter ----------------------------------------------------------------

# arch, torchvision's state_dict length (with num_batches_tracked), parameter count.
TORCHVISION = [("vgg11", 22, 132_863_336), ("vgg16", 32, 138_357_544),
               ("vgg16_bn", 97, 138_365_992), ("vgg19_bn", 118, 143_678_248),
               ("alexnet", 16, 61_100_840), ("densenet121", 727, 7_978_856),
               ("densenet161", 967, 28_681_000), ("densenet201", 1207, 20_013_928)]
# Building an abstract DenseNet-161/201 takes ~10 s on a busy CPU (flax's per-variable cost in
# nnx.eval_shape grows with the model): their shapes are checked by the full-size script only.
SHAPES_CHECKED = ("vgg11", "vgg16", "vgg16_bn", "vgg19_bn", "alexnet", "densenet121")


@pytest.mark.parametrize("arch,n_keys,n_params", TORCHVISION)
def test_full_size_layouts_and_inference(arch, n_keys, n_params):
  config = tv.config_for_arch(arch, {})
  keys = [k for k, _, _ in tv.key_table(config)]
  n_bn = sum(k.endswith("running_var") for k in keys)
  assert len(keys) == len(set(keys)) == n_keys - n_bn
  if arch not in SHAPES_CHECKED:
    return
  shapes = tv.source_shapes(config)
  # torchvision counts parameters, not BatchNorm running statistics.
  assert sum(int(np.prod(s)) for k, s in shapes.items()
             if not k.endswith(("running_mean", "running_var"))) == n_params
  # The arch is recovered from the keys and shapes alone (zero-stride views: no weights).
  sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  assert tv.infer_config(sd) == config


def test_r_dims_of_full_size_models():
  assert vgg.VGGConfig().r_dim == 25_088 and alexnet.AlexNetConfig().r_dim == 9_216
  assert vgg.VGGConfig(r_layer="penultimate").r_dim == 4_096
  assert tv.config_for_arch("densenet201", {}).num_features == 1_920


def test_infer_rejects_unknown_keys():
  with pytest.raises(tv.ConversionError, match="cannot tell the architecture"):
    tv.infer_config({"encoder.weight": np.zeros((2, 2), np.float32)})
  with pytest.raises(tv.ConversionError, match="unknown arch"):
    tv.config_for_arch("vgg17", {})


def _legacy(key: str) -> str:
  # torchvision's rewrite run backwards: ...denselayer1.norm1.weight -> ...norm.1.weight
  import re
  return re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)


def test_densenet_legacy_keys():
  sd, ref = _ref("densenet_tiny")
  old = {_legacy(k): v for k, v in sd.items()}
  assert "features.denseblock2.denselayer3.norm.2.running_var" in old
  # 8 dense layers, each 2 BN (4 keys + num_batches_tracked) and 2 convs.
  assert sum(k != _legacy(k) for k in sd) == 8 * 12
  config = tv.infer_config(old, resize=None, crop=None)
  assert config == dataclasses.replace(_config("densenet_tiny"), resize=None, crop=None)
  model = tv.convert_state_dict(old, config)
  logits, _, _ = _forward(*nnx.split(model), jnp.asarray(ref["x_nchw"].transpose(0, 2, 3, 1)))
  assert _rel_err(logits, ref["logits"]) <= TOL
  # Renamed keys still go through the coverage and shape checks, reported by their file name.
  bad = dict(old)
  bad["features.denseblock1.denselayer1.norm1.weight"] = sd[
      "features.denseblock1.denselayer1.norm1.weight"]  # both spellings
  bad["features.denseblock1.denselayer2.conv.1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
  del bad["features.denseblock3.denselayer1.conv.2.weight"]
  with pytest.raises(tv.ConversionError) as e:
    tv.convert_state_dict(bad, config)
  msg = str(e.value)
  assert "missing (1): features.denseblock3.denselayer1.conv2.weight" in msg
  assert "features.denseblock1.denselayer1.norm.1.weight (old-style name of" in msg
  assert "denselayer2.conv1.weight (file: features.denseblock1.denselayer2.conv.1.weight)" in msg


def test_converter_lists_all_bad_keys_vgg():
  sd, _ = _ref("vgg_bn_tiny")
  bad = dict(sd)
  del bad["features.5.running_mean"], bad["classifier.6.bias"]
  bad["classifier.3.weight"] = np.zeros((12, 13), np.float32)
  bad["features.1.weight"] = bad["features.1.weight"].astype(np.int32)
  bad["features.99.weight"] = np.zeros(3, np.float32)
  with pytest.raises(tv.ConversionError) as e:
    tv.convert_state_dict(bad, EXPECTED["vgg_bn_tiny"])
  msg = str(e.value)
  assert "missing (2): features.5.running_mean, classifier.6.bias" in msg
  assert "unexpected (1): features.99.weight" in msg
  assert "mismatch (2)" in msg and "classifier.3.weight: file (12, 13)" in msg
  assert "features.1.weight: dtype int32" in msg
  assert "num_batches_tracked" not in msg and msg.count("\n") == 3
  # A VGG without BatchNorm read as one with: every BN key missing, every shifted conv bad.
  with pytest.raises(tv.ConversionError, match="missing"):
    tv.convert_state_dict(_ref("vgg_tiny")[0], tv.config_for_arch("vgg11_bn", {}))


def test_vgg_infer_pool_gaps():
  config = vgg.VGGConfig(layers=(3, "M", "M", 5, 6, "M"), batch_norm=True, hidden=4,
                         pool_size=2, num_classes=3)
  sd = {k: np.zeros(s, np.float32) for k, s in tv.source_shapes(config).items()}
  assert sorted(k for k in sd if k.endswith("weight") and sd[k].ndim == 4) == [
      "features.0.weight", "features.5.weight", "features.8.weight"]
  assert tv.infer_config(sd) == config
  assert tables.detect_family(sd).arch == "vgg"


def test_config_validation():
  with pytest.raises(ValueError, match="r_layer"):
    vgg.VGGConfig(r_layer="fc7")
  with pytest.raises(ValueError, match="layers"):
    vgg.VGGConfig(layers=("M",))
  with pytest.raises(ValueError, match="widths"):
    alexnet.AlexNetConfig(widths=(1, 2, 3))
  with pytest.raises(ValueError, match="block_config"):
    densenet.DenseNetConfig(block_config=(2, 0))
  assert densenet.DenseNetConfig(block_config=(6, 12, 48, 32)).depth == 201
  assert vgg.VGGConfig(layers=vgg.LAYERS[19]).depth == 19


# --- optional: against torchvision built here (skipped without torch) ---------------------------

def _refs_module():
  spec = importlib.util.spec_from_file_location("make_torchvision_refs",
                                                REFS / "make_torchvision_refs.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("spec,size", [
    ({"family": "vgg", "cfg": [6, "M", 5, "M", 7, "M", 4, "M"], "batch_norm": True,
      "hidden": 9}, 53),
    ({"family": "alexnet", "widths": (5, 7, 6, 4, 3), "hidden": 11}, 151),
    ({"family": "densenet", "growth_rate": 3, "block_config": (1, 2, 3), "num_init_features": 5,
          "bn_size": 3}, 45)])
def test_against_fresh_torchvision(spec, size):
  pytest.importorskip("torchvision")
  refs = _refs_module()
  net = refs.build(spec, seed=3)
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  x = np.random.default_rng(1).standard_normal((2, 3, size, size + 6)).astype(np.float32)
  ref = refs.reference_outputs(net, spec["family"], x)
  for r_layer in ("original", "penultimate"):
    model = tv.convert_state_dict(sd, tv.infer_config(sd, r_layer=r_layer))
    logits, acts, relinked = _forward(*nnx.split(model), jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert _rel_err(acts["r"], ref[f"r_{r_layer}"]) <= TOL
    assert _rel_err(logits, ref["logits"]) <= TOL
    assert _rel_err(relinked, ref["logits"]) <= TOL
