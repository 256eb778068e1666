"""The sweep planner: image and chunk counts, XLA FLOPs, and an estimate from measured chunks."""

import dataclasses

import pytest

from linkjax import jobs, plan, testing


def test_plan_counts_flops_and_estimate():
  models = testing.ToySweep(r_dim=12)
  p = plan.plan_sweep(models, models.params(), r_dim=12, n_samples=6, n_units=12, steps=3,
                      chunk=10, processes=1, timed_chunks=2, mesh=jobs.data_mesh(4))
  assert p.chunk == 12 and p.devices == 4  # rounded up to the device count
  assert p.images == 6 * 12 * 3 + 6 and p.chunks == -(-216 // 12) + 1
  assert p.gflop_per_image > 0 and p.s_per_chunk > 0
  assert p.estimate_s == pytest.approx(p.compile_s + p.chunks * p.s_per_chunk)
  two = dataclasses.replace(p, processes=2)
  assert two.estimate_s == pytest.approx(p.compile_s + p.chunks * p.s_per_chunk / 2)
  assert any("estimated time" in line for line in p.lines())
