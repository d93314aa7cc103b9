"""Two gloo processes: ZeRO-2/3 and FSDP SHARD_GRAD_OP/FULL_SHARD on FSDP2 match a
single-process run on the same global batch."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

from surge import (
    Accelerator,
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    GradScalerKwargs,
    init_empty_weights,
)
from surge.ops import broadcast_object_list
from surge.testing import distributed_test
from surge.testing.parity import (
    FP16_SCALE,
    TOLERANCE,
    BlockModel,
    make_dataset,
    max_difference,
    reference_run,
    surge_run,
)

pytestmark = pytest.mark.distributed

# gradient_clipping=0: parity with unclipped plain training (DeepSpeedPlugin() clips at 1.0 by default, as
# Accelerate's; the differential launch tests check that default).
PLUGINS = {
    "zero1": lambda: {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=1, gradient_clipping=0)},
    "zero2": lambda: {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=2, gradient_clipping=0)},
    "zero3": lambda: {"deepspeed_plugin": {"zero_stage": 3}},
    "fsdp_full": lambda: {"fsdp_plugin": FullyShardedDataParallelPlugin("FULL_SHARD")},
    "fsdp_grad_op": lambda: {"fsdp_plugin": FullyShardedDataParallelPlugin("SHARD_GRAD_OP")},
    "zero3_offload": lambda: {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=3, offload_param_device="cpu",
                                                                  offload_optimizer_device="cpu", gradient_clipping=0)},
    "fsdp_offload_checkpointing": lambda: {"fsdp_plugin": FullyShardedDataParallelPlugin(
        "FULL_SHARD", cpu_offload=True, activation_checkpointing=True)},
    "zero1_offload_optimizer": lambda: {"deepspeed_plugin": {"zero_stage": 1, "offload_optimizer": True}},
    "zero2_offload_optimizer": lambda: {"deepspeed_plugin": {"zero_stage": 2, "offload_optimizer": True}},
    "zero3_offload_optimizer": lambda: {"deepspeed_plugin": {"zero_stage": 3, "offload_optimizer": True}},
    "fsdp_size_based": lambda: {"fsdp_plugin": FullyShardedDataParallelPlugin(
        "FULL_SHARD", auto_wrap_policy="SIZE_BASED_WRAP", min_num_params=200)},
    "fsdp_hybrid": lambda: {"fsdp_plugin": FullyShardedDataParallelPlugin("HYBRID_SHARD")},
    "fsdp2_enum_forms": lambda: {"fsdp_plugin": _fsdp2_enum_forms()},
}


def _fsdp2_enum_forms() -> FullyShardedDataParallelPlugin:
    """Accelerate's FSDP2 arguments, given as torch objects."""
    from torch.distributed.fsdp import CPUOffloadPolicy, StateDictType

    return FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=False,
                                          state_dict_type=StateDictType.SHARDED_STATE_DICT,
                                          cpu_offload=CPUOffloadPolicy(pin_memory=False), use_orig_params=True,
                                          forward_prefetch=True, limit_all_gathers=True)


def _parity(name: str, precisions: tuple[str, ...] = ("no", "bf16")) -> None:
    data = make_dataset(64)
    for mp in precisions:
        ref = reference_run(data, 16, mp, model_fn=BlockModel)
        scaler = {"kwargs_handlers": [GradScalerKwargs(init_scale=FP16_SCALE)]} if mp == "fp16" else {}
        for steps in (1, 2):
            acc = Accelerator(mixed_precision=mp, gradient_accumulation_steps=steps, **PLUGINS[name](), **scaler)
            got = surge_run(acc, data, 16 // (2 * steps), model_fn=BlockModel)
            diff = max_difference(ref, got)
            assert diff <= TOLERANCE[mp], f"{name} x {mp} x accumulation {steps}: {diff}"


def check_zero1_parity():
    _parity("zero1")


def check_zero1_scheduler_and_state_dict():
    acc = Accelerator(deepspeed_plugin={"zero_stage": 1}, scheduler_steps="once")
    model = BlockModel()
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)  # built on the user's optimizer
    model, opt, sched = acc.prepare(model, opt, sched)
    acc.backward(model(torch.randn(4, 8)).pow(2).mean())
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5  # the schedule drives the sharded optimizer
    state = opt.state_dict()  # a collective; the full state on rank 0
    assert (len(state["state"]) == len(list(model.parameters()))) if acc.is_main_process else state == {}


