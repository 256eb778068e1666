"""Reading PyTorch files with numpy and a restricted unpickler; torch is never imported.

Two file layouts:
  * zip archives written by `torch.save` (`<name>/data.pkl` + raw storages `<name>/data/<key>`),
    e.g. torchvision's `resnet50-0676ba61.pth`;
  * the legacy (non-zip) serialization, which StyleGAN-XL pickles embed for every storage via
    `torch.storage._load_from_bytes(bytes)`.

Safety: `find_class` resolves only an explicit allowlist to real callables. In strict mode
(state dicts) any other global is refused with `ForbiddenGlobalError`. In lenient mode (network
pickles) other globals become inert placeholder classes: calling, instantiating or building one
only records its arguments, so nothing from the file can run (dill-pickled functions and timm
classes in a discriminator become data). Globals from modules that can touch the system (os,
subprocess, builtins.eval, ...) are refused in both modes. `torch_utils.persistence.
_reconstruct_persistent_obj(meta)` becomes a `PersistentObject` holding `meta` as data: its
embedded `module_src` is never executed.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pathlib
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np


class TorchFileError(ValueError):
  """The file is not a readable PyTorch file (truncated, wrong format, ...)."""


class ForbiddenGlobalError(pickle.UnpicklingError):
  """The pickle names a global that linkjax refuses to resolve."""


# Storage class name -> numpy dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": None,  # handled specially: no numpy dtype
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

# Modules whose globals are refused even in lenient mode.
_DANGEROUS_MODULES = (
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "socket", "pty",
    "ctypes", "pickle", "_pickle", "marshal", "code", "codeop", "webbrowser", "multiprocessing",
    "threading", "signal", "io", "pathlib", "tempfile", "glob", "commands", "platform",
)
_DANGEROUS_BUILTINS = {"eval", "exec", "compile", "__import__", "open", "execfile", "input",
                       "getattr", "setattr", "delattr", "globals", "locals", "vars", "breakpoint"}


@dataclasses.dataclass(frozen=True)
class StorageType:
  name: str

  @property
  def dtype(self) -> Any:
    return _STORAGE_DTYPES[self.name]


@dataclasses.dataclass
class Storage:
  """A flat typed buffer (numpy 1-D array)."""
  data: np.ndarray


def _opaque_class(module: str, name: str) -> type:
  def _new(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.__dict__["_opaque_args"] = args
    return obj

  def _setstate(self, state):
    self.__dict__["_opaque_state"] = state

  return type(name, (), {"__new__": _new, "__init__": lambda self, *a, **k: None,
                                "__setstate__": _setstate, "__module__": "opaque." + module,
                                "opaque_name": f"{module}.{name}"})


@dataclasses.dataclass
class PersistentObject:
  """A `torch_utils.persistence` network object kept as data: class name and its `__dict__`."""
  class_name: str
  module_src: str
  state: dict[str, Any]
  version: int | None = None


@dataclasses.dataclass
class TorchModule:
  """A plain `torch.nn` module kept as data: its class and its `__dict__` state."""
  class_name: str
  state: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __setstate__(self, state: Any) -> None:
    self.state = state


def _torch_module_class(name: str) -> type:
  def _new(cls, *args, **kwargs):
    obj = object.__new__(cls)
    TorchModule.__init__(obj, name)
    return obj

  return type(name, (TorchModule,), {"__new__": _new, "__init__": lambda self, *a, **k: None})


def _rebuild_tensor_v2(storage: Storage, storage_offset: int, size: tuple, stride: tuple,
                       requires_grad: bool = False, backward_hooks: Any = None,
                       metadata: Any = None) -> np.ndarray:
  data = storage.data
  size, stride = tuple(size), tuple(stride)
  if len(size) == 0:
    return np.array(data[storage_offset])
  needed = storage_offset + 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else 0
  if needed > data.shape[0]:
    raise TorchFileError(f"tensor of size {size} overruns its storage of {data.shape[0]} elements")
  itemsize = data.dtype.itemsize
  out = np.lib.stride_tricks.as_strided(
      data[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride))
  return np.array(out)  # copy: contiguous, owns its memory


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False,
                       backward_hooks: Any = None, *args: Any) -> np.ndarray:
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  return data


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> PersistentObject:
  if not isinstance(meta, dict) or "class_name" not in meta or "state" not in meta:
    raise TorchFileError("malformed torch_utils.persistence object")
  return PersistentObject(class_name=meta["class_name"], module_src=meta.get("module_src", ""),
                          state=meta["state"], version=meta.get("version"))


def _numpy_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
  # numpy.core.multiarray._reconstruct(ndarray, (0,), b'b'); state arrives via __setstate__.
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
  return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _allowlist(lenient: bool) -> dict[tuple[str, str], Any]:
  table: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
  }
  for name in _STORAGE_DTYPES:
    table[("torch", name)] = StorageType(name)
  if lenient:
    table[("torch.storage", "_load_from_bytes")] = _load_from_bytes
    table[("torch_utils.persistence", "_reconstruct_persistent_obj")] = _reconstruct_persistent_obj
    for np_mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
      table[(np_mod, "_reconstruct")] = _numpy_reconstruct
      table[(np_mod, "scalar")] = _numpy_scalar
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    table[("builtins", "set")] = set
    table[("builtins", "frozenset")] = frozenset
    table[("builtins", "slice")] = slice
  return table


def _is_dangerous(module: str, name: str) -> bool:
  root = module.split(".")[0]
  if root in _DANGEROUS_MODULES:
    return True
  return root in ("builtins", "__builtin__") and name in _DANGEROUS_BUILTINS


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler with an allowlist; see the module docstring for strict vs lenient."""

  def __init__(self, file: BinaryIO, *, lenient: bool, storages: Any = None):
    super().__init__(file)
    self._lenient = lenient
    self._table = _allowlist(lenient)
    self._storages = storages  # callable (storage_type, key, numel) -> Storage, for zip files
    self.opaque_globals: set[str] = set()

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._table:
      return self._table[(module, name)]
    if _is_dangerous(module, name):
      raise ForbiddenGlobalError(
          f"refusing to load: the pickle names the forbidden global {module}.{name}")
    if self._lenient and module.startswith("torch.nn.modules."):
      return _torch_module_class(name)
    if self._lenient:
      self.opaque_globals.add(f"{module}.{name}")
      return _opaque_class(module, name)
    raise ForbiddenGlobalError(
        f"refusing to load: the pickle names the global {module}.{name}, which is not on the "
        "allowlist for a tensor state dict")

  def persistent_load(self, pid: Any) -> Any:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise TorchFileError(f"unsupported persistent id {pid!r}")
    if self._storages is None:
      raise TorchFileError("storage reference outside a torch file")
    storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
    if not isinstance(storage_type, StorageType):
      raise TorchFileError(f"unsupported storage type {storage_type!r}")
    return self._storages(storage_type, str(key), int(numel))


