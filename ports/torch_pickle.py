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
embedded `module_src` is never executed. Every pickle in a file, including the small ones
around legacy storages, goes through this unpickler.

Hostile files: nothing is allocated on a size the file claims before the claim is checked.
  * Tensors (`_rebuild_tensor_v2`, strict and lenient) and numpy arrays go through one
    validation layer (`_check_view`, `_check_dtype`, `_array_state`): sizes, strides and offsets
    are integers >= 0, there are as many strides as sizes, every reachable element lies inside
    the storage, and a tensor holds at most as many bytes as its storage. Views that reuse
    elements (stride 0, overlapping strides) are materialised only up to
    OVERLAP_ALLOWANCE_BYTES per file, and all tensors of a file together up to
    SHARED_STORAGE_FACTOR times its storage bytes (tied weights are separate views of one
    storage).
  * numpy dtypes come only from a whitelist of plain little-endian numeric types, never
    structured; a BUILD on a dtype is checked and never applied.
  * The unpickler (pure Python, so each opcode can be checked) refuses a length that the
    stream cannot hold before reading or allocating it (BINBYTES8, BINUNICODE8, BYTEARRAY8,
    FRAME, ...), caps LONG4 at MAX_LONG_BYTES, applies BUILD only to the kinds of objects torch
    and numpy pickles build, and bounds the loaded tree: MAX_TREE_DEPTH deep and MAX_TREE_NODES
    nodes with shared references expanded (what `repr` or `np.asarray` would visit).
  * Zip members are read in ZIP_CHUNK_BYTES chunks against one budget per archive:
    MAX_COMPRESSION_RATIO times the archive's size. A member's declared size is checked before
    reading and the bytes produced are counted while streaming. `torch.save` stores members
    uncompressed (ratio 1); the slack admits re-zipped (deflated) archives.
Every failure is a `TorchFileError` (a ValueError) whose one-line message names the file and,
where the pickle shows it, the key being built; forbidden globals stay `ForbiddenGlobalError`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import math
import pathlib
import pickle
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable

import numpy as np

from ports.validate import short_repr

# --- limits (see the module docstring) ----------------------------------------------------------

MAX_COMPRESSION_RATIO = 8
ZIP_CHUNK_BYTES = 1 << 20
OVERLAP_ALLOWANCE_BYTES = 16 << 20
SHARED_STORAGE_FACTOR = 4
MAX_TENSOR_DIMS = 64  # torch's own limit
MAX_LONG_BYTES = 1024
# A converted StyleGAN-XL pickle (G, G_ema, D with its feature networks) has ~1e5 nodes.
MAX_TREE_NODES = 1 << 22
MAX_TREE_DEPTH = 256
MAX_MESSAGE_CHARS = 500


class TorchFileError(ValueError):
  """The file is not a readable PyTorch file (truncated, wrong format, hostile sizes, ...)."""


class ForbiddenGlobalError(pickle.UnpicklingError):
  """The pickle names a global that linkjax refuses to resolve."""


# Storage class name -> numpy dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": None,  # handled specially: no numpy dtype
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

# The only numpy dtypes a file may name (`dtype.str`): plain numbers, little-endian.
_ARRAY_DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8",
                           "<f2", "<f4", "<f8"})

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


def _one_line(text: str) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


# --- the validation layer for tensors and arrays ------------------------------------------------


