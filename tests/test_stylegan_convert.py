"""Converter safety and robustness: official-format pickles written by hand, never with torch.

`_write_official` re-serialises the fixture's generator the way the official 2022 checkpoints
are laid out: every network object through `torch_utils.persistence._reconstruct_persistent_obj`
with real (here: file-creating) `module_src`, tensors as `torch._utils._rebuild_tensor_v2` over
`torch.storage._load_from_bytes(<legacy bytes, location 'cuda:0'>)`, numpy arrays and scalars
through `numpy.core.multiarray`, and a `D` entry of classes that are not installed.
"""

import collections
import io
import pathlib
import pickle
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from ports import torch_pickle
from ports.stylegan_xl import (ConversionError, ForbiddenGlobalError, TorchFileError,
                               convert_network_pickle)
from ports.torch_pickle import PersistentObject, TorchModule

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"


class FakeGlobal:
  """Stands for a global `module.name` that does not exist here; pickled as a GLOBAL opcode."""

  def __init__(self, module, name):
    self.module, self.name, self.__name__ = module, name, name

  def __call__(self, *a):  # pickle requires reduce callables to be callable
    raise AssertionError("never called")


class Tensor:
  def __init__(self, arr):
    self.arr = np.array(arr, np.float32, order="C")  # keeps 0-d (ascontiguousarray would not)


class Storage:
  def __init__(self, arr, location):
    self.arr, self.location = arr, location


class Opaque:
  def __init__(self, func, args, state=None):
    self.func, self.args, self.state = func, args, state


