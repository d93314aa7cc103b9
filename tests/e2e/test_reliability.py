"""Failure, for real, under `surge launch`: a worker killed mid-run and restarted, a rank
that never joins a collective, what a single-machine job exposes to the network."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from e2e_util import ROOT, SCRIPTS, clean_env
from surge.testing.harness import free_port

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
def test_a_killed_worker_is_restarted_and_resumes_exactly(reference_runs, tmp_path, zero):
    """Checkpoints every 2 optimizer steps; rank 1 is SIGKILLed once at micro-step 16
    (mid-epoch, 3 micro-steps after the newest checkpoint). With --max_restarts 1 the
    job restarts, `load_state(missing_ok=True)` resumes from that checkpoint (loader
    position included) and the final parameters are bit-identical to an uninterrupted
    run's (the shared reference run, conftest.py)."""
    *full, restarts = checksum(reference_runs.run("--zero", zero)[0])
    assert restarts == "0"
    killed = launch("--max_restarts", 1, "--num_processes", 2, PROBE, "--zero", zero, "--save_every", 2, "--resume",
                    "--project", tmp_path / "killed", "--kill_at", 16)
    *resumed, restarts = checksum(killed)
    assert os.path.exists(tmp_path / "killed" / "killed-once")
    assert restarts == "1", killed.stderr
    assert "restarting all 2 workers (restart 1 of 1)" in killed.stderr
    assert resumed == full


def test_two_machines_restart_together_and_resume_exactly(reference_runs, tmp_path):
    """Two machines (one process each, on localhost): machine 1's worker is SIGKILLed;
    both agents enter the next rendezvous round together and the run ends bit-identical
    to an uninterrupted one."""
    common = [PROBE, "--save_every", 2, "--resume"]
    *full, _ = checksum(reference_runs.run("--zero", 0)[0])
    port = str(free_port())
    machines = [subprocess.Popen(["surge", "launch", "--num_machines", "2", "--num_processes", "2",
                                  "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--machine_rank",
                                  str(rank), "--max_restarts", "1", *map(str, common), "--project",
                                  str(tmp_path / "killed"), "--kill_at", "16"], cwd=ROOT, env=clean_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [m.communicate(timeout=180) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outs
    assert "restarting all 2 workers (restart 1 of 1)" in outs[1][1]
    match = re.search(r"checksum=(\w+) seen=(\d+) lr=([\d.]+)", outs[0][0])
    assert match and list(match.groups()) == full, outs[0]


def test_without_restarts_a_killed_worker_fails_the_job(tmp_path):
    result = launch("--num_processes", 2, PROBE, "--project", tmp_path, "--save_every", 2, "--resume",
                    "--kill_at", 16)
    assert result.returncode == 128 + 9, result.stderr
    assert "rank 1 (local rank 1) was killed by signal SIGKILL" in result.stderr


HANGS = os.path.join(SCRIPTS, "skips_collective.py")


@pytest.mark.parametrize("where, collective", [("barrier", "barrier at skips_collective.py:"),
                                               ("backward", "the gradient all-reduce of backward() at ")])
def test_a_rank_that_skips_a_collective_is_named_within_the_timeout(where, collective):
    """Rank 1 never joins a collective rank 0 waits in: with --collective_timeout 5 the
    launch fails within timeout + 30 s of rank 0 entering the collective (process
    start-up is not counted; the 30 s leave room for a loaded machine), naming the
    collective, rank 1 and where it is, with both ranks' stacks."""
    result = launch("--num_processes", 2, "--collective_timeout", 5, HANGS, "--where", where, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 5 <= _seconds_since_rank_0_waited(result) < 5 + 30
    err = result.stderr
    assert f"surge: collective timeout: {collective}" in err, err
    assert "rank 1 never arrived (rank 1 is at skips_collective.py:" in err and "waiting: rank 0" in err
    assert "--- rank 0: waiting in " in err and "--- rank 1: never arrived" in err
    assert "time.sleep(90)" in err  # rank 1's own stack, read while it was stuck
    assert re.search(r"surge launch: rank 0 \(local rank 0\) failed: CollectiveTimeout: .*rank 1 never arrived", err)
    assert "finished" not in result.stdout


def _seconds_since_rank_0_waited(result):
    """Seconds from rank 0 entering the collective (the script prints the moment) to now,
    just after the launch returned."""
    now = time.time()
    match = re.search(r"waiting since ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return now - float(match.group(1))


def test_the_diagnosis_works_under_torchrun_with_the_config_timeout(tmp_path):
    """Not launched by surge (torchrun, no bootstrap): the report comes from surge's
    exception hook; the timeout from the config file's collective_timeout."""
    (tmp_path / "config.yaml").write_text("collective_timeout: 4\n")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", HANGS],
                            cwd=ROOT, env=clean_env(SURGE_CONFIG_FILE=tmp_path / "config.yaml"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert 4 <= _seconds_since_rank_0_waited(result) < 4 + 30
    assert "barrier at skips_collective.py:" in result.stderr and "rank 1 never arrived" in result.stderr, \
        result.stderr


def test_a_single_machine_job_listens_on_loopback_only():
    """The rendezvous store, the per-round worker store and gloo's own sockets of a
    one-machine job accept connections from this machine only (torch's TCPStore binds
    every interface by default)."""
    result = launch("--num_processes", 2, os.path.join(SCRIPTS, "listening.py"), timeout=120)
    assert result.returncode == 0, result.stderr
    addresses = json.loads(re.search(r"listening=(.*)", result.stdout).group(1))
    assert addresses and set(addresses) <= {"127.0.0.1", "::1"}, addresses


def test_a_multi_machine_job_listens_where_asked(tmp_path):
    """Machine 0 of a two-machine job binds main_process_ip, not every interface (both
    machines on this host here, so 127.0.0.2 stands for the address that was asked)."""
    probe = os.path.join(SCRIPTS, "listening.py")
    port = str(free_port())
    common = ["launch", "--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.2",
              "--main_process_port", port]
    machines = [subprocess.Popen(["surge", *common, "--machine_rank", str(rank), probe], cwd=ROOT,
                                 env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    outs = [m.communicate(timeout=120) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outs
    addresses = json.loads(re.search(r"listening=(.*)", outs[0][0]).group(1))
    assert "127.0.0.2" in addresses and "0.0.0.0" not in addresses and "::" not in addresses, addresses
