"""Running absl binaries: expected errors are one line and exit status 2.

A wrong file, a bad argument or a conflicting output directory is the user's to fix: the binary
prints `error: <what is wrong and what to do>` and exits with status 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from linkjax import jobs

# Exceptions that describe a problem with the user's input or files (our error types derive
# from these: CheckpointError, FileError, PairsError, TorchFileError, ConversionError, ...).
EXPECTED: tuple[type[BaseException], ...] = (ValueError, jobs.JobError, FileNotFoundError,
                                             NotADirectoryError, IsADirectoryError,
                                             PermissionError)


def run(main: Callable[[Sequence[str]], Any]) -> None:
  """`absl.app.run(main)`, with expected errors reported as one `error:` line and exit 2."""

  def checked(argv: Sequence[str]) -> Any:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    try:
      return main(argv)
    except EXPECTED as e:
      message = str(e).strip() or type(e).__name__
      sys.stderr.write(f"error: {message}\n")
      sys.stderr.flush()
      sys.exit(2)

  app.run(checked, flags_parser=_parse_flags)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a bad flag reported as one `error:` line and exit 2."""
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    sys.stderr.write(f"error: {e} (see --help)\n")
    sys.stderr.flush()
    sys.exit(2)


def parse_ranges(spec: str, what: str = "indices") -> list[int]:
  """'0-3,7' -> [0, 1, 2, 3, 7]: comma-separated integers and inclusive ranges, in order.

  Raises:
    ValueError: an empty specification, a part that is not an integer or range, or a range whose
      end is below its start (one line naming the part).
  """
  out: list[int] = []
  for part in spec.split(","):
    part = part.strip()
    if not part:
      continue
    m = re.fullmatch(r"(\d+)-(\d+)", part)
    if m:
      lo, hi = int(m.group(1)), int(m.group(2))
      if hi < lo:
        raise ValueError(f"bad {what} specification {part!r} in {spec!r}: empty range")
      out.extend(range(lo, hi + 1))
      continue
    try:
      out.append(int(part))
    except ValueError:
      raise ValueError(f"bad {what} specification {part!r} in {spec!r}: not an integer or an "
                       "inclusive range a-b") from None
  if not out:
    raise ValueError(f"no {what} in {spec!r}")
  return out


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes, --process_id, --distributed_auto (JAX's
  multi-controller runtime; see `jobs.initialize_distributed`)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator, to "
                      "run the job as several processes (with --num_processes, --process_id); "
                      "every process must see the same output directory.")
  flags.DEFINE_integer("num_processes", None, "Processes of the job (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, --num_processes).")
  flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (SLURM, Cloud TPU) "
                    "and start its multi-controller runtime.")


def initialize_distributed() -> jobs.Processes:
  """`jobs.initialize_distributed` from the flags of `define_distributed_flags`."""
  f = flags.FLAGS
  return jobs.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                     auto=f.distributed_auto)


def require(alternative: str, **values: Any) -> None:
  """Raises ValueError naming every flag in `values` that is unset (`alternative`: what may
  replace them, e.g. '--toy_world')."""
  missing = [f"--{k}" for k, v in values.items() if not v]
  if missing:
    raise ValueError(f"{', '.join(missing)} required (or {alternative})")


def log_flags(module_name: str) -> None:
  """Logs the values of the flags a binary defines (its run's arguments, for the log)."""
  logging.info("flags: %s", {f.name: f.value
                             for f in flags.FLAGS.get_key_flags_for_module(module_name)})