def _index(value: Any, what: str) -> int:
  """A size, stride, offset or count from the file: an integer (not a bool) >= 0."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TorchFileError(f"{what} is {short_repr(value, 80)}, not an integer")
  value = int(value)
  if value < 0:
    raise TorchFileError(f"{what} {value} is negative")
  return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)):
    raise TorchFileError(f"{what} is {short_repr(value, 80)}, not a tuple of integers")
  if len(value) > MAX_TENSOR_DIMS:
    raise TorchFileError(f"{what} has {len(value)} dimensions (at most {MAX_TENSOR_DIMS})")
  return tuple(_index(v, what) for v in value)


def _check_view(size: Any, stride: Any, offset: Any,
                storage_numel: int) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
  """Validates a strided view of a storage of `storage_numel` elements.

  Returns:
    (size, stride, offset, numel) as Python ints, once every element the view can reach
    (offsets `offset + sum(i_k * stride_k)`, 0 <= i_k < size_k) lies in [0, storage_numel).
  """
  size, stride = _shape(size, "tensor size"), _shape(stride, "tensor stride")
  if len(stride) != len(size):
    raise TorchFileError(f"tensor size {size} has {len(size)} dimensions but stride {stride} "
                         f"has {len(stride)}")
  offset = _index(offset, "storage offset")
  numel = math.prod(size)
  if numel == 0:
    if offset > storage_numel:
      raise TorchFileError(f"storage offset {offset} lies beyond a storage of {storage_numel} "
                           "elements")
    return size, stride, offset, 0
  # Strides are >= 0, so the first element is the lowest and this one the highest.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage_numel:
    raise TorchFileError(f"tensor of size {size}, stride {stride}, offset {offset} reaches "
                         f"element {last} of a storage of {storage_numel} elements")
  return size, stride, offset, numel


def _check_dtype(dtype: Any, what: str = "dtype") -> np.dtype:
  """A numpy dtype from the file: one of _ARRAY_DTYPES, nothing structured."""
  if not isinstance(dtype, np.dtype) or dtype.str not in _ARRAY_DTYPES or dtype.fields \
     or dtype.subdtype is not None or dtype.metadata:
    raise TorchFileError(f"{what} {short_repr(dtype, 80)} is not a plain little-endian number "
                         f"type ({', '.join(sorted(_ARRAY_DTYPES))})")
  return dtype


def _array_state(state: Any) -> tuple[int, tuple[int, ...], np.dtype, bool, bytes]:
  """Validates `ndarray.__setstate__`'s (version, shape, dtype, is_fortran, rawdata)."""
  if isinstance(state, tuple) and len(state) == 4:
    state = (1,) + state
  if not (isinstance(state, tuple) and len(state) == 5):
    raise TorchFileError(f"numpy array state {short_repr(state, 80)} is not "
                         "(version, shape, dtype, is_fortran, data)")
  version, shape, dtype, fortran, raw = state
  shape = _shape(shape, "array shape")
  dtype = _check_dtype(dtype, "array dtype")
  if not isinstance(fortran, (bool, np.bool_, int)) or not isinstance(raw, bytes):
    raise TorchFileError("numpy array state holds no raw byte data")
  if math.prod(shape) * dtype.itemsize != len(raw):
    raise TorchFileError(f"numpy array of shape {shape} and dtype {dtype} has {len(raw)} bytes "
                         "of data")
  return _index(version, "array state version"), shape, dtype, bool(fortran), raw


def _as_dtype(storage_type: StorageType, raw: bytes, numel: int) -> Storage:
  numel = _index(numel, "storage size")
  if storage_type.name == "BFloat16Storage":
    if len(raw) < 2 * numel:
      raise TorchFileError(f"storage truncated: {len(raw)} bytes for {numel} bfloat16 values")
    u16 = np.frombuffer(raw, dtype="<u2", count=numel)
    return Storage((u16.astype(np.uint32) << 16).view(np.float32))
  dtype = np.dtype(storage_type.dtype).newbyteorder("<")
  if len(raw) < numel * dtype.itemsize:
    raise TorchFileError(f"storage truncated: {len(raw)} bytes for {numel} × {dtype}")
  return Storage(np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("=")))


def _storage_itemsize(storage_type: StorageType) -> int:
  dtype = storage_type.dtype
  return 2 if dtype is None else np.dtype(dtype).itemsize


class _ReadContext:
  """Byte budgets shared by every unpickler that reads one file (legacy storages nest)."""

  def __init__(self):
    self.storage_bytes = 0  # bytes of storage data read from the file
    self.tensor_bytes = 0  # bytes materialised by _rebuild_tensor_v2
    self.overlap_bytes = 0  # of which by views larger than their storage
    self._counted: set[int] = set()

  def count_storage(self, storage: Storage) -> None:
    """Adds a storage's bytes once, however often the pickle refers to it."""
    if id(storage) not in self._counted:
      self._counted.add(id(storage))
      self.storage_bytes += storage.data.nbytes

  def admit_tensor(self, nbytes: int, storage_nbytes: int, size: tuple, stride: tuple) -> None:
    if nbytes > storage_nbytes:
      if self.overlap_bytes + nbytes > OVERLAP_ALLOWANCE_BYTES:
        raise TorchFileError(
            f"tensor of size {short_repr(size, 120)}, stride {short_repr(stride, 120)} needs "
            f"{nbytes} bytes from a storage of {storage_nbytes}: views that repeat elements are "
            f"materialised only up to {OVERLAP_ALLOWANCE_BYTES} bytes per file")
      self.overlap_bytes += nbytes
    elif self.tensor_bytes + nbytes > (SHARED_STORAGE_FACTOR * self.storage_bytes
                                       + OVERLAP_ALLOWANCE_BYTES):
      raise TorchFileError(
          f"the tensors add up to more than {SHARED_STORAGE_FACTOR} times the file's "
          f"{self.storage_bytes} bytes of storage (many views of the same storage)")
    self.tensor_bytes += nbytes