def check_zero2_parity():
    _parity("zero2")


def check_zero3_parity():
    _parity("zero3")


def check_fsdp_full_shard_parity():
    _parity("fsdp_full")


def check_fsdp_shard_grad_op_parity():
    _parity("fsdp_grad_op")


def check_zero3_offload_parity():
    _parity("zero3_offload")


def check_fsdp_offload_and_activation_checkpointing_parity():
    _parity("fsdp_offload_checkpointing")


def check_fp16_under_zero2_and_zero3_parity():
    _parity("zero2", ("fp16",))
    _parity("zero3_offload", ("fp16",))


def check_optimizer_offload_parity():
    for name in ("zero1_offload_optimizer", "zero2_offload_optimizer", "zero3_offload_optimizer"):
        _parity(name, ("no", "bf16", "fp16"))


def check_optimizer_offload_keeps_state_on_cpu():
    from surge.strategies.offload import OffloadedOptimizer

    acc = Accelerator(deepspeed_plugin={"zero_stage": 3, "offload_optimizer": True}, scheduler_steps="once")
    model = BlockModel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    model, opt, sched = acc.prepare(model, opt, sched)
    assert isinstance(opt.optimizer, OffloadedOptimizer)
    for _ in range(2):
        acc.backward(model(torch.randn(4, 8)).pow(2).mean())
        opt.step()
        sched.step()
        opt.zero_grad()
    masters = [m for group in opt.optimizer.masters for m in group]
    # State exists for the CPU masters only, and the device shards equal their masters.
    assert set(map(id, opt.state)) == set(map(id, masters))
    assert all(v.device.type == "cpu" for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    shards = [p.to_local() for p in model.parameters()]
    assert all(torch.equal(s, m) for s, m in zip(shards, masters, strict=True))
    assert opt.param_groups[0]["lr"] == 1e-2 * 0.25  # the schedule reaches the CPU step
    state = opt.state_dict()
    moved = {k: v.clone() for k, v in state["state"][0].items()}
    opt.load_state_dict(state)
    assert all(torch.equal(moved[k], opt.state_dict()["state"][0][k]) for k in moved)
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters(), strict=True))


def check_size_based_wrap_shards_big_modules():
    from torch.distributed.fsdp import FSDPModule

    _parity("fsdp_size_based", ("no",))
    acc = Accelerator(**PLUGINS["fsdp_size_based"]())
    model = acc.prepare(BlockModel())
    sharded = [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]
    # Each block's 16x16 Linear (272 parameters) is its own unit, the 8->16 input layer (144) is not.
    assert sharded == ["", "blocks.0.0", "blocks.1.0", "blocks.2.0"], sharded


def check_hybrid_shard_parity():
    import dataclasses

    from torch.distributed.fsdp import FSDPModule

    from surge.config.resolve import MeshSpec

    _parity("fsdp_hybrid", ("no",))  # one machine: shards over its 2 processes
    # Two machines of one process each: replicate across them, shard within (a 2x1 mesh).
    data = make_dataset(64)
    ref = reference_run(data, 16, "no", model_fn=BlockModel)
    acc = Accelerator(**PLUGINS["fsdp_hybrid"]())
    acc.strategy.spec = dataclasses.replace(acc.strategy.spec, mesh=MeshSpec(dp_replicate=2, dp_shard=1))
    models = []
    got = surge_run(acc, data, 8, model_fn=BlockModel, on_prepared=lambda model, opt: models.append(model))
    assert max_difference(ref, got) <= TOLERANCE["no"]
    assert isinstance(models[0], FSDPModule)
    param = next(models[0].parameters())
    assert param.device_mesh.shape == (2, 1) and param.to_local().shape == param.shape  # replicated


def check_activation_checkpointing_recomputes_blocks():
    calls = []
    acc = Accelerator(**PLUGINS["fsdp_offload_checkpointing"]())
    model = BlockModel()
    for block in model.blocks:
        block[0].register_forward_hook(lambda *_: calls.append(1))
    model = acc.prepare(model)
    acc.backward(model(torch.randn(4, 8)).pow(2).mean())
    assert len(calls) == 2 * len(model.blocks)  # each block ran again in backward
    assert "forward" not in acc.get_state_dict(model)  # keys unchanged by the wrapper


