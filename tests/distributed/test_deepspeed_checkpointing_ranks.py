"""Two gloo processes: a Megatron-style model that calls surge.checkpointing.checkpoint
(deepspeed.checkpointing) around its blocks trains like the plain model, under DDP
(ZeRO-0) and ZeRO-3 (FSDP2), with and without cpu_checkpointing."""

from __future__ import annotations

import pytest
import torch

import surge
from surge import Accelerator, DeepSpeedPlugin
from surge.testing import distributed_test
from surge.testing.parity import TOLERANCE, BlockModel, make_dataset, max_difference, reference_run, surge_run

pytestmark = pytest.mark.distributed


class CheckpointedBlockModel(BlockModel):
    """BlockModel (the same weights) with each block in a checkpointed region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + surge.checkpointing.checkpoint(block, h)
        out: torch.Tensor = self.out(h)
        return out


def _parity(stage: int, cpu_checkpointing: bool) -> None:
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "zero_optimization":
              {"stage": stage}, "activation_checkpointing": {"cpu_checkpointing": cpu_checkpointing}}
    surge.checkpointing.configure(None, deepspeed_config=config)
    calls = []
    data = make_dataset(64)
    reference = reference_run(data, 16, "no", model_fn=BlockModel)
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))

    def model_fn() -> CheckpointedBlockModel:
        model = CheckpointedBlockModel()
        model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # (the recomputation may stop early)
        return model

    got = surge_run(acc, data, 4, model_fn=model_fn)
    assert max_difference(reference, got) <= TOLERANCE["no"], (stage, cpu_checkpointing)
    assert len(calls) == 2 * 64 // 2 // 4  # every micro-batch: once in forward, once again in backward
    surge.checkpointing.configure(None)


def check_checkpointed_model_under_ddp():
    _parity(0, cpu_checkpointing=False)


def check_checkpointed_model_under_zero3_with_cpu_checkpointing():
    _parity(3, cpu_checkpointing=True)


CHECKS = [check_checkpointed_model_under_ddp, check_checkpointed_model_under_zero3_with_cpu_checkpointing]

test_two_processes = distributed_test(CHECKS, world_size=2)