def _rebuild_tensor_v2(storage: Storage, storage_offset: int, size: tuple, stride: tuple,
                       requires_grad: bool = False, backward_hooks: Any = None,
                       metadata: Any = None, *, context: _ReadContext | None = None) -> np.ndarray:
  if not isinstance(storage, Storage):
    raise TorchFileError(f"tensor storage is a {type(storage).__name__}, not a storage")
  data = storage.data
  size, stride, offset, numel = _check_view(size, stride, storage_offset, data.shape[0])
  itemsize = data.dtype.itemsize
  (context or _ReadContext()).admit_tensor(numel * itemsize, data.nbytes, size, stride)
  if numel == 0:
    return np.zeros(size, data.dtype)
  # A size-1 dimension's stride never moves (and may be any size in torch): use 0 for it.
  strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride))
  out = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=strides)
  return np.array(out)  # copy: contiguous, owns its memory


def _rebuild_parameter(data: np.ndarray, requires_grad: bool = False,
                       backward_hooks: Any = None, *args: Any) -> np.ndarray:
  if not isinstance(data, np.ndarray):
    raise TorchFileError(f"parameter data is a {type(data).__name__}, not a tensor")
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  return _rebuild_parameter(data)


def _reconstruct_persistent_obj(meta: dict[str, Any]) -> PersistentObject:
  if not isinstance(meta, dict) or "class_name" not in meta or "state" not in meta:
    raise TorchFileError("malformed torch_utils.persistence object")
  return PersistentObject(class_name=meta["class_name"], module_src=meta.get("module_src", ""),
                          state=meta["state"], version=meta.get("version"))


class _NumpyClassRef:
  """Stands for the global `numpy.ndarray`: only `_reconstruct` accepts it; it cannot be called,
  so a pickle cannot allocate an array of a shape it chooses."""

  def __repr__(self) -> str:
    return "<numpy.ndarray reference>"


_NDARRAY = _NumpyClassRef()


def _numpy_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
  # numpy pickles always write _reconstruct(ndarray, (0,), b'b'); the data arrives via BUILD.
  if cls is not _NDARRAY or not isinstance(shape, (tuple, list)) or tuple(shape) != (0,) \
     or not isinstance(dtype, (bytes, str)) or dtype not in (b"b", "b"):
    raise TorchFileError(f"unexpected numpy _reconstruct arguments {short_repr((shape, dtype))}")
  return np.empty((0,), np.int8)


def _numpy_dtype(code: Any, align: Any = False, copy: Any = False) -> np.dtype:
  """`numpy.dtype(code, align, copy)` for the plain types of _ARRAY_DTYPES only."""
  if not isinstance(code, str) or not isinstance(align, (bool, int)) or align \
     or not isinstance(copy, (bool, int)):
    raise TorchFileError(f"numpy dtype {short_repr(code, 80)} is not a plain number type")
  body = code[1:] if code[:1] in "<|=" and code else code
  for full in (f"<{body}", f"|{body}"):
    if full in _ARRAY_DTYPES:
      return _check_dtype(np.dtype(full))
  raise TorchFileError(f"numpy dtype {short_repr(code, 80)} is not a plain little-endian number "
                       f"type ({', '.join(sorted(_ARRAY_DTYPES))})")


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
  dtype = _check_dtype(dtype, "numpy scalar dtype")
  if data is None:
    return dtype.type()
  if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
    raise TorchFileError(f"numpy scalar of dtype {dtype} with {short_repr(data, 80)} as data")
  return np.frombuffer(data, dtype=dtype)[0]


