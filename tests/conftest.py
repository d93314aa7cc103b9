"""Every test must leave the process as it found it: no changed environment
variables and no process group left running (ARCHITECTURE principle 8)."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# No test may read the config file of the person running the tests: point the cache
# (where `surge config` writes by default) at an empty directory for the whole session.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="surge-tests-cache-")
os.environ.pop("SURGE_CONFIG_FILE", None)
# Set by PyTorch itself on first use (torch.compile's caches), not by the code under test.
_TORCH_OWN = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
              "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"}


@pytest.fixture(autouse=True)
def _no_leaks():
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    changed = sorted(
        k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in _TORCH_OWN
    )
    if changed:
        for k in changed:
            if k in before:
                os.environ[k] = before[k]
            else:
                os.environ.pop(k, None)
        pytest.fail(f"test leaked environment variables: {changed}")
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            pytest.fail("test left a torch.distributed process group running")
