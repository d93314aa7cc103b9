"""Sharding plugins: validation in constructors, dict forms, block discovery."""

import pytest
import torch
from torch import nn

from surge import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin
from surge.strategies.fsdp import find_blocks, find_blocks_by_size
from surge.testing.parity import BlockModel


def test_deepspeed_plugin_validation():
    with pytest.raises(ValueError, match="zero_stage=5"):
        DeepSpeedPlugin(zero_stage=5)
    with pytest.raises(ValueError, match=r"offload_param_device='cpu'.*needs zero_stage=3"):
        DeepSpeedPlugin(zero_stage=2, offload_param_device="cpu")
    with pytest.raises(ValueError, match="offload_optimizer_device='nvme'"):
        DeepSpeedPlugin(offload_optimizer_device="nvme")
    with pytest.raises(ValueError, match="gradient_clipping=-1"):
        DeepSpeedPlugin(gradient_clipping=-1)


def test_deepspeed_plugin_from_dicts():
    short = DeepSpeedPlugin.from_dict({"zero_stage": 3, "offload_optimizer": True, "gradient_accumulation_steps": 4})
    assert (short.zero_stage, short.offload_optimizer_device, short.gradient_accumulation_steps) == (3, "cpu", 4)
    full = DeepSpeedPlugin.from_dict({"zero_stage": 2, "offload_optimizer_device": "none"})
    assert full.zero_stage == 2
    with pytest.raises(ValueError, match=r"unknown key.*'stage'"):
        DeepSpeedPlugin.from_dict({"stage": 2})


def test_fsdp_plugin_validation():
    assert FullyShardedDataParallelPlugin("shard_grad_op").sharding_strategy == "SHARD_GRAD_OP"
    with pytest.raises(ValueError, match="sharding_strategy='ZERO9'"):
        FullyShardedDataParallelPlugin("ZERO9")
    with pytest.raises(ValueError, match="auto_wrap_policy='ALL'"):
        FullyShardedDataParallelPlugin(auto_wrap_policy="ALL")
    p = FullyShardedDataParallelPlugin(transformer_layer_cls_to_wrap="LlamaDecoderLayer, Block")
    assert p.transformer_layer_cls_to_wrap == ["LlamaDecoderLayer", "Block"]


def test_accelerator_takes_plugins_on_one_process():
    acc = Accelerator(deepspeed_plugin={"zero_stage": 3, "gradient_accumulation_steps": 4})
    assert acc.gradient_accumulation_steps == 4  # taken from the plugin
    model = nn.Linear(2, 2)
    assert acc.prepare(model) is model  # one process: nothing to shard
    with pytest.raises(ValueError, match="either deepspeed_plugin or fsdp_plugin"):
        Accelerator(deepspeed_plugin=DeepSpeedPlugin(), fsdp_plugin=FullyShardedDataParallelPlugin())
    with pytest.raises(TypeError, match="deepspeed_plugin=3"):
        Accelerator(deepspeed_plugin=3)


def test_find_blocks():
    model = BlockModel()
    assert find_blocks(model) == list(model.blocks)
    assert find_blocks(model, ["Linear"])[0] is model.inp
    assert find_blocks(model, []) == []
    with pytest.raises(ValueError, match="matches no submodule"):
        find_blocks(model, ["DecoderLayer"])


def test_find_blocks_uses_no_split_modules():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    blocks = find_blocks(model)
    assert len(blocks) == 2 and all(type(b).__name__ == "LlamaDecoderLayer" for b in blocks)


def test_find_blocks_by_size_is_innermost_first_and_skips_the_root():
    model = nn.Sequential(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)), nn.Linear(10, 1))
    # Each 10x10 layer (110) is a unit; the outer Sequential's remainder (11) is not; the root never is.
    assert find_blocks_by_size(model, 100) == [model[0][0], model[0][1]]
    assert find_blocks_by_size(model, 200) == [model[0]]  # 220 together
    assert find_blocks_by_size(model, 10**6) == []


def test_single_process_optimizer_offload_matches_plain_training():
    from surge.strategies.offload import OffloadedOptimizer
    from surge.testing.parity import make_dataset, max_difference, reference_run, surge_run

    data = make_dataset(32)
    ref = reference_run(data, 8, model_fn=BlockModel)
    acc = Accelerator(deepspeed_plugin={"zero_stage": 2, "offload_optimizer": True, "gradient_accumulation_steps": 2})
    optimizers = []
    got = surge_run(acc, data, 4, model_fn=BlockModel, on_prepared=lambda model, opt: optimizers.append(opt))
    assert isinstance(optimizers[0].optimizer, OffloadedOptimizer)
    assert max_difference(ref, got) <= 1e-6


def test_offloaded_optimizer_refuses_closures_and_late_groups():
    from surge.strategies.offload import OffloadedOptimizer

    model = nn.Linear(2, 1)
    opt = OffloadedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)
    with pytest.raises(ValueError, match="add_param_group"):
        opt.add_param_group({"params": [torch.zeros(1)]})
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert torch.allclose(model.weight, before - 0.1)  # the CPU step reached the parameters


def test_activation_checkpointing_without_sharding():
    calls = []
    acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=0, activation_checkpointing=True))
    model = BlockModel()
    for block in model.blocks:
        block[0].register_forward_hook(lambda *_: calls.append(1))
    model = acc.prepare(model)
    acc.backward(model(torch.randn(4, 8)).pow(2).mean())
    assert len(calls) == 2 * len(model.blocks)  # recomputed in backward


def test_fsdp_plugin_refuses_offload_without_sharding():
    with pytest.raises(ValueError, match=r"NO_SHARD.*cpu_offload"):
        FullyShardedDataParallelPlugin("NO_SHARD", cpu_offload=True)
