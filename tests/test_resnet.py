"""ResNet port, preprocessing and torchvision converter against the PyTorch reference fixture."""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from linkjax import checkpoint, classifier, preprocess
from linkjax.models import resnet
from ports import torch_pickle
from ports import torchvision as tv

REPO = pathlib.Path(__file__).resolve().parents[1]
ACTS = ("stem", "layer1", "layer2", "layer3", "layer4")


def _rel_err(got, ref) -> float:
  return float(np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref)))


@functools.lru_cache(maxsize=1)
def _load_fixture(fixtures: pathlib.Path):
  sd = torch_pickle.load_state_dict(fixtures / "resnet_bottleneck_1111.pth")
  ref = dict(np.load(fixtures / "resnet_bottleneck_1111_ref.npz"))
  return sd, ref


@pytest.fixture
def fixture_model(fixtures_dir):
  """(torchvision state dict, reference activations), read once per session."""
  return _load_fixture(fixtures_dir)


def _forward_impl(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


_forward = jax.jit(_forward_impl, static_argnums=0)


# --- parity with torchvision -------------------------------------------------------------------

def test_fixture_parity_from_uint8(fixture_model):
  """uint8 images -> our preprocess -> our ResNet matches torchvision at every stage."""
  sd, ref = fixture_model
  config = tv.infer_config(sd)
  assert (config.block_type, config.stages, config.width, config.num_classes) == (
      "bottleneck", (1, 1, 1, 1), 64, 1000)
  model = tv.convert_state_dict(sd, config)

  x = preprocess.classifier_input(jnp.asarray(ref["img_uint8"]), resize=256, crop=224)
  x_ref = ref["x_nchw"].transpose(0, 2, 3, 1)
  assert x.shape == x_ref.shape and x.dtype == jnp.float32
  assert _rel_err(x, x_ref) <= 1e-4

  graphdef, state = nnx.split(model)
  logits, acts = _forward(graphdef, state, x)
  for name in ACTS:
    a_ref = ref[name].transpose(0, 2, 3, 1)
    assert acts[name].shape == a_ref.shape, name
    assert _rel_err(acts[name], a_ref) <= 1e-4, name
  assert _rel_err(acts["r"], ref["r"]) <= 1e-4
  assert _rel_err(logits, ref["logits"]) <= 1e-4
  assert float(jnp.min(acts["r"])) >= 0.0
  np.testing.assert_allclose(np.asarray(model.head(acts["r"])), np.asarray(logits),
                             rtol=1e-5, atol=1e-5)
  # Classifier contract: r_2d is the last stage, and head(to_r(r_2d)) gives the logits.
  np.testing.assert_array_equal(np.asarray(acts["r_2d"]), np.asarray(acts["layer4"]))
  np.testing.assert_allclose(np.asarray(model.head(model.to_r(acts["r_2d"]))),
                             np.asarray(logits), rtol=1e-5, atol=1e-5)

  # The jitted end-to-end helper gives the same numbers plus probs/pred.
  out = classifier.classify(graphdef, state, jnp.asarray(ref["img_uint8"]))
  assert _rel_err(out["logits"], ref["logits"]) <= 1e-4
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out["pred"]), ref["logits"].argmax(-1))
  assert out["pred"].dtype == jnp.int32


