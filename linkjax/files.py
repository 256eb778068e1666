"""Files written atomically and read defensively.

Every file linkjax writes appears whole or not at all: it is written to a temporary sibling,
flushed to disk and renamed into place (`os.replace`), so a crash never leaves half a file
under the real name. Directories (checkpoints) are built in a temporary sibling directory and
swapped in by renames; an existing directory is replaced only when the caller's check says it
is ours (never a user's folder). JSON is strict: NaN and infinity are refused at write time
(`json_safe` turns them into null where a missing value is meant).

Reading: `read_npz` / `read_json` turn every way a file can be damaged into `FileError`, one
line naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import shutil
import signal
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

# Test hook: "N:before" / "N:after" sends SIGKILL to this process around the N-th atomic file
# write of the process (1-based), before or after the rename; resume tests kill runs with it.
KILL_ENV = "LINKJAX_TEST_KILL_AT"
_writes = [0]


class FileError(ValueError):
  """A file is missing, damaged or not what it should be."""


def _kill_hook(phase: str) -> None:
  spec = os.environ.get(KILL_ENV)
  if spec and spec == f"{_writes[0]}:{phase}":
    os.kill(os.getpid(), signal.SIGKILL)


def _tmp_sibling(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(f".{path.name}.tmp{os.getpid()}.{uuid.uuid4().hex[:8]}")


def write_atomic(path: str | os.PathLike, writer: Callable[[BinaryIO], Any]) -> None:
  """Writes a file through `writer(f)` on a temporary sibling, fsyncs it, renames it to `path`."""
  path = pathlib.Path(path)
  _writes[0] += 1
  tmp = _tmp_sibling(path)
  try:
    with open(tmp, "wb") as f:
      writer(f)
      f.flush()
      os.fsync(f.fileno())
    _kill_hook("before")
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  _kill_hook("after")


def remove_tmp_files(directory: str | os.PathLike) -> None:
  """Deletes temporary siblings left in `directory` by a killed writer."""
  d = pathlib.Path(directory)
  if d.is_dir():
    for p in d.glob(".*.tmp*"):
      if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
      else:
        p.unlink(missing_ok=True)


def json_safe(x: Any) -> Any:
  """A JSON-serialisable copy: numpy -> Python, NaN and +-inf -> None (a missing value)."""
  if isinstance(x, Mapping):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, np.ndarray):
    return json_safe(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(float(x)) else None
  return x


def dumps(obj: Any) -> str:
  """Strict JSON text (sorted keys, indented); NaN/inf raise ValueError naming the problem."""
  try:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
  except ValueError as e:
    raise ValueError(f"refusing to write non-finite numbers as JSON ({e}); map them to None "
                     "with files.json_safe where a missing value is meant") from e


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes strict JSON atomically (numpy scalars and arrays converted; NaN/inf refused)."""
  data = dumps(_numpy_to_python(obj)).encode()
  write_atomic(path, lambda f: f.write(data))


def _numpy_to_python(x: Any) -> Any:
  if isinstance(x, os.PathLike):
    return os.fspath(x)
  if isinstance(x, Mapping):
    return {str(k): _numpy_to_python(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_numpy_to_python(v) for v in x]
  if isinstance(x, np.ndarray):
    return _numpy_to_python(x.tolist())
  if isinstance(x, np.bool_):
    return bool(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  return x


def read_json(path: str | os.PathLike) -> Any:
  """Reads JSON; a missing, unreadable or invalid file raises FileError."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text(), parse_constant=_refuse_constant)
  except FileNotFoundError:
    raise FileError(f"{path} does not exist") from None
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise FileError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from e


def _refuse_constant(name: str) -> Any:
  raise ValueError(f"non-standard JSON constant {name}")


def write_csv(path: str | os.PathLike, header: Sequence[str],
              rows: Iterable[Sequence[Any]]) -> None:
  """Writes a CSV table atomically (floats with 9 significant digits, which round-trip float32;
  NaN and infinity as an empty cell)."""
  def fmt(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
      return f"{float(v):.9g}" if math.isfinite(float(v)) else ""
    return v

  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(header)
  for row in rows:
    w.writerow([fmt(v) for v in row])
  data = buf.getvalue().encode()
  write_atomic(path, lambda f: f.write(data))


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
  """Writes an uncompressed .npz atomically."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  write_atomic(path, lambda f: np.savez(f, **arrays))


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every array of an .npz (no pickled objects); damage raises FileError."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise FileError(f"{path} does not exist") from None
  except Exception as e:  # zipfile / npy format errors of every kind: a damaged file
    raise FileError(f"{path} is unreadable ({type(e).__name__}: {e})") from e


def replace_dir(path: str | os.PathLike, build: Callable[[pathlib.Path], None], *,
                is_ours: Callable[[pathlib.Path], str | None]) -> None:
  """Builds a directory in a temporary sibling and swaps it in place of `path`.

  Args:
    path: the directory to (re)create.
    build: fills the given empty directory.
    is_ours: for an existing `path`, None when it may be replaced, else the reason it may not
      (e.g. "it is not a linkjax checkpoint"); then FileError is raised and nothing is touched.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() or path.is_symlink():
    if not path.is_dir() or path.is_symlink():
      raise FileError(f"refusing to replace {path}: it is not a directory")
    reason = is_ours(path)
    if reason is not None:
      raise FileError(f"refusing to replace {path}: {reason}; choose another output directory "
                      "or remove it yourself")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_sibling(path)
  tmp.mkdir()
  try:
    build(tmp)
    old = None
    if path.exists():
      old = path.with_name(f".{path.name}.old{os.getpid()}.{uuid.uuid4().hex[:8]}")
      os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
