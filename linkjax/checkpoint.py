"""Orbax checkpoints that carry their architecture config.

A checkpoint directory holds `config.json` (architecture name + config fields) and `state/`
(an orbax StandardCheckpointer tree). `load(path)` rebuilds the right NNX module with no other
argument: it looks up the architecture, builds an abstract module with `nnx.eval_shape`, and
restores the parameters into it.

Plain pytrees (e.g. a linking network's params) use `save_tree`/`load_tree` with a JSON `meta`.

Model classes register themselves through `ARCHITECTURES` (a lazy name -> "module:Class" table,
so that importing this module imports no model). A model class takes `(config, *, rngs)` and its
config is a frozen dataclass; list-valued JSON fields are turned back into tuples.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

FORMAT_VERSION = 1

# arch name -> (module, model class, config class)
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "resnet": ("linkjax.models.resnet", "ResNet", "ResNetConfig"),
    "stylegan_xl": ("linkjax.models.stylegan_xl", "StyleGANXL", "StyleGANXLConfig"),
    "segmenter": ("linkjax.models.segmenter", "FewShotSegmenter", "SegmenterConfig"),
}


class CheckpointError(ValueError):
  """A checkpoint directory is missing, damaged or of another architecture."""


def _arch_classes(arch: str) -> tuple[type, type]:
  if arch not in ARCHITECTURES:
    raise CheckpointError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
  mod_name, model_name, config_name = ARCHITECTURES[arch]
  mod = importlib.import_module(mod_name)
  return getattr(mod, model_name), getattr(mod, config_name)


def arch_of(model_or_config: Any) -> str:
  """The registered architecture name of a model instance or config instance."""
  cls = type(model_or_config)
  for arch, (mod_name, model_name, config_name) in ARCHITECTURES.items():
    if cls.__module__ == mod_name and cls.__name__ in (model_name, config_name):
      return arch
  raise CheckpointError(f"{cls.__module__}.{cls.__name__} is not a registered architecture")


def _tuplify(x: Any) -> Any:
  if isinstance(x, list):
    return tuple(_tuplify(v) for v in x)
  if isinstance(x, dict):
    return {k: _tuplify(v) for k, v in x.items()}
  return x


def config_to_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return dataclasses.asdict(config)


def config_from_dict(config_cls: type, d: dict[str, Any]) -> Any:
  if hasattr(config_cls, "from_dict"):
    return config_cls.from_dict(d)
  return config_cls(**{k: _tuplify(v) for k, v in d.items()})


def _read_meta(path: pathlib.Path) -> dict[str, Any]:
  meta_file = path / "config.json"
  if not path.is_dir():
    raise CheckpointError(f"checkpoint directory {path} does not exist")
  if not meta_file.is_file():
    raise CheckpointError(f"{path} is not a linkjax checkpoint: config.json is missing")
  try:
    meta = json.loads(meta_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{meta_file} is damaged: {e}") from e
  if not isinstance(meta, dict) or "kind" not in meta:
    raise CheckpointError(f"{meta_file} is not a linkjax checkpoint header")
  if not (path / "state").is_dir():
    raise CheckpointError(f"{path} is damaged: the state/ directory is missing")
  return meta


def _write(path: pathlib.Path, meta: dict[str, Any], tree: Any) -> None:
  path = pathlib.Path(path).absolute()
  if path.exists():
    shutil.rmtree(path)
  path.mkdir(parents=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path / "state", tree)
  ckptr.wait_until_finished()
  (path / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _restore(path: pathlib.Path, abstract_tree: Any) -> Any:
  try:
    return ocp.StandardCheckpointer().restore(path / "state", abstract_tree)
  except Exception as e:  # orbax raises many types for structure mismatches and damage
    raise CheckpointError(f"could not restore {path}/state: {type(e).__name__}: {e}") from e


def save(path: str | pathlib.Path, model: nnx.Module, config: Any | None = None) -> None:
  """Saves an NNX model's state and its architecture config to directory `path`."""
  config = config if config is not None else model.config
  arch = arch_of(config)
  state = nnx.state(model)
  _write(pathlib.Path(path), {"kind": "model", "arch": arch, "format": FORMAT_VERSION,
                              "config": config_to_dict(config)}, state)


def read_config(path: str | pathlib.Path) -> tuple[str, Any]:
  """Returns (arch, config) of a model checkpoint without restoring weights."""
  meta = _read_meta(pathlib.Path(path))
  if meta["kind"] != "model":
    raise CheckpointError(f"{path} holds a {meta['kind']!r}, not a model")
  _, config_cls = _arch_classes(meta["arch"])
  return meta["arch"], config_from_dict(config_cls, meta["config"])


def load(path: str | pathlib.Path, expected_arch: str | None = None) -> nnx.Module:
  """Rebuilds the model saved at `path` (architecture and config from the checkpoint).

  Args:
    path: directory written by `save`.
    expected_arch: if given, raise CheckpointError unless the checkpoint is of this architecture.
  """
  path = pathlib.Path(path).absolute()
  arch, config = read_config(path)
  if expected_arch is not None and arch != expected_arch:
    raise CheckpointError(f"{path} holds a {arch!r} checkpoint, expected {expected_arch!r}")
  model_cls, _ = _arch_classes(arch)
  abstract = nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  state = _restore(path, abstract_state)
  return nnx.merge(graphdef, state)


def save_tree(path: str | pathlib.Path, tree: Any, meta: dict[str, Any], kind: str) -> None:
  """Saves a pytree of arrays with JSON-serialisable `meta` under checkpoint kind `kind`."""
  _write(pathlib.Path(path), {"kind": kind, "format": FORMAT_VERSION, "meta": meta}, tree)


def read_tree_meta(path: str | pathlib.Path, kind: str) -> dict[str, Any]:
  """The `meta` a `save_tree` checkpoint was written with, without restoring its arrays."""
  path = pathlib.Path(path).absolute()
  meta = _read_meta(path)
  if meta["kind"] != kind:
    raise CheckpointError(f"{path} holds a {meta['kind']!r} checkpoint, expected {kind!r}")
  return meta["meta"]


def load_tree(path: str | pathlib.Path, kind: str) -> tuple[Any, dict[str, Any]]:
  """Restores a pytree saved by `save_tree`; returns (tree, meta). Arrays come back as numpy."""
  path = pathlib.Path(path).absolute()
  meta = _read_meta(path)
  if meta["kind"] != kind:
    raise CheckpointError(f"{path} holds a {meta['kind']!r} checkpoint, expected {kind!r}")
  try:
    tree = ocp.StandardCheckpointer().restore(path / "state")
  except Exception as e:
    raise CheckpointError(f"could not restore {path}/state: {type(e).__name__}: {e}") from e
  return jax.tree.map(np.asarray, tree), meta["meta"]
