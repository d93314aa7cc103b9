"""Sharding plugins: validation in constructors, dict forms, block discovery."""

import pytest
import torch
from torch import nn

from surge import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin
from surge.config.resolve import strategy_spec
from surge.strategies.blocks import find_blocks_by_policy, ignored_parameters
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


def test_fsdp_plugin_takes_accelerates_forms():
    from torch.distributed.fsdp import BackwardPrefetch, ShardingStrategy, StateDictType

    F = FullyShardedDataParallelPlugin
    assert (F().fsdp_version, F().state_dict_type) == (1, "FULL_STATE_DICT")
    assert F(fsdp_version=2).state_dict_type == "SHARDED_STATE_DICT"  # Accelerate's FSDP2 default
    with pytest.raises(ValueError, match="fsdp_version=3"):
        F(fsdp_version=3)
    assert F(sharding_strategy=ShardingStrategy.SHARD_GRAD_OP).sharding_strategy == "SHARD_GRAD_OP"
    assert F(sharding_strategy=2).sharding_strategy == "SHARD_GRAD_OP"
    assert F(sharding_strategy="4").sharding_strategy == "HYBRID_SHARD"
    assert F(sharding_strategy=ShardingStrategy._HYBRID_SHARD_ZERO2).sharding_strategy == "HYBRID_SHARD_ZERO2"
    with pytest.raises(ValueError, match="out of range"):
        F(sharding_strategy=9)
    assert F(state_dict_type=StateDictType.SHARDED_STATE_DICT).state_dict_type == "SHARDED_STATE_DICT"
    assert F(state_dict_type=1).state_dict_type == "FULL_STATE_DICT"
    with pytest.raises(ValueError, match="LOCAL_STATE_DICT"):
        F(state_dict_type="local_state_dict")
    assert F(backward_prefetch=BackwardPrefetch.BACKWARD_POST).backward_prefetch == "BACKWARD_POST"
    with pytest.raises(ValueError, match="backward_prefetch='SOON'"):
        F(backward_prefetch="SOON")
    with pytest.raises(ValueError, match="activation_checkpointing_offload"):
        F(activation_checkpointing=True, activation_checkpointing_offload=True)
    # Accepted, documented no-ops on FSDP2.
    F(use_orig_params=False, limit_all_gathers=False, state_dict_config=object(), optim_state_dict_config=object())


def test_reshard_after_forward_chooses_the_strategy():
    from torch.distributed.fsdp import ShardingStrategy

    F = FullyShardedDataParallelPlugin
    for value, kind in ((True, "FULL_SHARD"), (False, "SHARD_GRAD_OP"), ("false", "SHARD_GRAD_OP"),
                        (ShardingStrategy.SHARD_GRAD_OP, "SHARD_GRAD_OP"), ("FULL_SHARD", "FULL_SHARD")):
        plugin = F(fsdp_version=2, reshard_after_forward=value)
        assert plugin.sharding_strategy == kind and plugin.reshard_after_forward == (kind == "FULL_SHARD")
    assert F(sharding_strategy="HYBRID_SHARD", reshard_after_forward=False).sharding_strategy == "HYBRID_SHARD_ZERO2"
    with pytest.raises(ValueError, match="disagree"):
        F(sharding_strategy="FULL_SHARD", reshard_after_forward="SHARD_GRAD_OP")
    with pytest.raises(ValueError, match="nothing to reshard"):
        F(sharding_strategy="NO_SHARD", reshard_after_forward=True)
    spec = strategy_spec(None, F(sharding_strategy=ShardingStrategy._HYBRID_SHARD_ZERO2), num_nodes=2, world_size=4)
    assert (spec.shard_degree, spec.hybrid) == (2, True)
    assert strategy_spec(None, F(fsdp_version=2, reshard_after_forward=False), world_size=2).shard_degree == 2