def check_sharded_model_save_clip_and_types():
    from safetensors.torch import load_file

    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3, gradient_clipping=0.5))
    assert acc.distributed_type == DistributedType.DEEPSPEED
    model = BlockModel()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model, opt = acc.prepare(model, opt)
    # The optimizer now steps the local shards, keeping its hyperparameters.
    assert all(type(p).__name__ == "DTensor" for g in opt.param_groups for p in g["params"])
    assert opt.param_groups[0]["weight_decay"] == 0.1
    out = os.path.join(broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0], "m")
    acc.save_model(model, out)  # every rank gathers; the main one writes
    acc.wait_for_everyone()
    saved = load_file(os.path.join(out, "model.safetensors"))
    assert saved.keys() == reference.keys() and all(torch.equal(saved[k], reference[k]) for k in reference)
    loss = model(torch.randn(4, 8)).pow(2).sum() * 100
    acc.backward(loss)
    norm = acc.clip_grad_norm_(model.parameters(), 1e9)
    assert isinstance(norm, torch.Tensor) and type(norm).__name__ == "Tensor" and norm.item() > 0.5
    opt.step()  # gradient_clipping=0.5 applied inside the step
    opt.zero_grad()


def check_memory_follows_zero_arithmetic():
    from surge.memory import measured_model_state_bytes

    results = {}
    for stage in (None, 1, 2, 3):
        acc = Accelerator(deepspeed_plugin=None if stage is None else DeepSpeedPlugin(zero_stage=stage))
        model = BlockModel(width=64, blocks=4)  # an even number of equal blocks: ZeRO-1 can split them evenly
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model, opt = acc.prepare(model, opt)
        acc.backward(model(torch.randn(4, 8)).pow(2).mean())
        opt.step()
        results[stage] = measured_model_state_bytes(acc.unwrap_model(model), opt)["total"]
    assert results[1] <= 0.8 * results[None], results
    assert results[2] <= 0.55 * results[None] and results[3] <= 0.55 * results[None], results


def check_transformers_llama_under_zero3():
    transformers = pytest.importorskip("transformers")
    acc = Accelerator(mixed_precision="bf16", deepspeed_plugin=DeepSpeedPlugin(zero_stage=3, gradient_clipping=1.0))
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.gradient_checkpointing_enable()  # the model's own checkpointing keeps working when sharded
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model, opt = acc.prepare(model, opt)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(acc.process_index))
    losses = []
    for _ in range(12):
        out = model(input_ids=ids, labels=ids)
        acc.backward(out.loss)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    out_dir = os.path.join(broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0], "llama")
    acc.save_model(model, out_dir)
    acc.wait_for_everyone()
    again = transformers.LlamaForCausalLM.from_pretrained(out_dir)
    expected = acc.get_state_dict(model)  # collective; full on rank 0
    if acc.is_main_process:
        got = again.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def check_deepspeed_json_config_parity():
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 2,
        "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}},
        "activation_checkpointing": {"number_checkpoints": 1},
    }
    data = make_dataset(64)
    ref = reference_run(data, 16, "no", model_fn=BlockModel)
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))
    assert acc.gradient_accumulation_steps == 2 and acc.distributed_type == DistributedType.DEEPSPEED
    got = surge_run(acc, data, 4, model_fn=BlockModel)
    assert max_difference(ref, got) <= TOLERANCE["no"]


def check_fsdp2_plugin_arguments():
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    _parity("fsdp2_enum_forms", ("no",))  # SHARD_GRAD_OP from reshard_after_forward=False, offloaded, prefetching
    acc = Accelerator(**PLUGINS["fsdp2_enum_forms"]())
    assert acc.strategy.reshard_after_forward is False and acc.strategy.offload_params
    model = acc.prepare(BlockModel())
    units = list(model.blocks)
    assert units[0]._get_fsdp_state()._states_to_forward_prefetch == [units[1]._get_fsdp_state()]
    acc = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(mixed_precision_policy="bf16"))
    model = acc.prepare(BlockModel())
    assert model(torch.randn(2, 8)).dtype == torch.bfloat16  # the policy's output dtype, with mixed_precision="no"
    plain = BlockModel()
    acc = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(ignored_modules=[plain.inp],
                                                                 auto_wrap_policy=ModuleWrapPolicy({nn.Linear})))
    model = acc.prepare(plain)
    assert type(model.inp.weight).__name__ == "Parameter" and type(model.out.weight).__name__ == "DTensor"
    sharded = [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]
    assert sharded == ["", "inp", "blocks.0.0", "blocks.1.0", "blocks.2.0", "out"], sharded


