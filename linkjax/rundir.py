"""Resumable output directories: a run record that a rerun must match.

Long jobs (pair generation, sweeps, the demo) store their arguments in a JSON record beside their
outputs. A rerun with the same arguments resumes; one with other arguments is refused, or, with
`overwrite`, the caller deletes the old outputs and starts again.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any


def must_overwrite(record_path: pathlib.Path, record: dict[str, Any], *, overwrite: bool,
                   what: str, error: type[Exception] = ValueError,
                   differ: str = "other arguments") -> bool:
  """Compares the stored run record at `record_path` with `record`.

  Args:
    record_path: the JSON record of a previous run (may be absent).
    record: this run's arguments.
    overwrite: whether a previous run with other arguments may be replaced.
    what: how the message names the directory's content, e.g. 'a pair run'.
    error: exception type raised when the records differ and `overwrite` is False.
    differ: how the message names the difference ('other arguments', 'other settings').

  Returns:
    True when a previous record exists, differs (or is unreadable) and `overwrite` is set: the
    caller must delete the old run's outputs. False when there is no record or it is equal.

  Raises:
    error: the records differ and `overwrite` is False; the message lists the differing keys with
      their (old, new) values.
  """
  if not record_path.exists():
    return False
  try:
    old = json.loads(record_path.read_text())
  except json.JSONDecodeError:
    old = None
  if old == record:
    return False
  if not overwrite:
    diff = ({k: (old.get(k), record.get(k)) for k in sorted(set(old) | set(record))
             if old.get(k) != record.get(k)} if isinstance(old, dict)
            else f"unreadable {record_path.name}")
    raise error(f"{record_path.parent} holds {what} with {differ} (old, new): {diff}. Use "
                "another output directory, or overwrite=True (--overwrite) to delete it and start "
                "again.")
  return True