def _as_dtype(storage_type: StorageType, raw: bytes, numel: int) -> Storage:
  if storage_type.name == "BFloat16Storage":
    u16 = np.frombuffer(raw, dtype="<u2", count=numel)
    return Storage((u16.astype(np.uint32) << 16).view(np.float32))
  dtype = np.dtype(storage_type.dtype).newbyteorder("<")
  if len(raw) < numel * dtype.itemsize:
    raise TorchFileError(f"storage truncated: {len(raw)} bytes for {numel} × {dtype}")
  return Storage(np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("=")))


# --- zip archives (torch.save, torch >= 1.6) ---------------------------------------------------

def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state dict into {key: numpy array}, without torch.

  Raises TorchFileError for a truncated or non-torch file and ForbiddenGlobalError when the
  pickle names anything beyond tensors, storages and OrderedDict.
  """
  path = pathlib.Path(path)
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    if path.is_file() and path.read_bytes()[:2] == b"\x80\x02":
      raise TorchFileError(f"{path} uses the legacy torch format; re-save it with torch>=1.6")
    raise TorchFileError(f"{path} is not a torch.save zip archive (truncated or wrong file): {e}")
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise TorchFileError(f"{path} holds no single data.pkl (found {pkl})")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
    if byteorder != "little":
      raise TorchFileError(f"{path}: big-endian storages are not supported")

    def storages(storage_type: StorageType, key: str, numel: int) -> Storage:
      try:
        raw = zf.read(f"{prefix}data/{key}")
      except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise TorchFileError(f"{path}: storage {key} is missing or damaged: {e}") from e
      return _as_dtype(storage_type, raw, numel)

    try:
      data = zf.read(pkl[0])
      obj = RestrictedUnpickler(io.BytesIO(data), lenient=False, storages=storages).load()
    except (ForbiddenGlobalError, TorchFileError):
      raise
    except (zipfile.BadZipFile, EOFError, OSError, pickle.UnpicklingError, struct.error) as e:
      raise TorchFileError(f"{path} is damaged: {type(e).__name__}: {e}") from e
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise TorchFileError(f"{path} does not hold a state dict of tensors")
  return dict(obj)


# --- legacy serialization (storages inside StyleGAN pickles) -----------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_from_bytes(b: bytes) -> Storage:
  """Parses `torch.save(storage)` bytes in the legacy format into a Storage."""
  f = io.BytesIO(b)
  if b[:2] == b"PK":
    raise TorchFileError("zip-format storages inside a network pickle are not supported")
  try:
    magic = pickle.load(f)  # plain ints: no globals involved
    if magic != _LEGACY_MAGIC:
      raise TorchFileError("storage bytes lack torch's legacy magic number")
    _protocol = pickle.load(f)
    _sys_info = RestrictedUnpickler(f, lenient=False).load()
    records: dict[str, tuple[StorageType, int]] = {}

    def storages(storage_type: StorageType, key: str, numel: int) -> Storage:
      records[key] = (storage_type, numel)
      return Storage(np.empty(0))  # filled below

    placeholders: dict[str, Storage] = {}

    def remember(storage_type: StorageType, key: str, numel: int) -> Storage:
      if key not in placeholders:
        placeholders[key] = storages(storage_type, key, numel)
      return placeholders[key]

    up = RestrictedUnpickler(f, lenient=False, storages=remember)
    result = up.load()
    keys = pickle.load(f)
    for key in keys:
      storage_type, _ = records[str(key)]
      (numel,) = struct.unpack("<q", f.read(8))
      dtype = _STORAGE_DTYPES[storage_type.name]
      itemsize = 2 if dtype is None else np.dtype(dtype).itemsize
      raw = f.read(numel * itemsize)
      placeholders[str(key)].data = _as_dtype(storage_type, raw, numel).data
  except (EOFError, struct.error, KeyError, pickle.UnpicklingError) as e:
    if isinstance(e, ForbiddenGlobalError):
      raise
    raise TorchFileError(f"damaged tensor storage: {type(e).__name__}: {e}") from e
  if not isinstance(result, Storage):
    raise TorchFileError("legacy storage bytes did not hold a storage")
  return result


@dataclasses.dataclass
class NetworkPickle:
  """Result of `load_network_pickle`: the top-level object and the stubbed globals."""
  data: Any
  opaque_globals: set[str]


def load_network_pickle(path: str | pathlib.Path) -> NetworkPickle:
  """Loads a StyleGAN-style network pickle as inert data (PersistentObject / TorchModule trees).

  Never executes embedded source; refuses dangerous globals; stubs other unknown globals.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise TorchFileError(f"{path} does not exist")
  try:
    with path.open("rb") as f:
      up = RestrictedUnpickler(f, lenient=True)
      data = up.load()
  except (ForbiddenGlobalError, TorchFileError):
    raise
  except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError,
          AttributeError, IndexError, KeyError) as e:
    raise TorchFileError(f"{path} is not a readable network pickle (truncated or wrong file): "
                         f"{type(e).__name__}: {e}") from e
  return NetworkPickle(data=data, opaque_globals=up.opaque_globals)