def test_mixed_precision_policy_forms_become_fsdp2_policies():
    from torch.distributed.fsdp import MixedPrecision, MixedPrecisionPolicy

    F = FullyShardedDataParallelPlugin
    bf16 = torch.bfloat16
    assert F(mixed_precision_policy="bf16").mixed_precision_policy == MixedPrecisionPolicy(bf16, bf16, bf16)
    assert F(mixed_precision_policy="fp8").mixed_precision_policy.param_dtype == bf16  # as Accelerate
    assert F(mixed_precision_policy=torch.float16).mixed_precision_policy.reduce_dtype == torch.float16
    fsdp1 = MixedPrecision(param_dtype=bf16, reduce_dtype=torch.float32, buffer_dtype=bf16)
    assert F(mixed_precision_policy=fsdp1).mixed_precision_policy == MixedPrecisionPolicy(
        param_dtype=bf16, reduce_dtype=torch.float32, cast_forward_inputs=True)
    given = MixedPrecisionPolicy(param_dtype=bf16)
    plugin = F(mixed_precision_policy=given)
    assert plugin.mixed_precision_policy is given and strategy_spec(None, plugin).mp_policy is given
    as_dict = F(mixed_precision_policy={"param_dtype": "bf16", "reduce_dtype": torch.float32, "buffer_dtype": bf16})
    assert as_dict.mixed_precision_policy == MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown key"):
        F(mixed_precision_policy={"param_dtypes": bf16})
    with pytest.raises(ValueError, match="'fp64' is not supported"):
        F(mixed_precision_policy="fp64")
    with pytest.raises(TypeError, match="mixed_precision_policy=3"):
        F(mixed_precision_policy=3)


def test_cpu_offload_forms_and_loading_flags():
    from torch.distributed.fsdp import CPUOffload, CPUOffloadPolicy, OffloadPolicy

    F = FullyShardedDataParallelPlugin
    assert F(cpu_offload=CPUOffload(offload_params=True)).cpu_offload is True
    assert F(cpu_offload=OffloadPolicy()).cpu_offload is False
    spec = strategy_spec(None, F(cpu_offload=CPUOffloadPolicy(pin_memory=False)), world_size=2)
    assert spec.offload_params and spec.offload_pin_memory is False
    with pytest.raises(TypeError, match="cpu_offload='yes'"):
        F(cpu_offload="yes")
    loading = F(cpu_ram_efficient_loading=True)
    assert loading.sync_module_states and strategy_spec(None, loading).load_from_rank0
    assert not strategy_spec(None, F()).load_from_rank0


def test_wrap_policy_forms():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    F = FullyShardedDataParallelPlugin
    assert F(auto_wrap_policy="transformer_based_wrap").auto_wrap_policy == "TRANSFORMER_AUTO_WRAP"
    assert strategy_spec(None, F(auto_wrap_policy="size_based_wrap", min_num_params=0)).layer_classes == ()
    both = F(transformer_cls_names_to_wrap="Block,Layer")
    assert both.transformer_cls_names_to_wrap == both.transformer_layer_cls_to_wrap == ["Block", "Layer"]
    assert strategy_spec(None, both).layer_classes == ("Block", "Layer")
    with pytest.raises(ValueError, match="one setting with two names"):
        F(transformer_cls_names_to_wrap=["A"], transformer_layer_cls_to_wrap=["B"])
    policy = ModuleWrapPolicy({nn.Linear})
    assert strategy_spec(None, F(auto_wrap_policy=policy)).wrap_policy is policy
    with pytest.raises(ValueError, match="auto_wrap_policy='ALL'"):
        F(auto_wrap_policy="ALL")
    with pytest.raises(TypeError, match="auto_wrap_policy=5"):
        F(auto_wrap_policy=5)


def test_set_auto_wrap_policy_resolves_against_the_model():
    import functools

    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

    model = BlockModel()
    plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)
    assert isinstance(plugin.auto_wrap_policy, functools.partial)
    assert plugin.auto_wrap_policy.func is transformer_auto_wrap_policy
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {nn.Sequential}
    assert plugin.transformer_cls_names_to_wrap == ["Sequential"]
    assert find_blocks_by_policy(model, plugin.auto_wrap_policy) == list(model.blocks)
    with pytest.raises(ValueError, match="matches no submodule"):
        FullyShardedDataParallelPlugin(transformer_cls_names_to_wrap=["Decoder"]).set_auto_wrap_policy(model)
    sized = FullyShardedDataParallelPlugin(auto_wrap_policy="size_based_wrap", min_num_params=200)
    sized.set_auto_wrap_policy(model)
    assert sized.auto_wrap_policy.func is size_based_auto_wrap_policy
    none = FullyShardedDataParallelPlugin(auto_wrap_policy="size_based_wrap", min_num_params=0)
    none.set_auto_wrap_policy(model)
    assert none.auto_wrap_policy == "NO_WRAP"


