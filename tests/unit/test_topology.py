"""Topology is a value: any job shape can be built without processes."""

import pytest

from surge.config.environment import LaunchEnvironment
from surge.device import choose_device
from surge.state import DistributedType, Topology, split_for_rank


def launch(world=1, rank=0, local_rank=0, local_world=1):
    return LaunchEnvironment("env" if world > 1 else "none", rank, world, local_rank, local_world, 0, 1,
                             "h" if world > 1 else None, 1 if world > 1 else None)


def test_eight_ranks_without_processes():
    t = Topology.from_launch(launch(8, 5, 5, 8), cuda_device_count=8)
    assert (t.device, t.backend, t.is_main_process, t.distributed_type) == (
        "cuda:5", "nccl", False, DistributedType.MULTI_GPU
    )


def test_cpu_job_uses_gloo():
    # Plain torchrun on a CPU-only machine is one distributed job of two processes.
    t = Topology.from_launch(launch(2, 1, 1, 2))
    assert (t.device, t.backend, t.distributed_type, t.is_last_process) == (
        "cpu", "gloo", DistributedType.MULTI_CPU, True
    )


def test_single_process_has_no_backend():
    t = Topology.from_launch(launch(), cuda_device_count=2)
    assert (t.device, t.backend, t.distributed_type) == ("cuda:0", None, DistributedType.NO)


def test_cpu_flag_wins_over_gpus():
    t = Topology.from_launch(launch(2, 0, 0, 2), cpu=True, cuda_device_count=2)
    assert (t.device, t.backend) == ("cpu", "gloo")


def test_nccl_without_gpu_is_refused():
    with pytest.raises(ValueError, match="backend='nccl' needs CUDA"):
        Topology.from_launch(launch(2, 0, 0, 2), backend="nccl")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend='ucc'"):
        Topology.from_launch(launch(2, 0, 0, 2), backend="ucc")


def test_device_choice():
    assert choose_device(local_rank=1, local_world_size=2, cpu=False, cuda_device_count=1) == "cuda:0"
    assert choose_device(local_rank=0, local_world_size=1, cpu=False, cuda_device_count=0, mps_available=True) == "mps"
    assert choose_device(local_rank=1, local_world_size=2, cpu=False, cuda_device_count=0, mps_available=True) == "cpu"
    with pytest.raises(ValueError, match="4 processes on this machine but only 2 GPUs"):
        choose_device(local_rank=3, local_world_size=4, cpu=False, cuda_device_count=2)


@pytest.mark.parametrize("n, shards", [(10, 3), (2, 4), (0, 2), (9, 3)])
def test_split_for_rank_covers_everything_once(n, shards):
    items = list(range(n))
    parts = [split_for_rank(items, shards, i) for i in range(shards)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_split_for_rank_padding_and_types():
    import torch

    parts = [split_for_rank(list(range(5)), 2, i, apply_padding=True) for i in range(2)]
    assert parts == [[0, 1, 2], [3, 4, 4]]
    t = split_for_rank(torch.arange(5), 2, 1, apply_padding=True)
    assert t.tolist() == [3, 4, 4]
    d = split_for_rank({"a": [1, 2, 3, 4], "b": ("x", "y", "z", "w")}, 2, 1)
    assert d == {"a": [3, 4], "b": ("z", "w")}
    assert split_for_rank(["only"], 2, 1, apply_padding=True) == ["only"]
    with pytest.raises(TypeError, match="cannot split a int"):
        split_for_rank(3, 2, 0)
    with pytest.raises(ValueError, match="one length"):
        split_for_rank({"a": [1], "b": [1, 2]}, 2, 0)


def test_guessed_local_size_only_checks_the_local_rank():
    guess = LaunchEnvironment("env", 9, 16, 1, 16, 0, 1, "h", 1, local_world_size_known=False)
    assert Topology.from_launch(guess, cuda_device_count=8).device == "cuda:1"
    with pytest.raises(ValueError, match="LOCAL_RANK=9 but only 8 GPUs"):
        choose_device(local_rank=9, local_world_size=16, cpu=False, cuda_device_count=8, local_world_size_known=False)
