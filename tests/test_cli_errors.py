"""Binaries on bad input: one `error:` line, exit status 2, nothing written or deleted.

Each case was reproduced on the code before these checks (issue 13): NaN ws or pairs written with
exit 0, negative classes silently wrapped, tracebacks for a corrupt PNG or a bad flag, a user's
folder wiped by --out.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from linkjax import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATOR = str(demo.BUILTIN["generator"])
CLASSIFIER = str(demo.BUILTIN["classifier"])


def _run(module, *args, timeout=180):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _assert_user_error(proc, *needles):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [ln for ln in lines if ln.startswith("error: ")]
  assert len(errors) == 1, lines[-5:]
  for needle in needles:
    assert needle in errors[0], errors[0]


@pytest.mark.parametrize("args,needle", [
    (["--classes=7"], "outside the generator's 5 classes"),
    (["--classes=-1"], "outside the generator's 5 classes"),
    (["--psi=nan"], "psi must be a finite number"),
    (["--seeds=3-1"], "bad seed specification"),
    (["--batch=abc"], "--batch"),
])
def test_generate_refuses_bad_arguments(tmp_path, args, needle):
  out = tmp_path / "gen"
  proc = _run("experiments.generate", f"--generator={GENERATOR}", "--seeds=0-1", "--classes=0",
              f"--out={out}", *args)
  _assert_user_error(proc, needle)
  assert not out.exists()


def test_make_pairs_refuses_a_class_the_generator_lacks(tmp_path):
  out = tmp_path / "pairs"
  proc = _run("experiments.make_pairs", f"--generator={GENERATOR}", f"--classifier={CLASSIFIER}",
              "--classes=1,9", "--n_per_class=2", "--keep=all", f"--out={out}")
  _assert_user_error(proc, "class indices [9]")
  assert not out.exists()


def _pair_dir(path, rng, n=40, nan_rows=()):
  path.mkdir()
  w = rng.normal(size=(n, 4)).astype(np.float32)
  r = rng.normal(size=(n, 6)).astype(np.float32)
  for i in nan_rows:
    r[i, 2] = np.nan
  np.savez(path / "pairs.npz", w=w, r=r, class_idx=np.zeros(n, np.int32),
           z=np.zeros((n, 3), np.float32), logits=np.zeros((n, 2), np.float32),
           draw_idx=np.arange(n, dtype=np.int32))
  return path


def test_fit_link_refuses_nan_rows_and_foreign_out(tmp_path):
  rng = np.random.default_rng(0)
  bad = _pair_dir(tmp_path / "bad", rng, nan_rows=(38,))  # a held-out row (holdout 0.1)
  out = tmp_path / "link"
  proc = _run("experiments.fit_link", f"--pairs={bad}", f"--out={out}")
  _assert_user_error(proc, "non-finite", "rows [38]")
  assert not out.exists()
  good = _pair_dir(tmp_path / "good", rng)
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "thesis.txt").write_text("years of work")
  proc = _run("experiments.fit_link", f"--pairs={good}", f"--out={mine}")
  _assert_user_error(proc, "not a linkjax checkpoint")
  assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
  proc = _run("experiments.fit_link", f"--pairs={good}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN anywhere
  assert metrics["test_mse"] > 0 and metrics["n_test"] == 4


def test_classify_reports_unreadable_images(tmp_path):
  pngs = tmp_path / "pngs"
  pngs.mkdir()
  (pngs / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
  for images, needle in ((pngs, "not a readable image"), (tmp_path / "missing.npy",
                                                          "does not exist")):
    proc = _run("experiments.classify", f"--classifier={CLASSIFIER}", f"--images={images}",
                f"--out={tmp_path / 'cls.npz'}")
    _assert_user_error(proc, needle)
  assert not (tmp_path / "cls.npz").exists()