def test_find_blocks_by_policy_takes_every_policy_form():
    import functools

    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, size_based_auto_wrap_policy

    model = nn.Sequential(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)), nn.Linear(10, 1))
    inner = [model[0][0], model[0][1]]
    assert find_blocks_by_policy(model, lambda m: isinstance(m, nn.Linear) and m.out_features == 10) == inner
    assert find_blocks_by_policy(model, ModuleWrapPolicy({nn.Linear})) == [model[0][0], model[0][1], model[1]]
    # FSDP1's size policy counts parameters no picked descendant holds, like SIZE_BASED_WRAP.
    for size in (100, 200):
        policy = functools.partial(size_based_auto_wrap_policy, min_num_params=size)
        assert find_blocks_by_policy(model, policy) == find_blocks_by_size(model, size)


def test_ignored_parameters_by_module_or_name():
    model = BlockModel()
    assert ignored_parameters(model, [model.out]) == set(model.out.parameters())
    assert ignored_parameters(model, r"blocks\.[01]\.0") == set(model.blocks[0].parameters()) | set(
        model.blocks[1].parameters())
    with pytest.raises(ValueError, match="matches no module name"):
        ignored_parameters(model, "decoder")
    with pytest.raises(ValueError, match="not part of the prepared model"):
        ignored_parameters(model, [nn.Linear(1, 1)])
    with pytest.raises(TypeError, match="ignored_modules=5"):
        FullyShardedDataParallelPlugin(ignored_modules=5)


def test_deepspeed_plugin_takes_accelerates_arguments():
    D = DeepSpeedPlugin
    assert D(hf_ds_config={"zero_optimization": {"stage": 3}}).zero_stage == 3  # the first positional argument
    assert D(3).zero_stage == 3  # surge's older positional zero_stage still reads
    assert (D().zero_stage, D().offload_optimizer_device) == (2, "none")
    assert D(zero_stage=3).zero3_init_flag and D(zero_stage=3).is_zero3_init_enabled()
    assert not D(zero_stage=3).sync_from_rank0 and D(zero_stage=3, zero3_init_flag=True).sync_from_rank0
    stage2 = D(zero_stage=2, zero3_init_flag=True)
    assert stage2.zero3_init_flag is False and "stage 3 only" in stage2.notes[0]
    plugin = D(zero_stage=3)
    with plugin.zero3_init_context_manager(enable=False):
        assert not plugin.is_zero3_init_enabled()
    assert plugin.is_zero3_init_enabled()
    auto = D(gradient_accumulation_steps="auto", gradient_clipping="auto")
    assert (auto.gradient_accumulation_steps, auto.gradient_clipping) == (None, None)
    assert D(gradient_clipping=1.0, zero_stage=1).deepspeed_config["zero_optimization"]["stage"] == 1
    assert D(gradient_clipping=1.0).deepspeed_config["gradient_clipping"] == 1.0
    D(is_train_batch_min=False, offload_optimizer_nvme_path="/nvme", offload_param_nvme_path="none",
      zero3_save_16bit_model=True, transformer_moe_cls_names="MixtralSparseMoeBlock", msamp_opt_level="O2")
    with pytest.raises(ValueError, match="MS-AMP is not available"):
        D(enable_msamp=True)
    with pytest.raises(ValueError, match="msamp_opt_level='O3'"):
        D(msamp_opt_level="O3")
    with pytest.raises(ValueError, match="NVMe offload is DeepSpeed's own"):
        D(offload_optimizer_device="nvme")
    with pytest.raises(TypeError, match=r"hf_ds_config=1\.5"):
        D(1.5)

    class HfDeepSpeedConfig:  # transformers' / Accelerate's wrapper
        def __init__(self) -> None:
            self.config = {"zero_optimization": {"stage": 1}, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}

    wrapped = D(hf_ds_config=HfDeepSpeedConfig())
    assert wrapped.zero_stage == 1 and "optimizer" in wrapped.deepspeed_config


def test_one_process_refuses_a_meta_model():
    from surge import init_empty_weights

    with init_empty_weights():
        model = BlockModel()
    with pytest.raises(ValueError, match=r"meta device \(inp.weight, inp.bias, blocks.0.0.weight, \.\.\.\).*'single'"):
        Accelerator().prepare(model)
