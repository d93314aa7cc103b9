"""Numerical parity: a prepared training run against a single-process reference on
the same global batch (ARCHITECTURE principle 7).

The reference is plain PyTorch on one process with batches of the *global* size, in
the same number format (autocast, and a static loss scale for fp16 that matches the
scaler's initial scale, so no step overflows). SGD with momentum is used on purpose:
unlike Adam it is sensitive to the scale of the gradients, so a wrong loss division
or scaling shows up as a parameter difference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 8
LR = 0.05
MOMENTUM = 0.9
FP16_SCALE = 2.0**10

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_dataset(n: int, seed: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def make_model(seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


class BlockModel(nn.Module):
    """A stack of repeated blocks in a ModuleList, like a transformer: what sharding
    strategies wrap block by block."""

    def __init__(self, seed: int = 0, blocks: int = 3, width: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = nn.Linear(FEATURES, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(blocks))
        self.out = nn.Linear(width, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        out: torch.Tensor = self.out(h)
        return out


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def reference_run(
    dataset: TensorDataset,
    global_batch: int,
    mixed_precision: str = "no",
    model_fn: Callable[[], nn.Module] = make_model,
) -> list[torch.Tensor]:
    """Train one process, plain PyTorch, one optimizer step per global batch."""
    model = model_fn()
    opt = make_optimizer(model)
    dtype = _DTYPES.get(mixed_precision)
    scale = FP16_SCALE if mixed_precision == "fp16" else 1.0
    for x, y in DataLoader(dataset, batch_size=global_batch):
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = nn.functional.mse_loss(out.float(), y)
        (loss * scale).backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        if scale != 1.0:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def surge_run(
    accelerator: Any,
    dataset: TensorDataset,
    per_process_batch: int,
    on_step: Callable[[Any, nn.Module], None] | None = None,
    model_fn: Callable[[], nn.Module] = make_model,
    on_prepared: Callable[[nn.Module, Any], None] | None = None,
) -> list[torch.Tensor]:
    """Train with a prepared model/optimizer/loader and ``accumulate``; returns the
    full parameters of the user's module (gathered when sharded: a collective).
    ``on_prepared(model, optimizer)`` sees what ``prepare`` returned, before training."""
    model = model_fn()
    opt = make_optimizer(model)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(dataset, batch_size=per_process_batch))
    if on_prepared is not None:
        on_prepared(model, opt)
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            if on_step is not None:
                on_step(accelerator, model)
            opt.step()
            opt.zero_grad()
    state = accelerator.get_state_dict(model)  # every rank (DDP) or the main one only (sharded)
    if accelerator.num_processes > 1:
        from surge.ops import broadcast_object_list, gather_object

        if any(gather_object([not state])):
            state = broadcast_object_list([state if accelerator.is_main_process else None])[0]
    names = [n for n, _ in accelerator.unwrap_model(model, keep_torch_compile=False).named_parameters()]
    return [state[n].detach().clone().cpu() for n in names]


def scheduled_run(
    accelerator: Any, n_samples: int, schedule_length: Callable[[int, int], int], epochs: int = 2
) -> tuple[int, int, float, int]:
    """Train with accumulation and a linear-to-zero LR schedule whose length is
    ``schedule_length(len(prepared_loader), epochs)``; returns (optimizer steps taken,
    the scheduler's last_epoch, the final LR, the schedule length). Checks the
    scheduler rule ([Note: the scheduler rule] in optim.py)."""
    model = nn.Linear(FEATURES, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(make_dataset(n_samples), batch_size=4))
    total = schedule_length(len(loader), epochs)
    sched = accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total)))
    optimizer_steps = 0
    for _ in range(epochs):
        for x, y in loader:
            with accelerator.accumulate(model):
                accelerator.backward(nn.functional.mse_loss(model(x), y))
                opt.step()
                sched.step()
                opt.zero_grad()
                optimizer_steps += accelerator.sync_gradients
    return optimizer_steps, sched.scheduler.last_epoch, sched.get_last_lr()[0], total


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True))


# Tolerances, justified. fp32 runs differ only by summation order: measured <= 1.2e-7.
# Under autocast each micro-batch's weight gradient is rounded once to the half format;
# splitting a global batch into p*K micro-batches moves where that rounding happens.
# With |grad| <= ~1, lr 0.05 and momentum 0.9 over 4 steps the parameters drift by a
# few units of the format's rounding error: measured 5.7e-4 for bf16 (u = 2^-9 ~ 2e-3)
# and 4.9e-5 for fp16 (u = 2^-12 ~ 2.4e-4) with parameters of size ~1. The bounds below
# leave ~10x headroom over those measurements; a wrong loss division or scale (off by
# >= 25% of a step) fails them by orders of magnitude.
TOLERANCE = {"no": 1e-6, "bf16": 5e-3, "fp16": 5e-4}
