"""Two gloo processes: the DeepSpeed engine behaves as DeepSpeed's (issue 18, "Engine
behaviour"): a parameter that never gets a gradient (ZeRO 0-3, through surge.initialize and
through Accelerator(deepspeed_plugin=...)), an optimizer passed together with a config
optimizer section, several backward calls in one micro-step, and ranks that pass different
save_dirs."""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn

import surge
from surge.ops import broadcast_object_list
from surge.testing import distributed_test
from surge.testing.parity import max_difference

pytestmark = pytest.mark.distributed

LR, WD = 0.01, 0.1
ADAMW = {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}}


class Pooled(nn.Module):
    """A BERT-like shape: the loss uses the encoder and the head, never the pooler."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.encoder = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1)
        self.pooler = nn.Linear(16, 16)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))


def _batch(rank: int, step: int, k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + k)
    return torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)


def _shared_tmpdir() -> str:
    return broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0]


def _full_params(accelerator, model) -> dict[str, torch.Tensor]:
    state = accelerator.get_state_dict(model)  # collective; full on rank 0
    return broadcast_object_list([state if dist.get_rank() == 0 else None])[0]


def _deepspeed_reference(steps: int, gas: int) -> dict[str, torch.Tensor]:
    """One process, the global batch, AdamW, and DeepSpeed's zero-filled gradients for the
    parameters the loss does not use."""
    model = Pooled()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    for step in range(steps):
        losses = [nn.functional.mse_loss(model(x), y) for m in range(gas) for rank in range(2)
                  for x, y in [_batch(rank, step * gas + m)]]
        (sum(losses) / len(losses)).backward()
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _engine_steps(engine, first: int, last: int) -> None:
    gas = engine.gradient_accumulation_steps()
    for step in range(first, last):
        for m in range(gas):
            x, y = _batch(dist.get_rank(), step * gas + m)
            engine.backward(nn.functional.mse_loss(engine(x), y))
            engine.step()


def check_unused_parameter_through_initialize_all_stages():
    """ZeRO 0-3: the second step does not fail, the pooler is stepped with zero gradients
    (weight decay, as DeepSpeed), and save + load into a new engine continues exactly."""
    reference = _deepspeed_reference(steps=4, gas=2)
    for stage in (0, 1, 2, 3):
        config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "optimizer": ADAMW,
                  "zero_optimization": {"stage": stage}}
        engine, *_ = surge.initialize(model=Pooled(), config=config)
        _engine_steps(engine, 0, 2)
        directory = _shared_tmpdir()
        engine.save_checkpoint(directory)
        _engine_steps(engine, 2, 4)
        straight = _full_params(engine.accelerator, engine.module)
        assert max_difference(list(reference.values()), [straight[k] for k in reference]) < 1e-6, stage
        decayed = Pooled().pooler.weight * (1 - LR * WD) ** 4
        assert torch.allclose(straight["pooler.weight"], decayed, atol=1e-7), stage

        resumed, *_ = surge.initialize(model=Pooled(), config=config)
        path, _ = resumed.load_checkpoint(directory)
        assert path == os.path.join(directory, "global_step2") and resumed.global_steps == 2
        _engine_steps(resumed, 2, 4)
        again = _full_params(resumed.accelerator, resumed.module)
        assert all(torch.equal(again[k], straight[k]) for k in straight), stage


def _accelerator_run(make, first: int, last: int, state: tuple | None = None):
    accelerator, model, optimizer = state if state is not None else make()
    for step in range(first, last):
        x, y = _batch(dist.get_rank(), step)
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
    return accelerator, model, optimizer


def check_unused_parameter_through_the_accelerator():
    """The same fix serves Accelerate's API: a DeepSpeed plugin (ZeRO 0-3) steps the pooler
    as DeepSpeed does; plain DDP with find_unused_parameters keeps torch's rule (the pooler
    is skipped). Every one saves, loads into a new Accelerator and continues exactly."""
    from surge import Accelerator, DeepSpeedPlugin
    from surge.utils import DistributedDataParallelKwargs

    runs = [(f"zero{stage}", lambda stage=stage: Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=stage)))
            for stage in (0, 1, 2, 3)]
    runs.append(("ddp", lambda: Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(
        find_unused_parameters=True)])))
    for name, build in runs:
        def make(build=build):
            accelerator = build()
            model = Pooled()
            optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
            return accelerator, *accelerator.prepare(model, optimizer)

        state = _accelerator_run(make, 0, 2)
        directory = _shared_tmpdir()
        state[0].save_state(directory)
        state = _accelerator_run(make, 2, 4, state)
        straight = _full_params(state[0], state[1])
        fresh = make()
        fresh[0].load_state(directory)
        fresh = _accelerator_run(make, 2, 4, fresh)
        again = _full_params(fresh[0], fresh[1])
        assert all(torch.equal(again[k], straight[k]) for k in straight), name
        initial = Pooled().pooler.weight
        if name == "ddp":
            assert torch.equal(straight["pooler.weight"], initial)  # torch's rule: never stepped
        else:
            assert torch.allclose(straight["pooler.weight"], initial * (1 - LR * WD) ** 4, atol=1e-7), name


def check_client_optimizer_overrides_the_config_section():
    """DeepSpeed uses an optimizer passed to initialize and ignores the config's optimizer
    section (a warning here, on the main process); the config's scheduler is built on it.
    A passed scheduler likewise wins over the config's scheduler section."""
    config = {"train_micro_batch_size_per_gpu": 4, "optimizer": ADAMW, "zero_optimization": {"stage": 1},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 0.5,
                                                           "warmup_num_steps": 4, "warmup_type": "linear"}}}
    model = Pooled()
    client = torch.optim.SGD(model.parameters(), lr=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine, optimizer, _, scheduler = surge.initialize(model=model, optimizer=client, config=config)
    ignored = [w for w in caught if "config's optimizer section ('AdamW') is ignored" in str(w.message)]
    assert len(ignored) == (1 if dist.get_rank() == 0 else 0), [str(w.message) for w in caught]
    assert optimizer.original is client and type(optimizer.optimizer).__name__ == "ShardedOptimizer"
    assert engine.optimizer_name() == "SGD" and engine.get_lr() == [0.0]  # WarmupLR starts at warmup_min_lr
    _engine_steps(engine, 0, 2)  # DeepSpeed's timing: after 2 steps last_batch_iteration is 1, 1/4 of the warm-up
    assert engine.get_lr() == [pytest.approx(0.125)] and "momentum" not in optimizer.state_dict().get("state", {})

    model = Pooled()
    client = torch.optim.SGD(model.parameters(), lr=0.5)
    own = torch.optim.lr_scheduler.StepLR(client, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine, _, _, scheduler = surge.initialize(model=model, optimizer=client, lr_scheduler=own, config=config)
    assert scheduler.scheduler is own
    _engine_steps(engine, 0, 2)
    assert engine.get_lr() == [pytest.approx(0.125)]


def _multi_reference(steps: int, gas: int) -> list[torch.Tensor]:
    model = Pooled()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        total = sum(nn.functional.mse_loss(model(x), y) / gas / 2 for rank in range(2) for m in range(gas)
                    for k in range(2) for x, y in [_batch(rank, step * gas + m, k)])
        total.backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def check_several_backward_calls_in_one_micro_step():
    """Two backward calls before one step() add their gradients, as in DeepSpeed: with a
    forward each, with one forward and retain_graph, and with the boundary set by hand
    (set_gradient_accumulation_boundary); ZeRO 0-3, against one process."""
    gas, steps, rank = 2, 2, dist.get_rank()
    reference = _multi_reference(steps, gas)
    for stage in (0, 1, 2, 3):
        config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": gas,
                  "optimizer": {"type": "SGD", "params": {"lr": 0.1}}, "zero_optimization": {"stage": stage}}
        for style in ("forward each", "one forward", "by hand"):
            engine, *_ = surge.initialize(model=Pooled(), config=config)
            for step in range(steps):
                for m in range(gas):
                    (x1, y1), (x2, y2) = _batch(rank, step * gas + m, 0), _batch(rank, step * gas + m, 1)
                    if style == "one forward":
                        out = engine(torch.cat([x1, x2]))
                        returned = engine.backward(nn.functional.mse_loss(out[:4], y1), retain_graph=True)
                        engine.backward(nn.functional.mse_loss(out[4:], y2))
                        assert returned.item() == pytest.approx(nn.functional.mse_loss(out[:4], y1).item() / gas)
                    else:
                        if style == "by hand":
                            engine.set_gradient_accumulation_boundary(m == gas - 1)
                        engine.backward(nn.functional.mse_loss(engine(x1), y1))
                        engine.backward(nn.functional.mse_loss(engine(x2), y2))
                    if style != "by hand" or m == gas - 1:
                        engine.step()
            full = _full_params(engine.accelerator, engine.module)
            got = [full[n] for n, _ in engine.module.named_parameters()]
            assert max_difference(reference, got) < 1e-6, (stage, style, max_difference(reference, got))
            assert engine.global_steps == steps, (stage, style)


def check_different_save_dirs_fail_on_every_rank_at_once():
    """Each rank gets a ValueError naming every rank's directory, within seconds, before
    anything is written; the processes stay in step (a correct save works after it)."""
    engine, *_ = surge.initialize(model=Pooled(), config={"train_micro_batch_size_per_gpu": 4, "optimizer": ADAMW})
    _engine_steps(engine, 0, 1)
    own = tempfile.mkdtemp()  # a different directory on every rank
    mine = os.path.join(own, "ckpt")
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        engine.save_checkpoint(mine)
    assert time.monotonic() - start < 10
    message = str(err.value)
    paths = [p for _, p in sorted(surge.utils.gather_object([(dist.get_rank(), mine)]))]
    assert "different save_dir" in message and all(repr(p) in message for p in paths), message
    assert "rank 0" in message and "rank 1" in message and "same directory on every process" in message
    assert not os.path.exists(mine)
    with pytest.raises(ValueError, match="different tag on different processes"):
        engine.save_checkpoint(_shared_tmpdir(), tag=f"t{dist.get_rank()}")
    directory = _shared_tmpdir()
    assert engine.save_checkpoint(directory, tag="ok")
    assert os.path.isdir(os.path.join(directory, "ok"))


CHECKS = [check_unused_parameter_through_initialize_all_stages, check_unused_parameter_through_the_accelerator,
          check_client_optimizer_overrides_the_config_section, check_several_backward_calls_in_one_micro_step,
          check_different_save_dirs_fail_on_every_rank_at_once]

test_two_processes = distributed_test(CHECKS, world_size=2)