# numpy's pickling globals, each checked (plain dtypes, no caller-chosen allocation); BUILD on
# their results is checked by RestrictedUnpickler.
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _numpy_reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _numpy_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _numpy_dtype,
}


def _allowlist(lenient: bool, context: _ReadContext) -> dict[tuple[str, str], Any]:
  table: dict[tuple[str, str], Any] = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): functools.partial(_rebuild_tensor_v2,
                                                                context=context),
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
  }
  for name in _STORAGE_DTYPES:
    table[("torch", name)] = StorageType(name)
  if lenient:
    table[("torch.storage", "_load_from_bytes")] = functools.partial(_load_from_bytes,
                                                                     context=context)
    table[("torch_utils.persistence", "_reconstruct_persistent_obj")] = _reconstruct_persistent_obj
    table.update(NUMPY_GLOBALS)
    table[("builtins", "set")] = set
    table[("builtins", "frozenset")] = frozenset
    table[("builtins", "slice")] = slice
  return table


def _is_dangerous(module: str, name: str) -> bool:
  root = module.split(".")[0]
  if root in _DANGEROUS_MODULES:
    return True
  return root in ("builtins", "__builtin__") and name in _DANGEROUS_BUILTINS


# --- the unpickler -------------------------------------------------------------------------------


class _BoundedStream:
  """A read-only view of a seekable binary file that refuses reads past its end before
  reading, so a claimed length is never allocated (file objects preallocate `read(n)`)."""

  def __init__(self, file: BinaryIO):
    if not (hasattr(file, "seekable") and file.seekable()):
      file = io.BytesIO(file.read())
    self._file = file
    self._pos = file.tell()
    self._end = file.seek(0, io.SEEK_END)
    file.seek(self._pos)
    self.size = self._end - self._pos  # bytes of the stream from where unpickling starts

  def _claim(self, n: int) -> None:
    if n > self._end - self._pos:
      raise TorchFileError(f"the pickle claims {n} bytes where {self._end - self._pos} remain "
                           "(truncated or hostile file)")

  def read(self, n: int = -1) -> bytes:
    if n is None or n < 0:
      n = self._end - self._pos
    self._claim(n)
    data = self._file.read(n)
    self._pos += len(data)
    return data

  def readinto(self, buf: Any) -> int:
    self._claim(len(buf))
    n = self._file.readinto(buf)
    self._pos += n
    return n

  def readline(self) -> bytes:
    line = self._file.readline()
    self._pos += len(line)
    return line


def _labelled_children(obj: Any) -> list[tuple[str, Any]]:
  if isinstance(obj, dict):
    out = []
    for k, v in obj.items():
      label = k[:60] if isinstance(k, str) else short_repr(k, 60)
      out += [(label, k), (label, v)]
    out += [(str(k)[:60], v) for k, v in getattr(obj, "__dict__", {}).items()]  # OrderedDict
    return out
  if isinstance(obj, (list, tuple)):
    return [(str(i), v) for i, v in enumerate(obj)]
  if isinstance(obj, (set, frozenset)):
    return [("<item>", v) for v in obj]
  if isinstance(obj, slice):
    return [("start", obj.start), ("stop", obj.stop), ("step", obj.step)]
  if isinstance(obj, PersistentObject):
    return [("state", obj.state)]
  if isinstance(obj, TorchModule):
    return [("state", obj.state)]
  d = getattr(obj, "__dict__", None)
  return [(str(k)[:60], v) for k, v in d.items()] if isinstance(d, dict) else []


_LEAF_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray, np.ndarray,
               np.generic, np.dtype, StorageType, Storage, _NumpyClassRef, type)


