"""Helpers for the end-to-end tests: run real commands with a clean launcher environment."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "tests", "e2e", "scripts")


def clean_env(**extra):
    """The current environment minus any launcher variables, plus ``extra``."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
            "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("SLURM_", "OMPI_", "PMI_", "MPI_LOCAL", "MV2_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, timeout=180, **extra_env):
    return subprocess.run(cmd, cwd=ROOT, env=clean_env(**extra_env), capture_output=True, text=True, timeout=timeout)


PYTHON = sys.executable


def launch_compare(script, lib, *args, timeout=300):
    """Run a differential script (tests/e2e/scripts/*_compare.py) on 2 processes under
    ``lib`` ("surge" or "accelerate"); returns the JSON its main process printed after "RESULT "."""
    import json

    result = subprocess.run(["surge", "launch", "--num_processes", "2", script, "--lib", lib, *args], cwd=ROOT,
                            env=clean_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))
