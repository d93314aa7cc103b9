"""Two gloo processes: surge.initialize with DeepSpeed configs, ZeRO-3 + offload +
fp16 + clipping (and an activation_checkpointing section) on a tiny transformers Llama, and
exact checkpoint round trips."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import RandomSampler, Subset, TensorDataset

import surge
from surge.ops import broadcast_object_list
from surge.testing import distributed_test
from surge.testing.parity import LR, MOMENTUM, BlockModel, make_dataset, max_difference, reference_run

pytestmark = pytest.mark.distributed

SGD = {"type": "SGD", "params": {"lr": LR, "momentum": MOMENTUM}}


def _shared_tmpdir() -> str:
    return broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0]


def _full_params(engine) -> list[torch.Tensor]:
    state = engine.accelerator.get_state_dict(engine.module)  # collective; full on rank 0
    state = broadcast_object_list([state if dist.get_rank() == 0 else None])[0]
    return [state[name].clone() for name, _ in engine.module.named_parameters()]


def check_engine_parity_across_stages():
    """train_batch_size 16 = micro 4 x accumulation 2 x 2 processes equals one process
    on batches of 16, for ZeRO 0-3 and ZeRO-3 with optimizer offload."""
    data = make_dataset(64)
    order = list(RandomSampler(data, generator=torch.Generator().manual_seed(0)))
    # The engine's loader hands out its shuffled samples round-robin in batches of 4 per
    # process; the global batch of each step is the next 16 of that order.
    ref = reference_run(Subset(data, order), 16, model_fn=BlockModel)
    for zero in ({"stage": 0}, {"stage": 1}, {"stage": 2}, {"stage": 3},
                 {"stage": 3, "offload_optimizer": {"device": "cpu"}}):
        config = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "optimizer": SGD,
                  "zero_optimization": zero}
        engine, _, loader, _ = surge.initialize(model=BlockModel(), config=config, training_data=data)
        assert engine.gradient_accumulation_steps() == 2
        for x, y in loader:
            engine.backward(nn.functional.mse_loss(engine(x), y))
            engine.step()
        assert engine.global_steps == 4
        diff = max_difference(ref, _full_params(engine))
        assert diff <= 1e-6, f"{zero}: {diff}"


LLAMA_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "fp16": {"enabled": True, "initial_scale_power": 10, "loss_scale_window": 50, "hysteresis": 2},
    "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}},
    "activation_checkpointing": {"partition_activations": False},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 3e-3, "warmup_num_steps": 4,
                                                 "warmup_type": "linear"}},
}


def _llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.config.use_cache = False
    return model


def _tokens() -> TensorDataset:
    # A learnable sequence task: each row counts up from a random start (mod 64).
    start = torch.randint(0, 64, (32, 1), generator=torch.Generator().manual_seed(1))
    return TensorDataset((start + torch.arange(16)) % 64)


def _train_steps(engine, batches, steps):
    losses = []
    while engine.global_steps < steps:
        (ids,) = next(batches)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _forever(loader):
    while True:
        yield from loader


def check_llama_through_initialize_zero3_offload_fp16():
    calls = []
    model = _llama()
    for layer in model.model.layers:
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    engine, _optimizer, loader, _scheduler = surge.initialize(model=model, config=LLAMA_CONFIG,
                                                            training_data=_tokens())
    assert engine.fp16_enabled() and engine.zero_optimization_stage() == 3 and engine.train_batch_size() == 8
    batches = _forever(loader)
    losses = _train_steps(engine, batches, 12)
    layers = len(model.model.layers)
    # each layer ran once: the config's activation_checkpointing section checkpoints nothing by
    # itself, as in DeepSpeed (the model's own surge.checkpointing.checkpoint calls do)
    assert len(calls) == layers * len(losses), (len(calls), len(losses))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5, losses
    assert engine.get_global_grad_norm() is not None and engine.optimizer.cur_scale > 1

    directory = _shared_tmpdir()
    engine.save_checkpoint(directory, tag="final", client_state={"epoch": 3, "note": "ok"})
    assert open(os.path.join(directory, "latest")).read() == "final"
    saved = _full_params(engine)
    saved_lr, saved_scale = engine.get_lr(), engine.optimizer.cur_scale
    more = _train_steps(engine, batches, 15)
    continued = _full_params(engine)

    fresh = _llama()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # the load must overwrite everything
    again, _, loader2, _ = surge.initialize(model=fresh, config=LLAMA_CONFIG, training_data=_tokens())
    path, client = again.load_checkpoint(directory)
    assert path == os.path.join(directory, "final") and client == {"epoch": 3, "note": "ok"}
    assert max_difference(saved, _full_params(again)) == 0.0
    assert again.get_lr() == saved_lr and again.optimizer.cur_scale == saved_scale and again.global_steps == 12
    # Replay the original's batch stream up to the checkpoint (12 steps x 2 micro-batches).
    batches2 = _forever(loader2)
    for _ in range(12 * 2):
        next(batches2)
    more2 = _train_steps(again, batches2, 15)
    assert more2 == more  # optimizer, scheduler and scaler state restored exactly
    assert max_difference(continued, _full_params(again)) == 0.0


def check_engine_checkpoints_after_a_main_process_only_save_state():
    """The engine's saves and loads are counted by the engine: a save_state made by the
    main process alone (the documented DDP pattern) does not put the processes out of
    step for the engine's later collective checkpoint calls."""
    from surge.checkpoint import training

    directory = _shared_tmpdir()
    engine, *_ = surge.initialize(model=nn.Linear(4, 2), config={
        "train_micro_batch_size_per_gpu": 2, "optimizer": SGD, "zero_optimization": {"stage": 0}})
    acc = engine.accelerator
    old, training.ARRIVAL_TIMEOUT_S = training.ARRIVAL_TIMEOUT_S, 2.0  # a stall fails in seconds, not minutes
    try:
        if acc.is_main_process:
            acc.save_state(os.path.join(directory, "state"))
        acc.wait_for_everyone()
        engine.save_checkpoint(directory, tag="one")
        assert {"rank_0.pt", "rank_1.pt"} <= set(os.listdir(os.path.join(directory, "one")))  # both ranks' state
        path, _ = engine.load_checkpoint(directory)
        engine.save_checkpoint(directory, tag="two")
        assert path == os.path.join(directory, "one") and os.path.isdir(os.path.join(directory, "two"))
    finally:
        training.ARRIVAL_TIMEOUT_S = old


CHECKS = [check_engine_parity_across_stages, check_llama_through_initialize_zero3_offload_fp16,
          check_engine_checkpoints_after_a_main_process_only_save_state]

test_two_processes = distributed_test(CHECKS, world_size=2)
