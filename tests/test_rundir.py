"""Run records of resumable output directories."""
import json

import pytest

from linkjax import rundir


def test_must_overwrite_compares_records(tmp_path):
  path = tmp_path / "run.json"
  rec = {"seed": 0, "classes": [1, 2]}
  assert not rundir.must_overwrite(path, rec, overwrite=False, what="a run")  # no record yet
  path.write_text(json.dumps(rec))
  assert not rundir.must_overwrite(path, rec, overwrite=False, what="a run")  # same arguments
  other = {"seed": 1, "classes": [1, 2]}
  with pytest.raises(KeyError, match=r"holds a run with other arguments .*'seed': \(0, 1\)"):
    rundir.must_overwrite(path, other, overwrite=False, what="a run", error=KeyError)
  assert rundir.must_overwrite(path, other, overwrite=True, what="a run")
  path.write_text("{not json")
  with pytest.raises(ValueError, match="other settings.*unreadable run.json"):
    rundir.must_overwrite(path, rec, overwrite=False, what="a run", differ="other settings")
  assert rundir.must_overwrite(path, rec, overwrite=True, what="a run")