def check_fsdp_checkpoint_files_and_merge():
    from safetensors.torch import load_file

    from surge.utils import (
        load_fsdp_model,
        load_fsdp_optimizer,
        merge_fsdp_weights,
        save_fsdp_model,
        save_fsdp_optimizer,
    )

    root = broadcast_object_list([tempfile.mkdtemp() if dist.get_rank() == 0 else None])[0]
    for kind in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
        plugin = FullyShardedDataParallelPlugin(state_dict_type=kind)
        acc = Accelerator(fsdp_plugin=plugin)
        model = BlockModel()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)
        acc.backward(model(torch.randn(4, 8)).pow(2).mean())
        opt.step()
        out = os.path.join(root, kind)
        save_fsdp_model(plugin, acc, model, out)
        save_fsdp_optimizer(plugin, acc, opt, model, out)
        other = BlockModel(seed=7)
        other_opt = torch.optim.Adam(other.parameters(), lr=0.1)
        other, other_opt = acc.prepare(other, other_opt)
        load_fsdp_model(plugin, acc, other, out)
        load_fsdp_optimizer(plugin, acc, other_opt, other, out)
        for (name, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
            assert torch.equal(p.to_local(), q.to_local()), (kind, name)
            assert all(torch.equal(opt.state[p][k].to_local() if k != "step" else opt.state[p][k],
                                   other_opt.state[q][k].to_local() if k != "step" else other_opt.state[q][k])
                       for k in opt.state[p])
    expected = acc.get_state_dict(model)  # whole on rank 0
    merge_fsdp_weights(os.path.join(out, "pytorch_model_fsdp_0"), os.path.join(root, "merged"))
    if acc.is_main_process:
        merged = load_file(os.path.join(root, "merged", "model.safetensors"))
        assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in expected)


class BufferedBlockModel(BlockModel):
    def __init__(self, scale: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("scale", torch.full((1,), scale), persistent=False)
        self.register_buffer("shift", torch.zeros(1))

    def forward(self, x):
        return super().forward(x) * self.scale + self.shift


def _rank0_real(build):
    if dist.get_rank() == 0:
        return build()
    with init_empty_weights(include_buffers=True):
        return build()


def check_meta_models_receive_rank0_weights():
    reference = {k: v.clone() for k, v in BufferedBlockModel(0.25).state_dict().items()}
    for plugin in ({"fsdp_plugin": FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=True)},
                   {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=3)},
                   {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=2)}):
        acc = Accelerator(**plugin)
        model = acc.prepare(_rank0_real(lambda: BufferedBlockModel(0.25)))
        full = {n: p.full_tensor() for n, p in model.named_parameters()}
        assert full.keys() <= reference.keys() and all(torch.equal(full[k], reference[k]) for k in full), plugin
        assert model.scale.item() == 0.25 and model.shift.item() == 0.0, plugin
    data = make_dataset(64)
    ref = reference_run(data, 16, "no", model_fn=BlockModel)
    acc = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(cpu_ram_efficient_loading=True))
    got = surge_run(acc, data, 8, model_fn=lambda: _rank0_real(BlockModel))
    assert max_difference(ref, got) <= TOLERANCE["no"]


def check_meta_model_errors_and_init_fn():
    def all_meta():
        with init_empty_weights():
            return BlockModel()

    for plugin in ({}, {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=1)}):
        with pytest.raises(ValueError, match="keeps a whole model in every process"):
            Accelerator(**plugin).prepare(all_meta())
    with pytest.raises(ValueError, match="rank 0's model has tensors on the meta device"):
        Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin()).prepare(
            all_meta() if dist.get_rank() == 0 else BlockModel())

    def init(module):
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.fill_(0.5)
                module.bias.zero_()

    acc = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(param_init_fn=init))
    model = acc.prepare(all_meta())
    params = dict(model.named_parameters())
    assert all(torch.all(p.full_tensor() == (0.5 if n.endswith("weight") else 0.0)) for n, p in params.items())


def check_sync_module_states_uses_rank0_weights():
    acc = Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(sync_module_states=True))
    model = acc.prepare(BlockModel(seed=dist.get_rank()))  # different weights on each rank
    reference = BlockModel(seed=0).state_dict()
    assert all(torch.equal(p.full_tensor(), reference[n]) for n, p in model.named_parameters())


