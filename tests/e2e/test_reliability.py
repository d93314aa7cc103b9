"""Failure, for real, under `surge launch`: a worker killed mid-run and restarted, a rank
that never joins a collective, what a single-machine job exposes to the network."""

import os
import re
import subprocess
import time

import pytest

from e2e_util import ROOT, SCRIPTS, clean_env

pytestmark = pytest.mark.e2e
PROBE = os.path.join(SCRIPTS, "resume_probe.py")


def launch(*args, timeout=300):
    return subprocess.run(["surge", "launch", *map(str, args)], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def checksum(result):
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"checksum=(\w+) seen=(\d+) lr=([\d.]+) iteration=\d+ restarts=(\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.groups()


@pytest.mark.parametrize("zero", [0, 3])
def test_a_killed_worker_is_restarted_and_resumes_exactly(tmp_path, zero):
    """Checkpoints every 2 optimizer steps; rank 1 is SIGKILLed once at micro-step 16
    (mid-epoch, 3 micro-steps after the newest checkpoint). With --max_restarts 1 the
    job restarts, `load_state(missing_ok=True)` resumes from that checkpoint (loader
    position included) and the final parameters are bit-identical to an uninterrupted
    run's."""
    common = ["--num_processes", 2, PROBE, "--zero", zero, "--save_every", 2, "--resume"]
    *full, restarts = checksum(launch(*common, "--project", tmp_path / "full"))
    assert restarts == "0"
    killed = launch("--max_restarts", 1, *common, "--project", tmp_path / "killed", "--kill_at", 16)
    *resumed, restarts = checksum(killed)
    assert os.path.exists(tmp_path / "killed" / "killed-once")
    assert restarts == "1", killed.stderr
    assert "restarting all 2 workers (restart 1 of 1)" in killed.stderr
    assert resumed == full


def test_without_restarts_a_killed_worker_fails_the_job(tmp_path):
    result = launch("--num_processes", 2, PROBE, "--project", tmp_path, "--save_every", 2, "--resume",
                    "--kill_at", 16)
    assert result.returncode == 128 + 9, result.stderr
    assert "rank 1 (local rank 1) was killed by signal SIGKILL" in result.stderr
