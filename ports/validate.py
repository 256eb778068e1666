"""Checks shared by the torch-free readers and converters: tensor values and short reprs.

`float_tensor` is the one per-tensor value check of the converters (`ports.stylegan_xl._fill`,
`ports.torchvision.convert_state_dict`): the dtype must be float32, float16 or bfloat16 (cast to
float32; float64 and integer tensors are refused rather than silently rounded or reinterpreted)
and, unless `allow_nonfinite`, every value must be finite.

`short_repr` renders untrusted objects for error messages with bounded work and length: a
pickle can hold a list that references itself or one inner list thousands of times, whose
plain `repr` is gigabytes long.

Imports numpy only (the readers run without JAX).
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

# Source dtypes a float32 model accepts; all convert to float32 exactly.
FLOAT_DTYPES = ("float32", "float16", "bfloat16")

MESSAGE_REPR_CHARS = 200


class TensorValueError(ValueError):
  """A tensor has a dtype or values the converter refuses."""


class _ShortRepr(reprlib.Repr):
  """reprlib with small limits that never calls the full `repr` of an unknown object."""

  def __init__(self):
    super().__init__()
    self.maxlevel = 3
    self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 6
    self.maxset = self.maxfrozenset = self.maxdeque = 6
    self.maxstring = self.maxother = 60
    self.maxlong = 40

  def repr_instance(self, x: Any, level: int) -> str:
    if isinstance(x, np.ndarray):
      return f"array(shape={x.shape}, dtype={x.dtype})"
    if isinstance(x, (bytes, bytearray)):
      return reprlib.Repr.repr_instance(self, x[: self.maxstring], level)
    if isinstance(x, (type(None), bool, float, complex, np.generic, np.dtype)):
      return reprlib.Repr.repr_instance(self, x, level)
    name = getattr(x, "class_name", None)  # PersistentObject / TorchModule
    if isinstance(name, str):
      return f"<{type(x).__name__} {name[:60]}>"
    return f"<{type(x).__name__}>"


_SHORT = _ShortRepr()


def short_repr(obj: Any, limit: int = MESSAGE_REPR_CHARS) -> str:
  """A one-line repr of `obj` of at most `limit` characters, built with bounded work."""
  try:
    text = _SHORT.repr(obj)
  except Exception:  # noqa: BLE001 - a hostile object may fail to render; the type still helps
    text = f"<{type(obj).__name__}>"
  text = text.replace("\n", " ")
  return text if len(text) <= limit else text[: limit - 3] + "..."


def float_tensor(key: str, value: Any, *, allow_nonfinite: bool = False) -> np.ndarray:
  """Checks one source tensor and returns it as float32.

  Args:
    key: the source key, named in errors.
    value: an array [...] (numpy, or anything with `dtype` and `shape` such as a jax Array);
      plain Python containers are refused, not converted.
    allow_nonfinite: accept NaN and ±inf.

  Returns:
    float32 array [...] with the same shape and values.

  Raises:
    TensorValueError: not an array, a dtype outside FLOAT_DTYPES, or non-finite values.
  """
  if not (hasattr(value, "dtype") and hasattr(value, "shape")):
    raise TensorValueError(f"{key}: a {type(value).__name__}, not a tensor")
  try:
    dtype = np.dtype(value.dtype)
  except TypeError:
    raise TensorValueError(f"{key}: {short_repr(value.dtype)} is not a dtype") from None
  if dtype.name not in FLOAT_DTYPES:
    raise TensorValueError(f"{key}: dtype {dtype} is not one of {', '.join(FLOAT_DTYPES)}")
  out = np.asarray(value).astype(np.float32)
  if not allow_nonfinite:
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
      raise TensorValueError(f"{key}: {bad} of {out.size} values are NaN or infinite "
                             "(allow_nonfinite to convert anyway)")
  return out
