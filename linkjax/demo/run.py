"""Running the demo: stages in order, each resumable, then report.html and summary.json."""

from __future__ import annotations

import os
import pathlib
import resource
import time
from collections.abc import Callable
from typing import Any

from absl import logging

from linkjax import cli, files, jobs
from linkjax.demo import config as config_lib
from linkjax.demo import report, stages
from linkjax.demo.config import DemoConfig
from linkjax.miniworld import validate as validate_lib

DONE = "DONE.json"
STAGES = tuple(stages.STAGES)
OUTPUTS = (*STAGES, "report.html", "summary.json")


class QualityError(RuntimeError):
  """A miniworld quality number is below its threshold."""


def _cpu_seconds() -> float:
  ru = resource.getrusage(resource.RUSAGE_SELF)
  return ru.ru_utime + ru.ru_stime


def _stage(ctx: stages.Context, name: str) -> dict[str, Any]:
  d = ctx.out / name
  marker = d / DONE
  if marker.exists():
    ctx.log(f"[{name}] already done, skipping (delete {marker} to redo it)")
    return files.read_json(marker)
  d.mkdir(parents=True, exist_ok=True)
  ctx.log(f"[{name}] starting")
  t0, c0 = time.time(), _cpu_seconds()
  res = files.json_safe(stages.STAGES[name](ctx, d))
  res["_timing"] = {"wall_s": time.time() - t0, "cpu_s": _cpu_seconds() - c0}
  files.write_json(marker, res)
  ctx.log(f"[{name}] done in {res['_timing']['wall_s']:.1f} s wall, "
          f"{res['_timing']['cpu_s']:.1f} s CPU")
  return res


def check_planted_swept(cfg: DemoConfig, planted: tuple[tuple[int, str], ...]) -> None:
  """Fails before any stage runs when the sweep leaves out a planted unit (validate needs all).

  Raises:
    ValueError: naming the planted units `cfg.sweep.units` does not include.
  """
  spec = cfg.sweep.units.strip()
  if not planted or spec == "all":
    return
  swept = set(cli.parse_ranges(spec, "unit"))
  missing = [u for u, _ in planted if u not in swept]
  if missing:
    raise ValueError(f"the classifier has planted units {missing} that the sweep's units "
                     f"{spec!r} leave out; the validate stage needs every planted unit swept "
                     "(add them, or sweep 'all')")


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
             log: Callable[[str], None] = logging.info,
             only: tuple[str, ...] | None = None) -> dict[str, Any]:
  """Runs every stage (skipping finished ones), writes report.html and summary.json.

  Args:
    cfg: the run's settings.
    out_dir: output directory (created; a `jobs.RunDir` of kind 'demo').
    overwrite: delete an existing run with other settings in `out_dir` instead of refusing.
    log: progress sink.
    only: run only these stages (in `STAGES` order; the planted-truth benchmark's subset);
      None: all. Which stages ran does not change any stage's output, so it is not part of the
      run's identity: a later run with all stages finds these done.
  Returns:
    The summary dict (summary.json).
  Raises:
    QualityError: `cfg.check_quality` and a quality number misses its threshold.
  """
  out = pathlib.Path(out_dir)
  unknown = sorted(set(only or ()) - set(STAGES))
  if unknown:  # checked before the run directory exists
    raise ValueError(f"unknown stages {unknown}; stages: {list(STAGES)}")
  if cfg.miniworld and (only is None or "validate" in only):  # before the run directory exists
    check_planted_swept(cfg, validate_lib.read_planted(cfg.paths()["classifier"]))
  with jobs.RunDir(out, "demo", config_lib.record(cfg), OUTPUTS, overwrite=overwrite):
    ctx = stages.Context(cfg, out, log)
    t0, c0 = time.time(), _cpu_seconds()
    results: dict[str, dict[str, Any]] = {}
    for name in STAGES:
      if only is not None and name not in only:
        continue
      if name in stages.WORLD_STAGES and not cfg.miniworld:
        log(f"[{name}] skipped: external checkpoints have no renderer ground truth")
        continue
      if name == "validate" and not (cfg.miniworld and ctx.planted):
        continue  # only a miniworld classifier with planted units has an answer to check
      results[name] = _stage(ctx, name)
    summary = report.build_summary(ctx, results)
    summary["this_process"] = {"wall_s": time.time() - t0, "cpu_s": _cpu_seconds() - c0}
    files.write_json(out / "summary.json", summary)
    path = report.write_report(ctx, results, summary)
  log(f"wrote {path} and {out / 'summary.json'} (stages {summary['total_wall_s']:.0f} s wall, "
      f"{summary['total_cpu_s']:.0f} s CPU in total; this process "
      f"{summary['this_process']['wall_s']:.0f} s)")
  for k, v in summary["quality_checks"].items():
    log(f"quality {k}: {v['value']} (threshold {v['threshold']}) "
        f"{'pass' if v['passed'] else 'FAIL'}")
  failed = {k: v for k, v in summary["quality_checks"].items() if not v["passed"]}
  if cfg.check_quality and failed:
    raise QualityError("quality checks failed: " + "; ".join(
        f"{k} = {v['value']} (threshold {v['threshold']})" for k, v in failed.items()))
  return summary