def _check_tree(root: Any) -> None:
  """Refuses a loaded object whose tree, with shared references expanded, exceeds
  MAX_TREE_NODES nodes or MAX_TREE_DEPTH levels. Work is linear in the distinct objects."""
  done: dict[int, int] = {}  # id -> expanded node count
  active: set[int] = set()  # objects on the current path: a reference back is one node
  stack: list[list[Any]] = [["<root>", root, None, 1]]  # label, obj, children iterator, count
  while stack:
    frame = stack[-1]
    if frame[2] is None:
      if len(stack) > MAX_TREE_DEPTH:
        raise TorchFileError(f"objects nested more than {MAX_TREE_DEPTH} deep at "
                             f"{_tree_path(stack)}")
      active.add(id(frame[1]))
      frame[2] = iter(_labelled_children(frame[1]))
    item = next(frame[2], None)
    if item is None:
      stack.pop()
      active.discard(id(frame[1]))
      done[id(frame[1])] = frame[3]
      if stack:
        stack[-1][3] += frame[3]
    else:
      label, child = item
      if isinstance(child, _LEAF_TYPES) or callable(child) or id(child) in active:
        frame[3] += 1
      elif id(child) in done:
        frame[3] += done[id(child)]
      else:
        stack.append([label, child, None, 1])
        continue
    if stack and stack[-1][3] > MAX_TREE_NODES:
      raise TorchFileError(f"the object at {_tree_path(stack)} expands to more than "
                           f"{MAX_TREE_NODES} nodes through shared references")


def _tree_path(stack: list[list[Any]]) -> str:
  return _one_line(".".join(str(f[0]) for f in stack[1:]) or "the top level")[:300]


class RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the Python unpickler is checkable
  """Unpickler with an allowlist; see the module docstring for strict vs lenient and limits."""

  dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

  def __init__(self, file: BinaryIO, *, lenient: bool, storages: Any = None,
               context: _ReadContext | None = None):
    self._stream = _BoundedStream(file)
    super().__init__(self._stream)
    self._lenient = lenient
    self._context = context or _ReadContext()
    self._table = _allowlist(lenient, self._context)
    self._storages = storages  # callable (storage_type, key, numel) -> Storage, for zip files
    self.opaque_globals: set[str] = set()

  def load(self) -> Any:
    obj = super().load()
    _check_tree(obj)
    return obj

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
      raise TorchFileError(f"unsupported persistent id {short_repr(pid)}")
    if self._storages is None:
      raise TorchFileError("storage reference outside a torch file")
    storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
    if not isinstance(storage_type, StorageType):
      raise TorchFileError(f"unsupported storage type {short_repr(storage_type)}")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or len(str(key)) > 100:
      raise TorchFileError(f"storage key {short_repr(key, 80)} is not a short name")
    storage = self._storages(storage_type, str(key), _index(numel, "storage size"))
    if not isinstance(storage, Storage):
      raise TorchFileError(f"storage {short_repr(key, 80)} did not load as a storage")
    self._context.count_storage(storage)
    return storage

  def _nearest_key(self) -> str | None:
    """The dict key being built, for messages: the nearest string below the top of the stack."""
    frames = [self.stack] + self.metastack[::-1]
    for frame in frames[:4]:
      for item in frame[-2::-1][:8] if frame is self.stack else frame[::-1][:8]:
        if isinstance(item, str):
          return item
    return None

  def _with_key(self, fn: Callable[[], None]) -> None:
    try:
      fn()
    except TorchFileError as e:
      key = self._nearest_key()
      if key is None or getattr(e, "keyed", False):
        raise
      err = TorchFileError(f"at key {short_repr(key, 80)}: {e}")
      err.keyed = True
      raise err from None

  def load_reduce(self) -> None:
    self._with_key(functools.partial(pickle._Unpickler.load_reduce, self))  # noqa: SLF001

  dispatch[pickle.REDUCE[0]] = load_reduce

  def load_build(self) -> None:
    self._with_key(self._build)

  def _build(self) -> None:
    state, inst = self.stack[-1], self.stack[-2]
    if isinstance(inst, np.dtype):
      # numpy writes (3, byteorder, subarray, names, fields, elsize, alignment, flags): only the
      # plain-type form is accepted, and it is not applied (the dtype is already complete).
      if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", "|", "=")
              and state[2:5] == (None, None, None)):
        raise TorchFileError(f"numpy dtype state {short_repr(state)} is structured or not "
                             "little-endian")
      self.stack.pop()
      return
    if isinstance(inst, np.ndarray):
      self.stack[-1] = _array_state(state)
    elif type(inst) is collections.OrderedDict:  # torch state dicts carry `_metadata`
      if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
        raise TorchFileError(f"OrderedDict state {short_repr(state)} is not a dict of attributes")
    elif not (isinstance(inst, TorchModule) or hasattr(type(inst), "opaque_name")):
      raise TorchFileError(f"refusing to BUILD (set the state of) a {type(inst).__name__}")
    pickle._Unpickler.load_build(self)  # noqa: SLF001

  dispatch[pickle.BUILD[0]] = load_build

  def load_long4(self) -> None:
    (n,) = struct.unpack("<i", self.read(4))
    if not 0 <= n <= MAX_LONG_BYTES:
      raise TorchFileError(f"LONG4 integer of {n} bytes (at most {MAX_LONG_BYTES})")
    self.append(pickle.decode_long(self.read(n)))

  dispatch[pickle.LONG4[0]] = load_long4

  def load_bytearray8(self) -> None:
    (n,) = struct.unpack("<Q", self.read(8))
    if n > self._stream.size:
      raise TorchFileError(f"BYTEARRAY8 claims {n} bytes in a {self._stream.size}-byte pickle")
    b = bytearray(n)
    self.readinto(b)
    self.append(b)

  dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