def check_strategy_auto_reaches_every_rung_and_trains_the_same():
    """strategy="auto" with a declared budget: each rung of the ladder (DDP, ZeRO-1/2/3,
    + activation checkpointing, + offload) is chosen at the budget that fits it and no
    lighter one, runs as that strategy, and trains like one process."""
    from surge.memory import AC_STATE_SHARE, STATE_SHARE, count_parameters, ladder, model_state_bytes, recommend

    data = make_dataset(64)
    ref = reference_run(data, 16, "no", model_fn=BlockModel)
    params = count_parameters(BlockModel())
    expected = {"DDP": ("ddp", False, False, False), "ZeRO-1": ("zero1", False, False, False),
                "ZeRO-2": ("fsdp", False, False, False), "ZeRO-3": ("fsdp", False, False, False),
                "ZeRO-3 + activation checkpointing": ("fsdp", True, False, False),
                "ZeRO-3 + offload optimizer + activation checkpointing": ("fsdp", True, True, False),
                "ZeRO-3 + offload optimizer and params + activation checkpointing": ("fsdp", True, False, True)}
    for rung in ladder(2):
        device, _ = model_state_bytes(params, rung.strategy, 2, "fp32", optimizer_states=1)  # SGD with momentum
        budget = device / (AC_STATE_SHARE if rung.activation_checkpointing else STATE_SHARE) * 1.001
        assert recommend(params, 2, budget, "fp32", 1).rung == rung
        acc = Accelerator(strategy="auto", memory_budget_gb=budget / 1e9)
        got = surge_run(acc, data, 8, model_fn=BlockModel)
        name, checkpointing, offload_optimizer, offload_params = expected[rung.name]
        strategy = acc.strategy
        assert (strategy.name, strategy.activation_checkpointing, strategy.offload_optimizer,
                getattr(strategy, "offload_params", False)) == (name, checkpointing, offload_optimizer,
                                                                offload_params), rung.name
        assert max_difference(ref, got) <= TOLERANCE["no"], rung.name


def check_strategy_far_heavier_than_needed_is_named():
    """ZeRO-3 for a model whose DDP model states take a sliver of the declared memory: one
    warning, on the main process, with the numbers; silent when DDP would need more than a
    tenth of it."""
    import warnings

    from surge.advice import forget_given
    from surge.memory import STRATEGIES, count_parameters, model_state_bytes

    forget_given()
    ddp, _ = model_state_bytes(count_parameters(BlockModel()), STRATEGIES[0], 2, "fp32", 1)
    for budget_gb, expected in ((1.0, 1), (ddp * 5 / 1e9, 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            acc = Accelerator(deepspeed_plugin={"zero_stage": 3}, memory_budget_gb=budget_gb)
            model = BlockModel()
            acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        advice = [str(w.message) for w in caught if "only add communication" in str(w.message)]
        assert len(advice) == (expected if dist.get_rank() == 0 else 0), advice
        if advice:
            assert advice[0].startswith("ZeRO-3 for a ") and "of the 1 GB each process has" in advice[0], advice[0]


CHECKS = [
    check_strategy_auto_reaches_every_rung_and_trains_the_same,
    check_strategy_far_heavier_than_needed_is_named,
    check_meta_models_receive_rank0_weights,
    check_meta_model_errors_and_init_fn,
    check_sync_module_states_uses_rank0_weights,
    check_fsdp2_plugin_arguments,
    check_fsdp_checkpoint_files_and_merge,
    check_fp16_under_zero2_and_zero3_parity,
    check_optimizer_offload_parity,
    check_optimizer_offload_keeps_state_on_cpu,
    check_size_based_wrap_shards_big_modules,
    check_hybrid_shard_parity,
    check_deepspeed_json_config_parity,
    check_transformers_llama_under_zero3,
    check_memory_follows_zero_arithmetic,
    check_zero1_parity,
    check_zero1_scheduler_and_state_dict,
    check_zero2_parity,
    check_zero3_parity,
    check_fsdp_full_shard_parity,
    check_fsdp_shard_grad_op_parity,
    check_zero3_offload_parity,
    check_fsdp_offload_and_activation_checkpointing_parity,
    check_activation_checkpointing_recomputes_blocks,
    check_sharded_model_save_clip_and_types,
]

test_two_processes = distributed_test(CHECKS, world_size=2)
