"""`surge launch` when a rank fails (what is printed, what is kept in the log files) and
the launch options that shape the workers (tee, log_dir, role, debug,
num_cpu_threads_per_process, no_python), run for real: four launches, three of them of
2 processes."""

import glob
import os
import re
import stat
import subprocess

import pytest

from e2e_util import ROOT, SCRIPTS, clean_env

pytestmark = pytest.mark.e2e
RAISES = os.path.join(SCRIPTS, "raises_in_a_function.py")


def surge(*args, **env):
    return subprocess.run(["surge", *map(str, args)], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True,
                          timeout=180)


def _named_log(result):
    """The log file the launcher's last line names."""
    last = result.stderr.strip().splitlines()[-1]
    match = re.search(r"full traceback in (\S+?)\)$", last)
    assert match, result.stderr
    return match.group(1)


def test_a_failing_rank_shows_the_users_frames_and_keeps_the_full_traceback(tmp_path):
    result = surge("launch", "--num_processes", 2, RAISES, TMPDIR=tmp_path)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    # The user's own frames and the error, once...
    assert err.count("[rank1]: Traceback (most recent call last):") == 1, err
    assert 'raises_in_a_function.py", line 17, in <module>' in err
    assert 'raises_in_a_function.py", line 12, in check_batch' in err
    assert err.count("[rank1]: ValueError: bad batch on rank 1") == 1
    # ... without the launcher's frames, nor rank 0's traceback of losing rank 1 mid-collective
    # (when rank 0 got that far before the agent stopped it: one line).
    for launcher in ("runpy", "bootstrap.py", os.path.join("torch", "distributed", "elastic")):
        assert launcher not in err, err
    assert "[rank0]: Traceback" not in err and "Connection closed by peer" not in err, err
    assert all("lost a peer (a consequence of another rank's failure); full traceback in" in line
               for line in err.splitlines() if line.startswith("[rank0]:")), err
    # The last line names the failed rank and the file with the full text, which stays.
    assert err.strip().splitlines()[-1].startswith(
        "surge launch: rank 1 (local rank 1) failed: ValueError: bad batch on rank 1 (full traceback in ")
    log = _named_log(result)
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/surge-logs-\w+/rank1\.log", log), log
    full = open(log).read()
    assert "bootstrap.py" in full and "runpy" in full and "in check_batch" in full
    assert full.rstrip().endswith("ValueError: bad batch on rank 1")
    assert os.listdir(tmp_path) == [os.path.basename(os.path.dirname(log))]  # the job's launch files are gone


def test_quiet_prints_the_exception_line_and_tee_copies_into_log_dir(tmp_path):
    """``-q``: the failing rank prints its exception line only. ``--tee 3 --log_dir``: each
    worker's output is also in <log_dir>/surge-<id>/attempt_0/<local rank>/, next to the
    failure logs; ``--role`` names the workers (torch prefixes tee'd lines with it)."""
    result = surge("launch", "--num_processes", 2, "-q", "--tee", 3, "--log_dir", tmp_path / "logs", "--role",
                   "trainer", os.path.join(SCRIPTS, "cli_probe.py"), "--fail-rank", 1, TMPDIR=tmp_path)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "Traceback" not in err and "File " not in err, err
    assert "[trainer1]:[rank1]: RuntimeError: deliberate failure on rank 1" in err
    assert err.strip().splitlines()[-1].startswith(
        "surge launch: rank 1 (local rank 1) failed: RuntimeError: deliberate failure on rank 1 (full traceback in ")
    (job,) = glob.glob(str(tmp_path / "logs" / "surge-*"))
    assert _named_log(result) == os.path.join(job, "rank1.log")
    assert "Traceback (most recent call last)" in open(os.path.join(job, "rank1.log")).read()
    outputs = [open(os.path.join(job, "attempt_0", str(r), "stdout.log")).read() for r in (0, 1)]
    assert [re.findall(r"rank=(\d) world=2", out) for out in outputs] == [["0"], ["1"]]
    assert "RuntimeError: deliberate failure" in open(os.path.join(job, "attempt_0", "1", "stderr.log")).read()
    assert os.listdir(tmp_path) == ["logs"]  # no temporary log directory besides the one asked for


def _program(tmp_path):
    """A program, not a Python script, that reports what its launcher set."""
    path = tmp_path / "report.sh"
    path.write_text('#!/bin/sh\necho "rank=${RANK:-none} omp=$OMP_NUM_THREADS debug=$TORCH_DISTRIBUTED_DEBUG '
                    'role=$ROLE_NAME args=$*"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_no_python_programs_get_the_workers_settings(tmp_path):
    """``--no_python`` runs the program on each rank; ``--debug`` and
    ``--num_cpu_threads_per_process`` reach its environment; a successful job leaves no
    log directory behind."""
    program = _program(tmp_path)
    work = tmp_path / "tmp"
    work.mkdir()
    result = surge("launch", "--num_processes", 2, "--no_python", "--debug", "--num_cpu_threads_per_process", 2,
                   "--role", "trainer", program, "a", TMPDIR=work)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [f"rank={r} omp=2 debug=DETAIL role=trainer args=a" for r in (0, 1)]
    assert os.listdir(work) == []
    one = surge("launch", "--no_python", "--num_cpu_threads_per_process", 3, program, "b", TMPDIR=work)
    assert one.returncode == 0, one.stderr
    assert one.stdout == "rank=none omp=3 debug= role= args=b\n"  # one process runs as it is, no agent
    assert os.listdir(work) == []
