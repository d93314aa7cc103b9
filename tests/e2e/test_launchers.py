"""Real processes started the ways users start them: python, torchrun, srun-style and
mpirun-style environments, with no surge launcher involved."""

import os
import re
import subprocess

import pytest
import torch

from e2e_util import PYTHON, ROOT, SCRIPTS, clean_env, run
from surge.testing import free_port

pytestmark = pytest.mark.e2e


def _params(path):
    return torch.load(path, weights_only=True)


def test_quick_start_runs_as_plain_python(tmp_path):
    result = run([PYTHON, os.path.join(SCRIPTS, "four_lines.py"), str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert _params(tmp_path / "params-rank0.pt")["world_size"] == 1


def test_quick_start_under_torchrun_gives_identical_parameters(tmp_path):
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           os.path.join(SCRIPTS, "four_lines.py"), str(tmp_path)]
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    r0, r1 = _params(tmp_path / "params-rank0.pt"), _params(tmp_path / "params-rank1.pt")
    assert r0["world_size"] == r1["world_size"] == 2  # one job, not two independent copies
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])


def _start_pair(PYTHON, env_for_rank):
    procs = [
        subprocess.Popen([PYTHON, os.path.join(SCRIPTS, "report_topology.py")], cwd=ROOT, env=env_for_rank(rank),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    return [out.strip() for out, _ in outs]


def test_srun_style_environment_forms_one_job():
    port = free_port()

    def env(rank):
        return clean_env(SLURM_PROCID=rank, SLURM_LOCALID=rank, SLURM_STEP_ID=0, SLURM_STEP_NUM_TASKS=2,
                         SLURM_NTASKS=2, SLURM_STEP_TASKS_PER_NODE=2, SLURM_NODEID=0, SLURM_STEP_NUM_NODES=1,
                         SLURM_STEP_NODELIST="127.0.0.1", SLURM_JOB_ID=77, MASTER_PORT=port)

    assert _start_pair(PYTHON, env) == [
        "rank=0 world=2 local=0 backend=gloo sum=2",
        "rank=1 world=2 local=1 backend=gloo sum=2",
    ]


def test_mpirun_style_environment_forms_one_job():
    port = free_port()

    def env(rank):
        return clean_env(OMPI_COMM_WORLD_RANK=rank, OMPI_COMM_WORLD_SIZE=2, OMPI_COMM_WORLD_LOCAL_RANK=rank,
                         OMPI_COMM_WORLD_LOCAL_SIZE=2, MASTER_PORT=port)

    assert _start_pair(PYTHON, env)[1] == "rank=1 world=2 local=1 backend=gloo sum=2"


def test_inconsistent_launcher_variables_are_reported():
    result = run([PYTHON, os.path.join(SCRIPTS, "report_topology.py")], RANK=2, WORLD_SIZE=2,
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    assert result.returncode != 0
    assert "RANK=2 and WORLD_SIZE=2 are inconsistent" in result.stderr


def test_a_process_group_started_by_the_user_is_adopted():
    result = run([PYTHON, os.path.join(SCRIPTS, "spawned.py"), str(free_port())])
    assert result.returncode == 0, result.stderr
    assert sorted(re.findall(r"rank \d: world \d", result.stdout)) == ["rank 0: world 2", "rank 1: world 2"]
