"""Orbax checkpoints that carry their architecture config and a content hash.

A checkpoint directory holds `config.json` (kind, architecture name and config fields, the
SHA-256 of the saved state) and `state/` (an orbax StandardCheckpointer tree). `load(path)`
rebuilds the right NNX module with no other argument: it looks up the architecture in
`linkjax.models.ARCHITECTURES`, builds an abstract module with `nnx.eval_shape`, and restores
the parameters into it after checking the hash (a flipped byte is an error, not a silently
changed weight). `load(path, role='classifier')` refuses checkpoints of another role.

Plain pytrees (e.g. a linking network's params) use `save_tree`/`load_tree` with a JSON `meta`.

Saving builds the directory beside its destination and renames it into place
(`files.replace_dir`); an existing destination is replaced only when it is a linkjax checkpoint
of the same kind, never another folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from linkjax import files
from linkjax import models

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
STATE_DIR = "state"
# Files a checkpoint directory may hold besides config.json and state/ (trainers add metrics).
_EXTRA_FILES = ("metrics.json",)


class CheckpointError(ValueError):
  """A checkpoint directory is missing, damaged or of another architecture."""


def _registry(arch: str) -> models.Architecture:
  if arch not in models.ARCHITECTURES:
    raise CheckpointError(f"unknown architecture {arch!r}; known: {sorted(models.ARCHITECTURES)}")
  return models.ARCHITECTURES[arch]


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


def state_hash(state_dir: pathlib.Path) -> str:
  """SHA-256 over every file under `state_dir` (relative paths and contents, sorted)."""
  h = hashlib.sha256()
  for p in sorted(q for q in state_dir.rglob("*") if q.is_file()):
    h.update(str(p.relative_to(state_dir)).encode() + b"\0")
    with open(p, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    h.update(b"\0")
  return h.hexdigest()


def _read_meta(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_dir():
    raise CheckpointError(f"checkpoint directory {path} does not exist")
  meta_file = path / CONFIG_FILE
  if not meta_file.is_file():
    raise CheckpointError(f"{path} is not a linkjax checkpoint: {CONFIG_FILE} is missing")
  try:
    meta = files.read_json(meta_file)
  except files.FileError as e:
    raise CheckpointError(f"{path} is damaged: {e}") from e
  if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
    raise CheckpointError(f"{meta_file} is not a linkjax checkpoint header")
  if not (path / STATE_DIR).is_dir():
    raise CheckpointError(f"{path} is damaged: the {STATE_DIR}/ directory is missing")
  return meta


def _not_replaceable(kind: str):
  def check(path: pathlib.Path) -> str | None:
    try:
      meta = _read_meta(path)
    except CheckpointError:
      return "it is not a linkjax checkpoint" if any(path.iterdir()) else None
    if meta["kind"] != kind:
      return f"it holds a linkjax checkpoint of kind {meta['kind']!r}, not {kind!r}"
    extra = sorted(p.name for p in path.iterdir()
                   if p.name not in (CONFIG_FILE, STATE_DIR, *_EXTRA_FILES))
    if extra:
      return f"it holds files that are not part of a checkpoint: {extra[:5]}"
    return None
  return check


def _write(path: str | pathlib.Path, meta: dict[str, Any], tree: Any) -> None:
  def build(tmp: pathlib.Path) -> None:
    ckptr = _checkpointer()
    ckptr.save(tmp / STATE_DIR, tree)
    ckptr.wait_until_finished()
    files.write_json(tmp / CONFIG_FILE, {**meta, "state_sha256": state_hash(tmp / STATE_DIR)})

  try:
    files.replace_dir(path, build, is_ours=_not_replaceable(meta["kind"]))
  except files.FileError as e:
    raise CheckpointError(str(e)) from e


def _checkpointer() -> ocp.StandardCheckpointer:
  """An orbax checkpointer private to this process: in a multi-process job (jax.distributed)
  every process reads the (replicated) weights itself, with no cross-process barrier."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"linkjax_p{me}"))