# Errors the standard library raises on damaged input; turned into TorchFileError at the top.
_DAMAGE = (EOFError, OSError, pickle.UnpicklingError, struct.error, zipfile.BadZipFile, zlib.error,
           ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
           MemoryError, RecursionError, NotImplementedError, UnicodeError)


def _reraise(path: pathlib.Path, e: BaseException) -> None:
  """Re-raises `e` as the reader's own error with a one-line message naming `path`."""
  if isinstance(e, ForbiddenGlobalError):
    raise ForbiddenGlobalError(_one_line(f"{path}: {e}")) from e
  if isinstance(e, TorchFileError):
    raise TorchFileError(_one_line(f"{path}: {e}")) from e
  raise TorchFileError(_one_line(f"{path} is not a readable torch file (truncated or wrong "
                                 f"file): {type(e).__name__}: {e}")) from e


# --- zip archives (torch.save, torch >= 1.6) ---------------------------------------------------


class _ZipReader:
  """Reads archive members against one decompressed-bytes budget for the whole archive."""

  def __init__(self, zf: zipfile.ZipFile, archive_bytes: int):
    self._zf = zf
    self.left = MAX_COMPRESSION_RATIO * archive_bytes

  def read(self, name: str) -> bytearray:
    try:
      info = self._zf.getinfo(name)
    except KeyError:
      raise TorchFileError(f"member {name} is missing") from None
    if info.file_size > self.left:
      raise TorchFileError(f"member {name} declares {info.file_size} bytes, more than the "
                           f"{self.left} left of {MAX_COMPRESSION_RATIO}x the archive's size")
    buf = bytearray()
    with self._zf.open(info) as f:
      while chunk := f.read(ZIP_CHUNK_BYTES):
        buf += chunk
        if len(buf) > info.file_size:
          raise TorchFileError(f"member {name} inflates past its declared {info.file_size} bytes")
    self.left -= len(buf)
    return buf


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state dict into {key: numpy array}, without torch.

  Raises TorchFileError for a truncated, non-torch or hostile file and ForbiddenGlobalError when
  the pickle names anything beyond tensors, storages and OrderedDict.
  """
  path = pathlib.Path(path)
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    if path.is_file():
      with path.open("rb") as f:
        if f.read(2) == b"\x80\x02":
          raise TorchFileError(f"{path} uses the legacy torch format; re-save it with torch>=1.6")
    raise TorchFileError(_one_line(f"{path} is not a torch.save zip archive (truncated or wrong "
                                   f"file): {e}")) from e
  try:
    with zf:
      obj = _read_zip_state_dict(zf, path.stat().st_size)
  except _DAMAGE as e:
    _reraise(path, e)
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise TorchFileError(f"{path} does not hold a state dict of tensors")
  return dict(obj)


def _read_zip_state_dict(zf: zipfile.ZipFile, archive_bytes: int) -> Any:
  reader = _ZipReader(zf, archive_bytes)
  names = zf.namelist()
  pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
  if len(pkl) != 1:
    raise TorchFileError(f"holds no single data.pkl (found {short_repr(pkl)})")
  prefix = pkl[0][: -len("data.pkl")]
  if prefix + "byteorder" in names:
    byteorder = reader.read(prefix + "byteorder")
    if bytes(byteorder) != b"little":
      raise TorchFileError(f"storages are {short_repr(bytes(byteorder), 40)}-endian; only "
                           "little-endian is supported")
  context = _ReadContext()
  loaded: dict[str, tuple[StorageType, Storage]] = {}

  def storages(storage_type: StorageType, key: str, numel: int) -> Storage:
    if key in loaded:  # torch reuses one storage for every view of it
      if loaded[key][0] != storage_type:
        raise TorchFileError(f"storage {key} is referenced as {loaded[key][0].name} and "
                             f"{storage_type.name}")
      return loaded[key][1]
    raw = reader.read(f"{prefix}data/{key}")
    if len(raw) < numel * _storage_itemsize(storage_type):
      raise TorchFileError(f"storage {key} is truncated: {len(raw)} bytes for {numel} elements")
    storage = _as_dtype(storage_type, raw, numel)
    loaded[key] = (storage_type, storage)
    return storage

  data = reader.read(pkl[0])
  return RestrictedUnpickler(io.BytesIO(data), lenient=False, storages=storages,
                             context=context).load()


# --- legacy serialization (storages inside StyleGAN pickles) -----------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _load_from_bytes(b: bytes, *, context: _ReadContext | None = None) -> Storage:
  """Parses `torch.save(storage)` bytes in the legacy format into a Storage.

  The format is five pickles in a row (magic, protocol, sys info, the object, storage keys),
  then per key an int64 element count and the raw little-endian data.
  """
  context = context or _ReadContext()
  if not isinstance(b, (bytes, bytearray)):
    raise TorchFileError(f"legacy storage bytes are a {type(b).__name__}")
  if b[:2] == b"PK":
    raise TorchFileError("zip-format storages inside a network pickle are not supported")
  f = io.BytesIO(b)

  def plain() -> Any:
    return RestrictedUnpickler(f, lenient=False, context=context).load()

  try:
    magic = plain()
    if type(magic) is not int or magic != _LEGACY_MAGIC:
      raise TorchFileError("storage bytes lack torch's legacy magic number")
    plain()  # protocol version
    sys_info = plain()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
      raise TorchFileError("big-endian legacy storages are not supported")
    records: dict[str, tuple[StorageType, Storage]] = {}

    def remember(storage_type: StorageType, key: str, numel: int) -> Storage:
      if key not in records:
        records[key] = (storage_type, Storage(np.empty(0, np.float32)))  # filled below
      return records[key][1]

    result = RestrictedUnpickler(f, lenient=False, storages=remember, context=context).load()
    keys = plain()
    if not isinstance(keys, list):
      raise TorchFileError("legacy storage keys are not a list")
    filled = set()
    for key in keys:
      key = str(key)[:100]
      if key not in records:
        raise TorchFileError(f"legacy storage data for {key!r}, which nothing references")
      storage_type, storage = records[key]
      (numel,) = struct.unpack("<q", f.read(8))
      numel = _index(numel, "legacy storage size")
      nbytes = numel * _storage_itemsize(storage_type)
      if nbytes > len(b) - f.tell():
        raise TorchFileError(f"legacy storage {key!r} claims {numel} elements, more than the "
                             f"{len(b) - f.tell()} bytes left")
      storage.data = _as_dtype(storage_type, f.read(nbytes), numel).data
      context.storage_bytes += storage.data.nbytes  # counted as empty when referenced
      filled.add(key)
  except (EOFError, struct.error, KeyError, pickle.UnpicklingError) as e:
    if isinstance(e, ForbiddenGlobalError):
      raise
    raise TorchFileError(f"damaged tensor storage: {type(e).__name__}: {e}") from e
  if set(records) - filled:
    unfilled = sorted(set(records) - filled)
    raise TorchFileError(f"legacy storages without data: {short_repr(unfilled)}")
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

  Never executes embedded source; refuses dangerous globals; stubs other unknown globals;
  refuses hostile sizes (see the module docstring) with TorchFileError.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise TorchFileError(f"{path} does not exist")
  try:
    with path.open("rb") as f:
      up = RestrictedUnpickler(f, lenient=True, context=_ReadContext())
      data = up.load()
  except _DAMAGE as e:
    _reraise(path, e)
  return NetworkPickle(data=data, opaque_globals=up.opaque_globals)
