"""Two gloo processes: checkpoints written by DeepSpeed (its exact layout, by
tests/deepspeed_layout.py) at world sizes 1, 2 and 3 and ZeRO stages 0-3, resumed by a
surge engine on 2 processes under another ZeRO stage, then trained on: weights, lr,
counters and client_state as saved, and two more steps equal to plain PyTorch's."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

import surge
from deepspeed_layout import WARMUP, Net, batch, groups, trained_run, warmup_lr, write_checkpoint
from surge.ops import broadcast_object_list
from surge.testing import distributed_test

pytestmark = pytest.mark.distributed

# (saved: ZeRO stage, world size, precision, layout options) -> surge's zero_optimization
CASES = [
    ((3, 1, "bf16", {}), {"stage": 3}),
    ((2, 3, "fp16", {"elastic": True}), {"stage": 2}),
    ((1, 2, "fp32", {}), {"stage": 1}),
    ((0, 1, "fp16", {}), {"stage": 0}),
    ((3, 3, "fp32", {"sub_group_size": 20}), {"stage": 0}),
    ((2, 1, "bf16", {"round_robin": True}), {"stage": 3, "offload_optimizer": {"device": "cpu"}}),
]


def _full_state(engine) -> dict[str, torch.Tensor]:
    state = engine.accelerator.get_state_dict(engine.module)  # collective; full on rank 0
    return broadcast_object_list([state if dist.get_rank() == 0 else None])[0]


def check_deepspeed_checkpoints_resume_at_another_world_size():
    run = trained_run()
    rank = dist.get_rank()
    for (stage, world, precision, options), zero in CASES:
        case = f"DeepSpeed ZeRO-{stage} x{world} {precision} {options} -> surge {zero}"
        directory = broadcast_object_list([tempfile.mkdtemp() if rank == 0 else None])[0]
        if rank == 0:
            write_checkpoint(directory, run, stage=stage, world=world, precision=precision, **options)
        dist.barrier()
        torch.manual_seed(1)
        model = Net()
        config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": zero,
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
                  "scheduler": {"type": "WarmupLR", "params": WARMUP}}
        engine, *_ = surge.initialize(model=model, model_parameters=groups(model), config=config)
        _, client = engine.load_checkpoint(directory)
        full = _full_state(engine)
        for name, value in run.model.state_dict().items():
            assert torch.equal(full[name], value), (case, name)
        assert engine.get_lr() == [warmup_lr(2)] * 2, case
        assert (engine.global_steps, client["epoch"], client["note"]) == (3, 1, "mid-epoch"), case

        reference = copy.deepcopy(run.model)
        ref_opt = torch.optim.AdamW(groups(reference), lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
        ref_opt.load_state_dict(run.optimizer.state_dict())
        for i in range(2):
            x, y = batch(200 + i)  # the global batch of 8; each process trains on its half
            nn.functional.mse_loss(reference(x), y).backward()
            ref_opt.step()
            ref_opt.zero_grad()
            for g in ref_opt.param_groups:
                g["lr"] = warmup_lr(3 + i)
            mine = slice(4 * rank, 4 * rank + 4)
            engine.backward(nn.functional.mse_loss(engine(x[mine]), y[mine]))
            engine.step()
        full = _full_state(engine)
        for name, value in reference.state_dict().items():
            assert torch.allclose(full[name], value, rtol=0, atol=1e-6), (case, name, (full[name] - value).abs().max())
        assert engine.get_lr() == [warmup_lr(4)] * 2 and engine.global_steps == 5, case
        engine.accelerator.wait_for_everyone()
        if rank == 0:
            import shutil

            shutil.rmtree(directory)


CHECKS = [check_deepspeed_checkpoints_resume_at_another_world_size]

test_two_processes = distributed_test(CHECKS, world_size=2)