def _legacy_storage_bytes(arr: np.ndarray, location: str) -> bytes:
  """`torch.save(storage)` in the legacy (non-zip) format, written opcode by opcode."""
  f = io.BytesIO()
  pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
  pickle.dump(1001, f, protocol=2)
  pickle.dump({"protocol_version": 1001, "little_endian": True,
               "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
  key = "94011"
  f.write(b"\x80\x02(X" + struct.pack("<I", 7) + b"storage" + b"ctorch\nFloatStorage\n"
          + b"X" + struct.pack("<I", len(key)) + key.encode()
          + b"X" + struct.pack("<I", len(location)) + location.encode()
          + b"J" + struct.pack("<i", arr.size) + b"Nt" + b"Q.")
  pickle.dump([key], f, protocol=2)
  f.write(struct.pack("<q", arr.size))
  f.write(arr.astype("<f4").tobytes())
  return f.getvalue()


class _Writer(pickle._Pickler):
  """Pure-python pickler that emits FakeGlobal as GLOBAL and rewrites objects via reducer_override."""

  dispatch = pickle._Pickler.dispatch.copy()

  def __init__(self, f, module_src, location):
    super().__init__(f, protocol=4)  # like the official pickles (protocol >= 3: native bytes)
    self.module_src, self.location = module_src, location

  def _save_fake(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    self.memoize(obj)

  dispatch[FakeGlobal] = _save_fake

  def reducer_override(self, obj):
    if isinstance(obj, PersistentObject):
      meta = {"type": "class", "version": obj.version or 6, "module_src": self.module_src,
              "class_name": obj.class_name, "state": _wrap_state(obj.state)}
      return FakeGlobal("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,)
    if isinstance(obj, TorchModule):
      mod = {"Embedding": "torch.nn.modules.sparse"}.get(obj.class_name, "torch.nn.modules.x")
      return FakeGlobal(mod, obj.class_name), (), _wrap_state(obj.state)
    if isinstance(obj, Tensor):
      a = obj.arr
      stride = tuple(s // 4 for s in a.strides) if a.ndim else ()
      return (FakeGlobal("torch._utils", "_rebuild_tensor_v2"),
              (Storage(a.reshape(-1), self.location), 0, a.shape, stride, False,
               collections.OrderedDict()))
    if isinstance(obj, Storage):
      return (FakeGlobal("torch.storage", "_load_from_bytes"),
              (_legacy_storage_bytes(obj.arr, obj.location),))
    if isinstance(obj, Opaque):
      return (obj.func, obj.args) if obj.state is None else (obj.func, obj.args, obj.state)
    if isinstance(obj, np.ndarray):  # numpy attributes, as 2022 numpy pickled them
      _, args, state = obj.__reduce__()
      return (FakeGlobal("numpy.core.multiarray", "_reconstruct"),
              (FakeGlobal("numpy", "ndarray"),) + tuple(args[1:]), state)
    if isinstance(obj, np.generic):
      return (FakeGlobal("numpy.core.multiarray", "scalar"), (obj.dtype, obj.tobytes()))
    return NotImplemented


def _wrap_state(state):
  state = dict(state)
  for group in ("_parameters", "_buffers"):
    if group in state:
      state[group] = collections.OrderedDict(
          (k, None if v is None else Tensor(v)) for k, v in state[group].items())
  return state


def _write_official(path, generator, *, module_src, location="cuda:0", D=None):
  data = {"G": generator, "D": D, "G_ema": generator, "augment_pipe": None,
          "training_set_kwargs": {"resolution": 32, "use_labels": True}, "progress": {"cur_nimg": 0}}
  with open(path, "wb") as f:
    _Writer(f, module_src, location).dump(data)


@pytest.fixture(scope="module")
def fixture_generator():
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES} (../shared is absent in this clone)")
  return torch_pickle.load_network_pickle(FIXTURES / "sgxl_tiny.pkl").data["G_ema"]


def _src_creating(path):
  return f"import pathlib\npathlib.Path({str(path)!r}).write_text('pwned')\n"


def _unknown_D():
  """A discriminator made of classes that are not installed (timm, dill-pickled functions)."""
  fn = Opaque(FakeGlobal("dill._dill", "_create_function"),
              (Opaque(FakeGlobal("dill._dill", "_create_code"), (2, 0, b"\x00", ())), {}, "f"))
  net = Opaque(FakeGlobal("timm.models.efficientnet", "EfficientNet"), (), {"act": fn, "n": 3})
  return {"backbone": net, "hooks": [fn], "proj": Opaque(FakeGlobal("pg_modules.blocks", "X"), (1,))}


def test_official_format_converts_without_executing_source(fixture_generator, tmp_path):
  """GPU-tagged storages, numpy.core globals, embedded source and an unloadable D: converts,
  source never runs, output equals the converted fixture."""
  probe = tmp_path / "probe"
  exec(_src_creating(probe), {})  # the test's own string: proves the embedded source is live
  assert probe.exists()
  marker = tmp_path / "source_was_executed"
  pkl = tmp_path / "official.pkl"
  _write_official(pkl, fixture_generator, module_src=_src_creating(marker), D=_unknown_D())
  raw = pkl.read_bytes()
  assert b"cuda:0" in raw and b"numpy.core.multiarray" in raw and b"timm.models" in raw
  model = convert_network_pickle(pkl)
  ref_model = convert_network_pickle(FIXTURES / "sgxl_tiny.pkl")
  assert not marker.exists()
  assert model.config == ref_model.config
  ref = np.load(FIXTURES / "sgxl_tiny_ref.npz")
  z, c = jnp.asarray(ref["z"]), jnp.asarray(ref["classes"], jnp.int32)
  np.testing.assert_array_equal(np.asarray(model.mapping(z, c, psi=0.7)),
                                np.asarray(ref_model.mapping(z, c, psi=0.7)))
  np.testing.assert_array_equal(np.asarray(model.synthesis.input.freqs[...]),
                                np.asarray(ref_model.synthesis.input.freqs[...]))


@pytest.mark.parametrize("module,name", [("posix", "system"), ("os", "system"),
                                         ("builtins", "eval"), ("subprocess", "call")])
def test_system_call_is_refused(fixture_generator, tmp_path, module, name):
  marker = tmp_path / "system_was_called"
  pkl = tmp_path / "evil.pkl"
  evil = Opaque(FakeGlobal(module, name), (f"touch {marker}",))
  _write_official(pkl, fixture_generator, module_src="", D={"x": evil})
  with pytest.raises(ForbiddenGlobalError, match=f"{module}.{name}"):
    convert_network_pickle(pkl)
  assert not marker.exists()


def test_truncated_file(tmp_path):
  if not FIXTURES.is_dir():
    pytest.skip("fixtures absent")
  raw = (FIXTURES / "sgxl_tiny.pkl").read_bytes()
  for cut in (len(raw) // 2, len(raw) - 3, 10):
    p = tmp_path / "trunc.pkl"
    p.write_bytes(raw[:cut])
    with pytest.raises(TorchFileError, match="truncated|damaged|not a readable"):
      convert_network_pickle(p)
  with pytest.raises(TorchFileError, match="does not exist"):
    convert_network_pickle(tmp_path / "missing.pkl")


def test_not_a_stylegan_xl_pickle(fixture_generator, tmp_path):
  p = tmp_path / "dict.pkl"
  p.write_bytes(pickle.dumps({"G": None, "D": None}, protocol=2))
  with pytest.raises(ConversionError, match="no 'G_ema' entry"):
    convert_network_pickle(p)
  p.write_bytes(pickle.dumps([1, 2], protocol=2))
  with pytest.raises(ConversionError, match="not a network-pickle dict"):
    convert_network_pickle(p)
  other = PersistentObject("Generator", "", {"_modules": {
      "synthesis": PersistentObject("SynthesisNetwork", "", {}),
      "mapping": PersistentObject("MappingNetwork", "", {"_modules": {
          "embed": PersistentObject("FullyConnectedLayer", "", {})}})}})
  _write_official(p, other, module_src="")
  with pytest.raises(ConversionError, match="not a torch.nn.Embedding"):
    convert_network_pickle(p)
  _write_official(p, PersistentObject("Discriminator", "", {}), module_src="")
  with pytest.raises(ConversionError, match="Discriminator.*not a StyleGAN-XL"):
    convert_network_pickle(p)


def test_key_table_reports_missing_and_unexpected(fixture_generator, tmp_path):
  g = torch_pickle.load_network_pickle(FIXTURES / "sgxl_tiny.pkl").data["G_ema"]  # a fresh copy
  fc0 = g.state["_modules"]["mapping"].state["_modules"]["fc0"]
  fc0.state["_parameters"]["extra"] = np.zeros(3, np.float32)
  del fc0.state["_parameters"]["bias"]
  p = tmp_path / "keys.pkl"
  _write_official(p, g, module_src="")
  with pytest.raises(ConversionError) as e:
    convert_network_pickle(p)
  assert "mapping.fc0.bias" in str(e.value) and "mapping.fc0.extra" in str(e.value)


def test_cli_writes_checkpoint(tmp_path):
  if not FIXTURES.is_dir():
    pytest.skip("fixtures absent")
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / "ckpt"
  r = subprocess.run([sys.executable, "-m", "ports.stylegan_xl", f"--pkl={FIXTURES / 'sgxl_tiny.pkl'}",
                      f"--out={out}", "--noallow_nonfinite"], cwd=root, capture_output=True,
                     text=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert r.returncode == 0, r.stderr[-2000:]
  from linkjax import checkpoint
  arch, config = checkpoint.read_config(out)
  assert arch == "stylegan_xl" and config.num_ws == 10


# --- values and geometry a StyleGAN-XL generator cannot have -------------------------------------

def _fresh_generator():
  if not FIXTURES.is_dir():
    pytest.skip("fixtures absent")
  return torch_pickle.load_network_pickle(FIXTURES / "sgxl_tiny.pkl").data["G_ema"]


def _module(g, name):
  syn = g.state["_modules"]["synthesis"]
  if name == "G":
    return g
  if name == "G.synthesis":
    return syn
  return syn.state["_modules"][name]


@pytest.mark.parametrize("target,attr,value", [
    ("L0_36_16", "up_factor", 1e6),
    ("L0_36_16", "up_factor", 10**6),
    ("L0_36_16", "up_taps", 10**6),
    ("L0_36_16", "down_factor", 4),
    ("L9_32_3", "out_size", np.array([4096, 4096])),
    ("L9_32_3", "in_size", np.array([40, 40])),
    ("L1_36_16", "in_channels", 17),
    ("L5_36_16", "in_size", np.array([52, 52])),
    ("L0_36_16", "in_size", "36"),
    ("L0_36_16", "conv_kernel", 4),
    ("L9_32_3", "conv_kernel", 3),
    ("L0_36_16", "padding", [9, 8, 9, 10**6]),
    ("L0_36_16", "in_sampling_rate", float("nan")),
    ("L0_36_16", "tmp_sampling_rate", 10**9),
    ("L3_36_16", "out_cutoff", 1e9),
    ("L0_36_16", "conv_clamp", float("inf")),
    ("L0_36_16", "is_torgb", True),
    ("G", "img_resolution", 48),
    ("G", "img_resolution", 4096),
    ("G", "img_channels", 1000),
    ("input", "size", np.array([10**6, 10**6])),
    ("input", "bandwidth", 8.0),
    ("G.synthesis", "output_scale", float("nan")),
])
def test_geometry_outside_stylegan_xl_is_refused(target, attr, value):
  from ports.stylegan_xl import config_from_generator
  g = _fresh_generator()
  config_from_generator(g)  # the fixture itself is accepted
  _module(g, target).state[attr] = value
  with pytest.raises(ConversionError) as e:
    config_from_generator(g)
  msg = str(e.value)
  assert attr in msg and (target in msg or target == "G") and "\n" not in msg and len(msg) < 600


def test_shared_reference_attribute_gives_a_short_error():
  """A layer attribute made of one inner list referenced 1000 times (a few KB in the file)."""
  import time

  from ports.stylegan_xl import config_from_generator
  g = _fresh_generator()
  inner = list(range(1000))
  _module(g, "L0_36_16").state["padding"] = [inner] * 1000
  t = time.time()
  with pytest.raises(ConversionError) as e:
    config_from_generator(g)
  assert time.time() - t < 0.5
  assert "padding" in str(e.value) and len(str(e.value)) < 600


def test_nonfinite_weights_refused_unless_allowed(tmp_path):
  g = _fresh_generator()
  params = _module(g, "L0_36_16").state["_parameters"]
  w = np.array(params["weight"])
  w[0, 0, 0, 0] = np.nan
  params["weight"] = w
  p = tmp_path / "nan.pkl"
  _write_official(p, g, module_src="")
  with pytest.raises(ConversionError) as e:
    convert_network_pickle(p)
  assert "synthesis.L0_36_16.weight" in str(e.value) and "NaN" in str(e.value)
  model = convert_network_pickle(p, allow_nonfinite=True)
  assert int(jnp.isnan(model.synthesis.L0_36_16.weight[...]).sum()) == 1


def test_non_float32_weights_refused():
  from ports.stylegan_xl import _fill, config_from_generator, source_tensors
  g = _fresh_generator()
  fc0 = g.state["_modules"]["mapping"].state["_modules"]["fc0"]
  fc0.state["_parameters"]["weight"] = fc0.state["_parameters"]["weight"].astype(np.float64)
  fc0.state["_parameters"]["bias"] = fc0.state["_parameters"]["bias"].astype(np.int32)
  with pytest.raises(ConversionError) as e:
    _fill(config_from_generator(g), source_tensors(g))
  assert "mapping.fc0.weight: dtype float64" in str(e.value)
  assert "mapping.fc0.bias: dtype int32" in str(e.value)
