"""The accelerator suite runs on CPU at its small sizes and writes its JSON (CI's check)."""

import json
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_runs_on_cpu(tmp_path):
  out = tmp_path / "suite.json"
  proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", str(out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=480)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = json.loads(out.read_text())
  assert records[0]["backend"] == "cpu" and records[0]["small"]
  items = [r["item"] for r in records[1:]]
  assert items == ["generator 32px float32", "generator 32px bfloat16", "classifier 64px",
                   "sweep chunk", "counterfactual batch (20 steps)"]
  for r in records[1:]:
    assert r["images_per_s"] > 0 and r["compile_s"] > 0 and r["flops_per_call"] > 0
    assert r["bf16_roofline_fraction"] is None  # unknown peak on a CPU