def _verify(path: pathlib.Path, meta: dict[str, Any]) -> None:
  expected = meta.get("state_sha256")
  if expected is None:
    logging.warning("%s has no content hash (written by an older linkjax): not verified", path)
    return
  if state_hash(path / STATE_DIR) != expected:
    raise CheckpointError(f"{path} is damaged: the content of {STATE_DIR}/ does not match the "
                          "hash recorded when it was saved; convert or copy it again")


def _on_this_process(tree: Any) -> Any:
  """Restore targets on this process's first local device, whatever topology the checkpoint
  was saved with (every process of a multi-process job holds its own copy of the weights)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  # Arrays, ShapeDtypeStructs and orbax's ArrayMetadata; not nnx Variables (which also have a
  # shape and a dtype, but are pytree nodes of the state).
  is_array = lambda x: (not isinstance(x, nnx.Variable)  # noqa: E731
                        and hasattr(x, "shape") and hasattr(x, "dtype"))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=device)
                      if is_array(x) else x, tree, is_leaf=is_array)


def _restore(path: pathlib.Path, meta: dict[str, Any], abstract_tree: Any = None) -> Any:
  _verify(path, meta)
  try:
    ckptr = _checkpointer()
    if abstract_tree is None:
      md = ckptr.metadata(path / STATE_DIR)
      abstract_tree = getattr(md, "item_metadata", md)
    return ckptr.restore(path / STATE_DIR, _on_this_process(abstract_tree))
  except Exception as e:  # orbax raises many types for structure mismatches and damage
    raise CheckpointError(f"could not restore {path}/{STATE_DIR}: {type(e).__name__}: "
                          f"{str(e)[:300]}") from e


def save(path: str | pathlib.Path, model: nnx.Module, config: Any | None = None) -> None:
  """Saves an NNX model's state and its architecture config to directory `path`."""
  config = config if config is not None else model.config
  try:
    arch = models.arch_of(config)
  except KeyError as e:
    raise CheckpointError(str(e)) from e
  _write(path, {"kind": "model", "arch": arch, "format": FORMAT_VERSION,
                "config": config_to_dict(config)}, nnx.state(model))


def read_config(path: str | pathlib.Path, role: str | None = None) -> tuple[str, Any]:
  """Returns (arch, config) of a model checkpoint without restoring weights.

  Args:
    path: directory written by `save`.
    role: if given ('classifier', 'generator', 'segmenter'), raise CheckpointError unless the
      checkpoint's architecture has this role.
  """
  path = pathlib.Path(path).absolute()
  meta = _read_meta(path)
  if meta["kind"] != "model":
    raise CheckpointError(f"{path} holds a {meta['kind']!r}, not a model")
  arch = _registry(meta.get("arch"))
  if role is not None and arch.role != role:
    raise CheckpointError(f"{path} holds a {arch.role} ({meta['arch']!r}), expected a {role}")
  _, config_cls = arch.classes()
  try:
    return meta["arch"], config_from_dict(config_cls, meta["config"])
  except (TypeError, ValueError, KeyError) as e:
    raise CheckpointError(f"{path}: invalid {meta['arch']} config: {e}") from e


def load(path: str | pathlib.Path, role: str | None = None) -> nnx.Module:
  """Rebuilds the model saved at `path` (architecture and config from the checkpoint).

  Args:
    path: directory written by `save`.
    role: if given, raise CheckpointError unless the checkpoint holds a model of this role.
  """
  path = pathlib.Path(path).absolute()
  arch, config = read_config(path, role)
  model_cls, _ = _registry(arch).classes()
  abstract = nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  state = _restore(path, _read_meta(path), abstract_state)
  return nnx.merge(graphdef, state)


def save_tree(path: str | pathlib.Path, tree: Any, meta: dict[str, Any], kind: str) -> None:
  """Saves a pytree of arrays with JSON-serialisable `meta` under checkpoint kind `kind`."""
  _write(path, {"kind": kind, "format": FORMAT_VERSION, "meta": meta}, tree)


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
  tree = _restore(path, meta)
  return jax.tree.map(np.asarray, tree), meta["meta"]
