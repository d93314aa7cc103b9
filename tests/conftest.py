"""Every test must leave the process as it found it: no changed environment
variables, no process group left running and no temporary files left behind
(ARCHITECTURE principle 8)."""

from __future__ import annotations

import atexit
import getpass
import os
import re
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The session's temporary directory (TMPDIR, so launched processes use it too), removed
# at exit: what a test leaves in it is a leak, and a run leaves nothing in /tmp.
TMP = tempfile.mkdtemp(prefix="surge-tests-")
atexit.register(shutil.rmtree, TMP, True)
# torch.compile's caches (compiled kernels, precompiled headers) stay where they would be
# without TMPDIR below, so they are reused from run to run: the link goes with TMP.
_INDUCTOR = "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())  # torch's own name
try:
    os.makedirs(os.path.join(tempfile.gettempdir(), _INDUCTOR), exist_ok=True)
    os.symlink(os.path.join(tempfile.gettempdir(), _INDUCTOR), os.path.join(TMP, _INDUCTOR))
except OSError:  # no shared cache then: torch makes its own under TMP
    pass
os.environ["TMPDIR"] = tempfile.tempdir = TMP
# No test may read the config file of the person running the tests: point the cache
# (where `surge config` writes by default) at an empty directory for the whole session.
os.environ["XDG_CACHE_HOME"] = os.path.join(TMP, "xdg-cache")
os.mkdir(os.environ["XDG_CACHE_HOME"])
os.environ.pop("SURGE_CONFIG_FILE", None)
# Temporary entries that are not the tests' leaks: the cache above, pytest's tmp_path
# roots (pytest cleans them), torch.compile's caches (and torch's "cache" directory),
# wandb's per-process directories (removed when the process exits) and the log directory
# torch's elastic agent makes under plain `torchrun` (torch never removes it) and the log
# directory a failed `surge launch` keeps for the user to read (it removes it after a
# success, tests/e2e/test_launch_report.py checks). All go with TMP at exit.
_TMP_OWN = ("xdg-cache", "cache", "pytest-of-", "torchinductor_", "torchelastic_", "surge-logs-")


def _is_own(name: str) -> bool:
    return name.startswith(_TMP_OWN) or "wandb" in name


# Set by PyTorch itself on first use (torch.compile's caches), not by the code under test.
_TORCH_OWN = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
              "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"}


def pytest_collection_modifyitems(items):
    # The selected 2-process checks of all modules run in one spawn (surge.testing).
    from surge.testing.harness import share_spawns

    share_spawns(items)


@pytest.fixture(autouse=True)
def _no_leaks():
    before = dict(os.environ)
    files_before = set(os.listdir(TMP))
    yield
    leaked = sorted(n for n in set(os.listdir(TMP)) - files_before if not _is_own(n))
    for name in leaked:
        path = os.path.join(TMP, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
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
    if leaked:
        pytest.fail(f"test left temporary files behind: {leaked}")
