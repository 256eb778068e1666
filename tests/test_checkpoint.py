"""linkjax.checkpoint with a ResNet: round trip, wrong architecture, damaged directories."""

import functools
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from linkjax import checkpoint
from linkjax.models import resnet
from ports import torchvision as tv

TINY = resnet.ResNetConfig(depth=10, width=4, num_classes=7, stage_sizes=(1, 1, 1, 1),
                           block="bottleneck", resize=36, crop=32)


def _tiny_model() -> resnet.ResNet:
  # Random torchvision-layout weights through the converter (numpy RNG: no jit compiles).
  rng = np.random.default_rng(0)
  sd = {k: (rng.standard_normal(s) * 0.3).astype(np.float32)
        for k, s in tv.source_shapes(TINY).items()}
  for k in sd:
    if k.endswith("running_var"):
      sd[k] = np.abs(sd[k]) + np.float32(0.5)
  return tv.convert_state_dict(sd, TINY)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[pathlib.Path, resnet.ResNet]:
  path = tmp_path_factory.mktemp("ckpt") / "resnet"
  model = _tiny_model()
  checkpoint.save(path, model)
  return path, model


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


def _outputs(model: resnet.ResNet) -> np.ndarray:
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32))
  logits, acts = _forward(*nnx.split(model), x)
  return np.concatenate([np.asarray(logits).ravel(), np.asarray(acts["r"]).ravel()])


def test_round_trip_identical(saved):
  path, model = saved
  loaded = checkpoint.load(path, role="classifier")
  assert isinstance(loaded, resnet.ResNet)
  assert loaded.config == TINY
  assert isinstance(loaded.config.stage_sizes, tuple)
  np.testing.assert_array_equal(_outputs(loaded), _outputs(model))
  flat = dict(nnx.to_flat_state(nnx.state(loaded)))
  for path_, var in nnx.to_flat_state(nnx.state(model)):
    np.testing.assert_array_equal(np.asarray(flat[path_][...]), np.asarray(var[...]))


def test_wrong_architecture(saved):
  path, _ = saved
  assert checkpoint.read_config(path)[0] == "resnet"
  with pytest.raises(checkpoint.CheckpointError, match="expected a generator"):
    checkpoint.load(path, role="generator")


# A failed orbax restore can leave an asyncio callback that fires after its loop closed; that
# is orbax's cleanup noise, not a test outcome.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["no_config", "bad_config", "no_state", "truncated_data",
                                    "no_metadata"])
def test_damaged_checkpoint(saved, tmp_path, damage):
  src, _ = saved
  path = tmp_path / "ckpt"
  shutil.copytree(src, path)
  if damage == "no_config":
    (path / "config.json").unlink()
  elif damage == "bad_config":
    (path / "config.json").write_text('{"kind": "model", "arch": "res')
  elif damage == "no_state":
    shutil.rmtree(path / "state")
  elif damage == "truncated_data":
    files = [p for p in (path / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
      p.write_bytes(p.read_bytes()[:10])
  elif damage == "no_metadata":
    (path / "state" / "_METADATA").unlink()
  with pytest.raises(checkpoint.CheckpointError):
    checkpoint.load(path)


def test_missing_directory(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.load(tmp_path / "nothing")


def test_save_refuses_a_folder_that_is_not_a_checkpoint(saved, tmp_path):
  _, model = saved
  out = tmp_path / "mine"
  out.mkdir()
  (out / "thesis.txt").write_text("years of work")
  with pytest.raises(checkpoint.CheckpointError, match="not a linkjax checkpoint"):
    checkpoint.save(out, model)
  assert (out / "thesis.txt").read_text() == "years of work"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left behind
  # A checkpoint with a stray user file is not replaced either.
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, model)
  (ckpt / "notes.txt").write_text("keep")
  with pytest.raises(checkpoint.CheckpointError, match="notes.txt"):
    checkpoint.save(ckpt, model)
  assert (ckpt / "notes.txt").exists()


def test_save_replaces_a_checkpoint_of_the_same_kind_only(saved, tmp_path):
  _, model = saved
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, model)
  (ckpt / "metrics.json").write_text("{}")
  checkpoint.save(ckpt, model)  # same kind: replaced whole
  assert not (ckpt / "metrics.json").exists()
  np.testing.assert_array_equal(_outputs(checkpoint.load(ckpt)), _outputs(model))
  tree = tmp_path / "tree"
  checkpoint.save_tree(tree, {"a": np.zeros(3, np.float32)}, {"x": 1}, kind="link")
  with pytest.raises(checkpoint.CheckpointError, match="kind 'link'"):
    checkpoint.save(tree, model)
  assert checkpoint.load_tree(tree, "link")[1] == {"x": 1}


def test_flipped_bytes_are_detected(saved, tmp_path):
  src, _ = saved
  path = tmp_path / "ckpt"
  shutil.copytree(src, path)
  data = max((p for p in (path / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  mid = len(raw) // 2
  raw[mid:mid + 64] = bytes(b ^ 0x5A for b in raw[mid:mid + 64])
  data.write_bytes(bytes(raw))
  with pytest.raises(checkpoint.CheckpointError, match="does not match the hash"):
    checkpoint.load(path)
