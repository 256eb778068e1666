"""The torch-free state-dict reader: real torch.save files, damaged files, malicious pickles."""

import collections
import io
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

from ports import torch_pickle


def _zip_with_pickle(path: pathlib.Path, payload: bytes) -> None:
  """A torch.save-style zip archive whose data.pkl is `payload`."""
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/byteorder", "little")
    zf.writestr("archive/version", "3\n")


def _open_payload(target: pathlib.Path) -> bytes:
  """Hand-written protocol-2 pickle: OrderedDict with a value built by builtins.open(target, 'w')."""
  def unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b

  return (b"\x80\x02" + b"ccollections\nOrderedDict\n)R"  # OrderedDict()
          + unicode("weight")
          + b"cbuiltins\nopen\n(" + unicode(str(target)) + unicode("w") + b"tR"  # open(t, 'w')
          + b"s.")  # SETITEM, STOP


class _SystemCall:
  """Pickles as `os.system(cmd)` (recorded as posix.system on Linux)."""

  def __init__(self, cmd: str):
    self.cmd = cmd

  def __reduce__(self):
    import os
    return (os.system, (self.cmd,))


def test_reads_fixture_state_dict(fixtures_dir):
  sd = torch_pickle.load_state_dict(fixtures_dir / "resnet_bottleneck_1111.pth")
  assert len(sd) == 104  # 17 convs, 17 BatchNorms x 5 entries, fc weight and bias
  assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["conv1.weight"].dtype == np.float32
  assert sd["bn1.num_batches_tracked"].shape == () and sd["bn1.num_batches_tracked"].dtype == np.int64
  assert sd["fc.weight"].shape == (1000, 2048)
  assert np.all(sd["layer1.0.bn1.running_var"] > 0)
  assert np.all(np.isfinite(sd["layer4.0.conv3.weight"]))


def test_truncated_and_foreign_files(fixtures_dir, tmp_path):
  data = (fixtures_dir / "resnet_bottleneck_1111.pth").read_bytes()
  for n, cut in enumerate((len(data) // 2, len(data) - 100, 10)):
    bad = tmp_path / f"cut{n}.pth"
    bad.write_bytes(data[:cut])
    with pytest.raises(torch_pickle.TorchFileError):
      torch_pickle.load_state_dict(bad)
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a torch file" * 10)
  with pytest.raises(torch_pickle.TorchFileError):
    torch_pickle.load_state_dict(junk)
  with pytest.raises(torch_pickle.TorchFileError):
    torch_pickle.load_state_dict(tmp_path / "absent.pth")


def test_storage_missing_from_archive(fixtures_dir, tmp_path):
  src = zipfile.ZipFile(fixtures_dir / "resnet_bottleneck_1111.pth")
  bad = tmp_path / "nostorage.pth"
  with src, zipfile.ZipFile(bad, "w") as dst:
    dropped = [n for n in src.namelist() if "/data/" in n][0]
    for name in src.namelist():
      if name != dropped:
        dst.writestr(name, src.read(name))
  with pytest.raises(torch_pickle.TorchFileError, match="missing"):
    torch_pickle.load_state_dict(bad)


def test_open_payload_is_refused_and_creates_nothing(tmp_path):
  target = tmp_path / "pwned_open"
  payload = _open_payload(target)
  # The payload is live: the stock unpickler creates the file.
  live = tmp_path / "live"
  obj = pickle.loads(_open_payload(live))
  obj["weight"].close()
  assert live.exists()

  pth = tmp_path / "evil_open.pth"
  _zip_with_pickle(pth, payload)
  with pytest.raises(torch_pickle.ForbiddenGlobalError, match="builtins.open"):
    torch_pickle.load_state_dict(pth)
  assert not target.exists()


def test_system_payload_is_refused_and_creates_nothing(tmp_path):
  target = tmp_path / "pwned_system"
  payload = pickle.dumps(collections.OrderedDict(w=_SystemCall(f"touch {target}")), protocol=2)
  assert b"system" in payload
  pth = tmp_path / "evil_system.pth"
  _zip_with_pickle(pth, payload)
  with pytest.raises(torch_pickle.ForbiddenGlobalError):
    torch_pickle.load_state_dict(pth)
  assert not target.exists()
  # The lenient network-pickle reader refuses it too.
  raw = tmp_path / "evil.pkl"
  raw.write_bytes(payload)
  with pytest.raises(torch_pickle.ForbiddenGlobalError):
    torch_pickle.load_network_pickle(raw)
  assert not target.exists()


def test_unlisted_harmless_global_is_refused_in_strict_mode(tmp_path):
  payload = pickle.dumps({"w": collections.Counter("ab")}, protocol=2)
  pth = tmp_path / "counter.pth"
  _zip_with_pickle(pth, payload)
  with pytest.raises(torch_pickle.ForbiddenGlobalError, match="collections.Counter"):
    torch_pickle.load_state_dict(pth)


def test_restricted_unpickler_directly():
  with pytest.raises(torch_pickle.ForbiddenGlobalError):
    torch_pickle.RestrictedUnpickler(io.BytesIO(b"\x80\x02cposix\nsystem\n."), lenient=False).load()
