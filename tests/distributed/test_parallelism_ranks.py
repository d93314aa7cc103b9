"""Four gloo processes: ParallelismConfig's data-parallel meshes (HSDP under FSDP, DDP
without a plugin) build Accelerate's mesh and ranks and train like one process on the
same global batch."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from surge import Accelerator, DistributedType, FullyShardedDataParallelPlugin, ParallelismConfig
from surge.testing import distributed_test
from surge.testing.parity import TOLERANCE, BlockModel, make_dataset, max_difference, reference_run, surge_run

pytestmark = pytest.mark.distributed


def _parity(kwargs):
    data = make_dataset(64)
    ref = reference_run(data, 16, "no", model_fn=BlockModel)
    for steps in (1, 2):
        acc = Accelerator(gradient_accumulation_steps=steps, **kwargs())
        got = surge_run(acc, data, 16 // (4 * steps), model_fn=BlockModel)
        diff = max_difference(ref, got)
        assert diff <= TOLERANCE["no"], f"accumulation {steps}: {diff}"
    return acc


def check_hsdp_mesh_ranks_and_parity():
    acc = _parity(lambda: {"parallelism_config": ParallelismConfig(dp_replicate_size=2, dp_shard_size=2),
                           "fsdp_plugin": FullyShardedDataParallelPlugin()})
    rank = dist.get_rank()
    mesh = acc.torch_device_mesh
    assert mesh.mesh_dim_names == ("dp_replicate", "dp_shard"), mesh.mesh_dim_names
    assert mesh["dp"].size() == 4 and mesh["dp_shard_cp"].size() == 2 and mesh["dp_cp"].size() == 4
    assert (acc.data_parallel_rank, acc.data_parallel_shard_rank) == (rank // 2, rank % 2)
    assert (acc.tensor_parallel_rank, acc.context_parallel_rank) == (0, 0)
    assert acc.is_composable_parallelism_enabled and acc.distributed_type == DistributedType.FSDP
    assert acc.strategy.spec.hybrid and acc.strategy._mesh_shape() == (2, 2)
    assert acc.state.device_mesh is mesh


def check_all_ones_config_is_replication():
    pc = ParallelismConfig()
    acc = _parity(lambda: {"parallelism_config": pc})
    assert pc.dp_replicate_size == 1  # the user's object is not changed; the Accelerator's copy is
    assert acc.parallelism_config.dp_replicate_size == 4
    assert acc.torch_device_mesh.mesh_dim_names == ("dp_replicate",)
    assert acc.data_parallel_rank == dist.get_rank() and acc.data_parallel_shard_rank == 0
    assert acc.distributed_type == DistributedType.MULTI_CPU and not acc.is_composable_parallelism_enabled


def check_sizes_that_do_not_fit_fail_at_construction():
    for pc, words in ((ParallelismConfig(dp_shard_size=2), "dp_shard_size=2 x tp_size=1"),
                      (ParallelismConfig(dp_replicate_size=2, dp_shard_size=2, cp_size=2),
                       "dp_shard_size=2 x tp_size=1 x cp_size=2"),
                      (ParallelismConfig(dp_shard_size=2, tp_size=2), "fsdp_plugin")):
        try:
            Accelerator(parallelism_config=pc)
        except ValueError as error:
            assert words in str(error), error
        else:
            raise AssertionError(f"{pc} was accepted on 4 processes")


CHECKS = [check_hsdp_mesh_ranks_and_parity, check_all_ones_config_is_replication,
          check_sizes_that_do_not_fit_fail_at_construction]

test_four_processes = distributed_test(CHECKS, world_size=4)