def test_classify_binary_end_to_end(fixture_model, fixtures_dir, tmp_path):
  """Converter CLI then classify CLI on the fixture reproduce the reference r and logits."""
  _, ref = fixture_model
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  ckpt = tmp_path / "ckpt"
  subprocess.run([sys.executable, "-m", "ports.torchvision",
                  f"--pth={fixtures_dir / 'resnet_bottleneck_1111.pth'}", f"--out={ckpt}"],
                 cwd=REPO, env=env, check=True, capture_output=True)
  assert checkpoint.read_config(ckpt)[0] == "resnet"
  np.save(tmp_path / "imgs.npy", ref["img_uint8"])
  out = tmp_path / "cls.npz"
  proc = subprocess.run([sys.executable, "-m", "experiments.classify", f"--classifier={ckpt}",
                         f"--images={tmp_path / 'imgs.npy'}", f"--out={out}", "--batch=1"],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "classified 2/2" in proc.stderr
  res = np.load(out)
  assert set(res.files) == {"r", "logits", "probs", "pred"}
  assert _rel_err(res["r"], ref["r"]) <= 1e-4
  assert _rel_err(res["logits"], ref["logits"]) <= 1e-4
  np.testing.assert_array_equal(res["pred"], ref["logits"].argmax(-1))

  # Wrong dtype: a clear error, non-zero exit.
  np.save(tmp_path / "bad.npy", ref["img_uint8"].astype(np.float32))
  proc = subprocess.run([sys.executable, "-m", "experiments.classify", f"--classifier={ckpt}",
                         f"--images={tmp_path / 'bad.npy'}", f"--out={tmp_path / 'x.npz'}"],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode != 0 and "uint8" in proc.stderr


# --- architecture ------------------------------------------------------------------------------

def _param_count(config: resnet.ResNetConfig) -> int:
  abstract = nnx.eval_shape(lambda: resnet.ResNet(config, rngs=nnx.Rngs(0)))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("depth,count", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_param_counts_match_torchvision(depth, count):
  # torchvision's published parameter counts (sum of p.numel() over model.parameters()).
  assert _param_count(resnet.ResNetConfig(depth=depth)) == count


def test_resnet50_key_table_has_torchvision_keys():
  table = tv.key_table(resnet.ResNetConfig(depth=50))
  keys = [src for src, _, _ in table]
  # torchvision resnet50 state_dict: 320 entries, 53 of them num_batches_tracked.
  assert len(keys) == len(set(keys)) == 320 - 53
  for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
            "layer2.0.conv2.weight", "layer3.5.bn3.bias", "layer4.2.conv3.weight", "fc.bias"):
    assert k in keys
  assert "layer1.1.downsample.0.weight" not in keys
  assert "layer4.3.conv1.weight" not in keys


def test_config_validation():
  with pytest.raises(ValueError, match="depth"):
    resnet.ResNetConfig(depth=42)
  with pytest.raises(ValueError, match="block"):
    resnet.ResNetConfig(stage_sizes=(1, 1, 1, 1), block="wide")
  cfg = resnet.ResNetConfig(depth=10, stage_sizes=(1, 1, 1, 1), block="basic", width=8)
  assert cfg.num_features == 64


def test_maxpool_pads_with_minus_inf():
  # All-negative input: zero padding would leak 0 into the border maxima.
  x = -1.0 - jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
  y = resnet.max_pool_3x3_s2(x)
  xn = np.asarray(x)[..., 0]
  ref = np.full((2, 3, 3), -np.inf, np.float32)
  for i in range(3):
    for j in range(3):
      ref[:, i, j] = xn[:, max(2 * i - 1, 0):2 * i + 2, max(2 * j - 1, 0):2 * j + 2].max((1, 2))
  np.testing.assert_array_equal(np.asarray(y)[..., 0], ref)


# --- converter errors and inference --------------------------------------------------------------

def _fake_state_dict(config: resnet.ResNetConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """A torchvision-layout state dict with random values (numpy: no per-shape jit compiles)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in tv.source_shapes(config).items():
    sd[key] = (rng.standard_normal(shape) * (0.5 if key.endswith("weight") else 0.1)).astype(
        np.float32)
    if key.endswith("running_var"):
      sd[key] = np.abs(sd[key]) + np.float32(0.5)
      sd[key.replace("running_var", "num_batches_tracked")] = np.array(3, np.int64)
  return sd


TINY_BASIC = resnet.ResNetConfig(depth=12, width=4, num_classes=5, stage_sizes=(1, 2, 1, 1),
                                 block="basic", resize=40, crop=32)


def test_infer_config_and_layouts():
  sd = _fake_state_dict(TINY_BASIC)
  cfg = tv.infer_config(sd, resize=40, crop=32)
  assert cfg == TINY_BASIC
  model = tv.convert_state_dict(sd, cfg)
  np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]),
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.layer2[1].conv2.kernel[...]),
                                sd["layer2.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.layer3[0].downsample[1].var[...]),
                                sd["layer3.0.downsample.1.running_var"])
  np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), sd["fc.weight"].T)
  assert model.layer2[1].downsample is None
  # Standard layouts map back to their depth.
  shapes = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 512)}
  sd18 = {k: np.zeros(shapes.get(k, (1,)), np.float32)
          for k, _, _ in tv.key_table(resnet.ResNetConfig(depth=18))}
  assert tv.infer_config(sd18) == resnet.ResNetConfig(depth=18)


def test_converter_lists_all_bad_keys(fixture_model):
  sd, _ = fixture_model
  bad = dict(sd)
  bad["layer1.0.conv2.weight_renamed"] = bad.pop("layer1.0.conv2.weight")
  del bad["fc.bias"]
  bad["layer2.0.bn1.running_mean"] = np.zeros(7, np.float32)
  bad["extra.thing"] = np.zeros(3, np.float32)
  with pytest.raises(tv.ConversionError) as e:
    tv.convert_state_dict(bad, tv.infer_config(sd))
  msg = str(e.value)
  for k in ("layer1.0.conv2.weight", "fc.bias", "layer1.0.conv2.weight_renamed", "extra.thing",
            "layer2.0.bn1.running_mean"):
    assert k in msg
  assert "missing (2)" in msg and "unexpected (2)" in msg and "mismatch (1)" in msg
  assert "num_batches_tracked" not in msg


def test_converter_rejects_basic_layout_as_resnet50():
  sd = _fake_state_dict(resnet.ResNetConfig(depth=18, width=8, num_classes=10))
  with pytest.raises(tv.ConversionError) as e:
    tv.convert_state_dict(sd, tv.config_for_arch("resnet50", sd))
  msg = str(e.value)
  assert "layer1.0.conv3.weight" in msg  # missing: bottleneck needs conv3
  assert "mismatch" in msg  # conv1 has width 8, not 64
  assert msg.count("\n") <= 4  # one error, one line per category


def test_truncated_pth_gives_clear_error(fixtures_dir, tmp_path):
  data = (fixtures_dir / "resnet_bottleneck_1111.pth").read_bytes()
  bad = tmp_path / "trunc.pth"
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(torch_pickle.TorchFileError):
    tv.convert_file(bad, tmp_path / "out")
  assert not (tmp_path / "out").exists()


# --- preprocessing -----------------------------------------------------------------------------

def _pil_resize(img: np.ndarray, size: int) -> np.ndarray:
  oh, ow = preprocess.resized_size(img.shape[0], img.shape[1], size)
  return np.asarray(Image.fromarray(img).resize((ow, oh), Image.BILINEAR))


@pytest.mark.parametrize("h,w,size", [(512, 512, 256), (300, 400, 256), (200, 180, 256),
                                      (77, 1333, 20), (45, 123, 170)])
def test_resize_matches_pil_exactly(h, w, size):
  rng = np.random.default_rng(h * w)
  img = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
  got = np.asarray(preprocess.resize_uint8(jnp.asarray(img), size))
  ref = np.stack([_pil_resize(im, size) for im in img])
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, ref)


def test_resize_tall_within_one_level_of_pil():
  # Pillow >= 13 runs the vertical pass first for some tall images (see preprocess docstring):
  # the 8-bit intermediate then differs, by at most one level.
  img = np.random.default_rng(1).integers(0, 256, (1, 1000, 37, 3), dtype=np.uint8)
  got = np.asarray(preprocess.resize_uint8(jnp.asarray(img), 20)).astype(int)
  assert np.max(np.abs(got - _pil_resize(img[0], 20))) <= 1


def test_resize_identity_and_crop_rounding():
  img = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 256, 300, 3), np.uint8))
  assert preprocess.resize_uint8(img, 256) is img
  # torchvision: top = int(round((h - crop) / 2)), Python's round-half-to-even.
  # h=255: round(15.5)=16 (floor would give 15); w=257: round(16.5)=16 (half-up gives 17).
  x = jnp.arange(255 * 257, dtype=jnp.float32).reshape(1, 255, 257, 1)
  c = preprocess.center_crop(x, 224)
  np.testing.assert_array_equal(np.asarray(c), np.asarray(x[:, 16:240, 16:240]))
  with pytest.raises(ValueError, match="larger"):
    preprocess.center_crop(x, 300)


def test_to_uint8_truncates_like_torch():
  vals = np.array([-1.5, -1.0, -0.99, 0.0, 0.5, 0.999, 1.0, 1.2, np.nextafter(-1.0, 0.0),
                   2 / 255 - 1, 3 / 255 - 1 - 1e-6], np.float32)
  x = np.broadcast_to(vals[None, None, None, :], (1, 3, 2, vals.size)).copy()
  got = np.asarray(preprocess.to_uint8(jnp.asarray(x)))
  y = np.clip((vals + np.float32(1)) * np.float32(127.5), 0, 255)
  ref = np.trunc(y).astype(np.uint8)
  assert got.shape == (1, 2, vals.size, 3) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[0, 0, :, 0], ref)
  assert got[0, 0, 3, 0] == 127  # 127.5 truncates, does not round


def test_float_path_close_to_exact_path_and_differentiable():
  x = jax.random.uniform(jax.random.key(0), (2, 3, 90, 84), jnp.float32, -1.0, 1.0)
  exact = preprocess.classifier_input(preprocess.to_uint8(x), resize=64, crop=56)
  smooth = preprocess.classifier_input_float(x, resize=64, crop=56)
  assert smooth.shape == exact.shape == (2, 56, 56, 3)
  # Truncation (< 1 level) plus Pillow's rounding of both passes (0.5 level each).
  tol = 2.0 / 255.0 / min(preprocess.IMAGENET_STD)
  assert float(jnp.max(jnp.abs(smooth - exact))) <= tol
  g = jax.grad(lambda v: jnp.sum(preprocess.classifier_input_float(v, 64, 56) ** 2))(x)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0


def test_input_checks():
  with pytest.raises(ValueError, match="uint8"):
    preprocess.classifier_input(jnp.zeros((1, 8, 8, 3), jnp.float32), None, None)
  with pytest.raises(ValueError, match="shape"):
    preprocess.classifier_input(jnp.zeros((1, 3, 8, 8), jnp.uint8), None, None)


def test_read_images(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, im in enumerate(imgs):
    Image.fromarray(im).save(folder / f"img_{i:03d}.png")
  np.testing.assert_array_equal(preprocess.read_images(folder), imgs)
  np.savez(tmp_path / "a.npz", images=imgs, other=np.zeros(2))
  np.testing.assert_array_equal(preprocess.read_images(tmp_path / "a.npz"), imgs)
  np.savez(tmp_path / "b.npz", x=imgs, y=imgs)
  with pytest.raises(ValueError, match="'images'"):
    preprocess.read_images(tmp_path / "b.npz")
  np.save(tmp_path / "c.npy", imgs[..., :2])
  with pytest.raises(ValueError, match="shape"):
    preprocess.read_images(tmp_path / "c.npy")
  Image.fromarray(imgs[0, :5]).save(folder / "img_999.png")
  with pytest.raises(ValueError, match="same size"):
    preprocess.read_images(folder)


# --- compiled pipeline -------------------------------------------------------------------------

def test_classify_no_retrace_and_batching():
  model = tv.convert_state_dict(_fake_state_dict(TINY_BASIC), TINY_BASIC)
  imgs = np.random.default_rng(0).integers(0, 256, (5, 60, 50, 3), dtype=np.uint8)
  graphdef, state = nnx.split(model)
  full = classifier.classify(graphdef, state, jnp.asarray(imgs[:2]))
  size = classifier.classify._cache_size()
  # Same shapes, a freshly split state of the same model: no new compilation.
  graphdef2, state2 = nnx.split(model)
  again = classifier.classify(graphdef2, state2, jnp.asarray(imgs[2:4]))
  assert classifier.classify._cache_size() == size
  assert again["logits"].shape == full["logits"].shape == (2, 5)
  # Batching with padding: one compilation for 5 images in batches of 2, same numbers.
  out = classifier.classify_batches(model, imgs, batch=2)
  assert classifier.classify._cache_size() == size
  np.testing.assert_allclose(out["logits"][:2], np.asarray(full["logits"]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits"][2:4], np.asarray(again["logits"]), rtol=1e-5,
                             atol=1e-6)
  assert out["r"].shape == (5, TINY_BASIC.num_features) and out["pred"].shape == (5,)


# --- optional: against PyTorch built here (skipped without torch) -------------------------------

def _torch_resnet(torch, block: str, stages, width: int, num_classes: int):
  """A torchvision-equivalent ResNet written with torch.nn (no torchvision needed)."""
  nn = torch.nn
  expansion = 4 if block == "bottleneck" else 1

  class Block(nn.Module):
    def __init__(self, cin, planes, stride):
      super().__init__()
      if block == "bottleneck":
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
      else:
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn1, self.bn2 = nn.BatchNorm2d(planes), nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or cin != planes * expansion:
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes * expansion, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * expansion))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if block == "bottleneck":
        y = self.bn3(self.conv3(torch.relu(y)))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = width
      for i, n in enumerate(stages):
        blocks = []
        for j in range(n):
          blocks.append(Block(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
          cin = width * 2**i * expansion
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      r = x.mean((2, 3))
      return self.fc(r), r

  net = Net()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.normal_(1.0, 0.2)
        m.bias.normal_(0, 0.2)
  return net.eval()


@pytest.mark.parametrize("block,stages", [("basic", (2, 1, 1, 1)), ("bottleneck", (1, 2, 1, 1))])
def test_against_torch_odd_sizes(block, stages):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  net = _torch_resnet(torch, block, stages, width=8, num_classes=10)
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  model = tv.convert_state_dict(sd, tv.infer_config(sd))
  x = np.random.default_rng(0).standard_normal((2, 3, 37, 50)).astype(np.float32)
  with torch.no_grad():
    logits_ref, r_ref = (t.numpy() for t in net(torch.from_numpy(x)))
  logits, acts = _forward(*nnx.split(model), jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert _rel_err(acts["r"], r_ref) <= 1e-4
  assert _rel_err(logits, logits_ref) <= 1e-4
