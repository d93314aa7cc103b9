"""Turning launcher environment variables into a LaunchEnvironment (pure)."""

import pytest

from surge.config.environment import LaunchEnvironment, first_host, parse_launch_environment


def test_no_variables_is_one_process():
    assert parse_launch_environment({}) == LaunchEnvironment()


def test_torchrun_variables():
    env = {
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x",
    }
    got = parse_launch_environment(env)
    assert got == LaunchEnvironment("torchrun", 3, 8, 1, 2, 1, 4, "10.0.0.1", 29400)


def test_plain_rank_variables_default_to_one_machine():
    got = parse_launch_environment({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (got.source, got.local_rank, got.local_world_size, got.num_nodes, got.node_rank) == ("env", 1, 2, 1, 0)


def test_single_process_rank_variables_need_no_address():
    got = parse_launch_environment({"RANK": "0", "WORLD_SIZE": "1"})
    assert got.world_size == 1 and got.master_addr is None


@pytest.mark.parametrize(
    "env, words",
    [
        (
            {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            ["RANK=2", "WORLD_SIZE=2", "0 to 1"],
        ),
        ({"RANK": "x", "WORLD_SIZE": "2"}, ["RANK='x'", "not an integer"]),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, ["RANK=-1", ">= 0"]),
        ({"RANK": "0", "WORLD_SIZE": "0"}, ["WORLD_SIZE=0"]),
        ({"RANK": "0"}, ["WORLD_SIZE is not"]),
        ({"WORLD_SIZE": "2"}, ["RANK is not"]),
        ({"RANK": "0", "WORLD_SIZE": "2"}, ["MASTER_ADDR and MASTER_PORT", "not set"]),
        (
            {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
             "MASTER_PORT": "1"},
            ["LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"],
        ),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, ["MASTER_PORT=70000"]),
    ],
)
def test_inconsistent_variables_are_named(env, words):
    with pytest.raises(ValueError) as err:
        parse_launch_environment(env)
    for word in words:
        assert word in str(err.value)


def test_srun_step():
    env = {
        "SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456",
    }
    got = parse_launch_environment(env)
    assert got == LaunchEnvironment("slurm", 5, 8, 1, 4, 1, 2, "gpu07", 20000 + 123456 % 20000)


def test_srun_respects_master_variables():
    env = {
        "SLURM_PROCID": "0", "SLURM_STEP_ID": "3", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
        "SLURM_TASKS_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234",
    }
    got = parse_launch_environment(env)
    assert (got.world_size, got.local_world_size, got.master_addr, got.master_port) == (2, 2, "127.0.0.1", 1234)


def test_sbatch_script_without_srun_is_one_process():
    # Inside an sbatch script SLURM_NTASKS describes the allocation, not this process.
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1", "SLURM_NODEID": "0"}
    assert parse_launch_environment(env) == LaunchEnvironment()


def test_torchrun_inside_srun_wins():
    env = {
        "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1",
        "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "5", "TORCHELASTIC_RUN_ID": "r",
    }
    assert parse_launch_environment(env).source == "torchrun"


def test_open_mpi():
    env = {
        "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "node0",
    }
    got = parse_launch_environment(env)
    assert got == LaunchEnvironment("mpi", 3, 4, 1, 2, 1, 2, "node0", 29500)


def test_mpich_single_machine_uses_loopback():
    env = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    got = parse_launch_environment(env)
    assert (got.source, got.rank, got.world_size, got.master_addr, got.master_port) == ("mpi", 1, 2, "127.0.0.1", 29500)


def test_mpi_across_machines_needs_master_addr():
    env = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        parse_launch_environment(env)


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node1", "node1"),
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("a[1-2]-b[03-04]", "a1-b03"),
        ("x1,x2", "x1"),
        ("rack[3,5]", "rack3"),
    ],
)
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_first_host_rejects_garbage():
    with pytest.raises(ValueError, match="node list"):
        first_host("node[1-2")


def test_rank_exported_by_hand_on_several_machines():
    # `export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID ...` in an sbatch script: the node
    # count comes from SLURM, so the local size is 16 / 2 = 8, not 16.
    env = {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1",
           "SLURM_NNODES": "2"}
    got = parse_launch_environment(env)
    assert (got.local_world_size, got.num_nodes, got.node_rank, got.local_world_size_known) == (8, 2, 1, True)


def test_unknown_local_size_is_marked_as_a_guess():
    env = {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    got = parse_launch_environment(env)
    assert got.local_world_size_known is False and got.local_rank == 1
    with pytest.raises(ValueError, match="LOCAL_RANK=16 and WORLD_SIZE=16"):
        parse_launch_environment({**env, "LOCAL_RANK": "16"})
