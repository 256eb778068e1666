"""Test set-up: 4 virtual CPU devices and strict dtype promotion."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  """The steering side's reference fixtures; skips when ../shared/fixtures is absent."""
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES} (../shared is absent in this clone)")
  return FIXTURES
