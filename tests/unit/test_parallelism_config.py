"""ParallelismConfig (Accelerate's fields and checks) and how a plan settles it: pure."""

from __future__ import annotations

import pytest
import torch

from surge import ParallelismConfig
from surge.config.resolve import MeshSpec, StrategySpec, apply_parallelism, settle_parallelism


def test_defaults_and_sizes():
    pc = ParallelismConfig()
    assert (pc.dp_replicate_size, pc.dp_shard_size, pc.tp_size, pc.cp_size, pc.sp_size) == (1, 1, 1, 1, 1)
    assert (pc.cp_backend, pc.sp_backend, pc.total_size, pc.active_mesh_dims) == ("torch", "deepspeed", 1, [])
    pc = ParallelismConfig(dp_replicate_size=2, dp_shard_size=3, tp_size=4)
    assert (pc.total_size, pc.data_parallel_size, pc.non_data_parallel_size) == (24, 6, 4)
    assert pc.dp_dim_names == ["dp_replicate", "dp_shard"] and pc.non_dp_dim_names == ["tp"]
    assert pc.dp_shard_cp_dim_names == ["dp_shard"] and pc.dp_cp_dim_names == ["dp_replicate", "dp_shard"]
    assert pc.fsdp_dim_names == ["dp_replicate", "dp_shard_cp"]
    assert pc.mesh_layout() == (("dp_replicate", "dp_shard", "tp"), (2, 3, 4))
    assert ParallelismConfig(dp_shard_size=2, cp_size=2).mesh_layout() == (("dp_shard", "cp"), (2, 2))
    assert ParallelismConfig().build_device_mesh("cpu") is None  # no enabled dim: no mesh, no collective
    assert ParallelismConfig(tp_size=2).to_json()["tp_size"] == 2


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"tp_size": 0}, "tp_size"),
    ({"dp_shard_size": 1.5}, "dp_shard_size"),
    ({"cp_size": 2, "sp_size": 2}, "mutually exclusive"),
    ({"tp_size": 2, "dp_replicate_size": 2}, "pure data parallelism"),
    ({"cp_backend": "ring"}, "cp_backend"),
    ({"sp_backend": "torch"}, "sp_backend"),
])
def test_bad_configs_raise_naming_the_value(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ParallelismConfig(**kwargs)


def test_settle_against_the_world_size():
    assert settle_parallelism(None, {}, 4) is None
    asked = ParallelismConfig()
    pc = settle_parallelism(asked, {}, 4)
    assert pc is not None and pc.dp_replicate_size == 4 and asked.dp_replicate_size == 1  # a copy, Accelerate's rule
    assert settle_parallelism(asked, {}, 1) is asked
    with pytest.raises(ValueError, match=r"dp_replicate_size=1 x dp_shard_size=2 x tp_size=1 x cp_size=1 x "
                                         r"sp_size=1\) multiply to 2, but the job has 4 processes"):
        settle_parallelism(ParallelismConfig(dp_shard_size=2), {}, 4)
    cp = settle_parallelism(ParallelismConfig(dp_shard_size=2, cp_size=2), {}, 4)
    assert cp is not None and cp.cp_handler.cp_comm_strategy == "allgather"
    assert settle_parallelism(ParallelismConfig(dp_shard_size=2, tp_size=2), {}, 4) is not None
    assert settle_parallelism(ParallelismConfig(sp_size=2, tp_size=2), {}, 4) is not None
    with pytest.raises(TypeError, match="ParallelismConfig"):
        settle_parallelism({"tp_size": 2}, {}, 2)


def test_settle_from_the_config_file_keys():
    file_values = {"parallelism_config_dp_replicate_size": 2, "parallelism_config_dp_shard_size": 2,
                   "parallelism_config_tp_size": 1}
    pc = settle_parallelism(None, file_values, 4)
    assert pc is not None and (pc.dp_replicate_size, pc.dp_shard_size) == (2, 2)
    assert settle_parallelism(None, {"parallelism_config_tp_size": 1}, 4) is None
    explicit = ParallelismConfig(dp_shard_size=4)
    assert settle_parallelism(explicit, file_values, 4) is explicit  # the argument wins


def test_apply_to_the_strategy_spec():
    fsdp = StrategySpec(family="fsdp", shard_degree=3, mesh=MeshSpec(dp_shard=4))
    hsdp = apply_parallelism(fsdp, ParallelismConfig(dp_replicate_size=2, dp_shard_size=2))
    assert hsdp.hybrid and hsdp.mesh == MeshSpec(dp_replicate=2, dp_shard=2) and hsdp.shard_degree == 3
    assert not apply_parallelism(fsdp, ParallelismConfig(dp_shard_size=4)).hybrid
    ddp = StrategySpec(mesh=MeshSpec(dp_shard=4))
    assert apply_parallelism(ddp, ParallelismConfig(dp_replicate_size=4)) is ddp
    assert apply_parallelism(fsdp, None) is fsdp
    with pytest.raises(ValueError, match="no dimension to shard over"):
        apply_parallelism(fsdp, ParallelismConfig(dp_replicate_size=4))
    tp = apply_parallelism(fsdp, ParallelismConfig(dp_shard_size=2, tp_size=2, tp_plan={"a": "colwise"}))
    assert tp.mesh == MeshSpec(dp_shard=2, tp=2) and tp.tp_plan == {"a": "colwise"} and not tp.hybrid
    with pytest.raises(ValueError, match="fsdp_plugin"):
        apply_parallelism(ddp, ParallelismConfig(dp_shard_size=2, tp_size=2))
    # Ulysses: sp is a dimension FSDP shards over (tp x sp needs no dp_shard); DDP keeps its world.
    tp_sp = apply_parallelism(fsdp, ParallelismConfig(sp_size=2, tp_size=2))
    assert tp_sp.mesh == MeshSpec(sp=2, tp=2)
    assert apply_parallelism(ddp, ParallelismConfig(sp_size=4)) is ddp
    alone = apply_parallelism(ddp, ParallelismConfig(tp_size=4, tp_plan={"a": "colwise"}))  # no plugin: tp alone
    assert alone.mesh == MeshSpec(tp=4) and alone.tp_plan == {"a": "colwise"} and alone.family == "none"
    with pytest.raises(ValueError, match="fsdp_plugin"):
        apply_parallelism(StrategySpec(family="deepspeed", shard_degree=1), ParallelismConfig(tp_size=4))


def test_fsdp_mesh_shards_over_dp_shard_times_sp():
    import torch

    from surge.config.accelerator_config import AcceleratorConfig
    from surge.precision import Precision
    from surge.strategies.fsdp import FSDP
    from surge.topology import LaunchEnvironment, Topology

    def shape(world: int, pc: ParallelismConfig) -> tuple[tuple[int, ...], tuple[str, ...]]:
        spec = apply_parallelism(StrategySpec(family="fsdp", shard_degree=3, mesh=MeshSpec(dp_shard=world)), pc)
        topology = Topology(launch=LaunchEnvironment("env", rank=0, world_size=world, local_rank=0,
                                                     local_world_size=world))
        strategy = FSDP(topology, AcceleratorConfig(), Precision(torch.device("cpu")), spec)
        return strategy._mesh_shape(), strategy._mesh_names()

    assert shape(4, ParallelismConfig(sp_size=2, tp_size=2)) == ((2, 2), ("shard", "tp"))
    assert shape(8, ParallelismConfig(dp_shard_size=2, sp_size=2, tp_size=2)) == ((4, 2), ("shard", "tp"))
    assert shape(8, ParallelismConfig(dp_replicate_size=2, dp_shard_size=2, sp_size=2)) == (
        (2, 4), ("replicate", "shard"))


def test_sequence_parallel_handlers_and_batches():
    import torch

    from surge.config.parallelism import DeepSpeedSequenceParallelConfig, TorchContextParallelConfig
    from surge.parallel.wiring import SequenceShards

    pc = ParallelismConfig(sp_size=2)
    assert isinstance(pc.sp_handler, DeepSpeedSequenceParallelConfig)  # Accelerate's default handler
    assert pc.sp_handler.sp_attn_implementation == "sdpa" and pc.sp_handler.sp_seq_length_is_variable
    assert pc.shard_size == 2 and ParallelismConfig(dp_shard_size=2, sp_size=2, tp_size=2).shard_size == 4
    with pytest.raises(ValueError, match="needs sp_seq_length"):
        DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=False)
    with pytest.raises(ValueError, match=r"sp_attn_implementation='flash_attention_2'.*use 'sdpa'"):
        DeepSpeedSequenceParallelConfig(sp_attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="cp_comm_strategy='ring'"):
        TorchContextParallelConfig(cp_comm_strategy="ring")
    ids = torch.arange(16).reshape(2, 8)
    second = SequenceShards(1, 2, pc.sp_handler)({"input_ids": ids, "labels": ids})
    assert second["input_ids"].tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert second["shift_labels"].tolist() == [[5, 6, 7, -100], [13, 14, 15, -100]]  # shifted before the cut
    assert second["position_ids"].tolist() == [[4, 5, 6, 7]] * 2 and "labels" not in second
    with pytest.raises(TypeError, match=r"needs dict batches.*got tuple"):
        SequenceShards(0, 2, None)((ids, ids))
    fixed = SequenceShards(0, 2, DeepSpeedSequenceParallelConfig(sp_seq_length=6, sp_seq_length_is_variable=False))
    with pytest.raises(ValueError, match="sequence length 8, but sp_seq_length=6"):
        fixed({"input_ids": ids})


def test_one_process_accelerator():
    from surge import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.parallelism_config is None and acc.torch_device_mesh is None
    with pytest.raises(RuntimeError, match="parallelism_config"):
        _ = acc.tensor_parallel_rank
    pc = ParallelismConfig()
    acc = Accelerator(cpu=True, parallelism_config=pc)
    assert acc.parallelism_config is pc and acc.torch_device_mesh is None and acc.state.parallelism_config is pc
    assert (acc.data_parallel_rank, acc.data_parallel_shard_rank, acc.tensor_parallel_rank,
            acc.context_parallel_rank) == (0, 0, 0, 0)
    assert acc.is_composable_parallelism_enabled is False
    with pytest.raises(ValueError, match="multiply to 2, but the job has 1 processes"):
        Accelerator(cpu=True, parallelism_config=ParallelismConfig(dp_shard_size=2))


def test_config_file_sizes_that_do_not_fit_the_run_are_ignored_with_a_warning(tmp_path, monkeypatch):
    from surge import Accelerator
    from surge.config.file import write_config

    path = tmp_path / "config.yaml"
    write_config({"parallelism_config_dp_shard_size": 4}, str(path))
    monkeypatch.setenv("SURGE_CONFIG_FILE", str(path))
    with pytest.warns(UserWarning, match=r"parallelism_config sizes are ignored.*dp_shard_size=4"):
        acc = Accelerator(cpu=True)
    assert acc.parallelism_config is None


def test_tensor_parallel_plans_from_transformers_and_users():
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel
    from transformers import LlamaConfig, LlamaForCausalLM

    from surge.strategies.tensor_parallel import model_plan, resolve_plan, style_from_string

    assert type(style_from_string("colwise")) is ColwiseParallel
    assert style_from_string("colwise_rep").output_layouts == (Replicate(),)
    assert type(style_from_string("rowwise")) is RowwiseParallel
    assert style_from_string("rowwise_rep").input_layouts == (Replicate(),)
    assert type(style_from_string("sequence_parallel")) is SequenceParallel
    assert style_from_string("replicate") is None
    with pytest.raises(ValueError, match="'moe_tp_experts' is not mapped"):
        style_from_string("moe_tp_experts")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    plan = model_plan(model)
    assert plan["model.layers.*.self_attn.q_proj"] == "colwise" and plan["lm_head"] == "colwise_gather_output"
    assert plan["model.embed_tokens"] == "embedding_rowwise"
    resolved = resolve_plan(model, None)
    assert type(resolved["model.layers.1.mlp.down_proj"]) is RowwiseParallel
    assert len(resolved) == 2 * 7 + 2  # + lm_head, embed_tokens
    mine = ColwiseParallel()
    assert resolve_plan(model, {"model.layers.0.mlp.up_proj": mine}) == {"model.layers.0.mlp.up_proj": mine}
    with pytest.raises(ValueError, match="names no module"):
        resolve_plan(model, {"model.layers.*.nope": "colwise"})
    with pytest.raises(ValueError, match="has no tensor-parallel plan"):
        resolve_plan(torch.nn.Linear(2, 2), None)


def test_loss_parallel_needs_an_output_head_and_reaches_the_spec():
    from torch import nn

    from surge.config.parallelism import TorchTensorParallelConfig
    from surge.strategies.tensor_parallel import apply_tensor_parallel

    net = nn.Sequential()
    net.add_module("fc", nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"loss_parallel=True\): Sequential has no output head"):
        apply_tensor_parallel(net, None, {"fc": "colwise"}, loss_parallel=True)  # refused before any collective
    fsdp = StrategySpec(family="fsdp", shard_degree=3, mesh=MeshSpec(dp_shard=4))
    handler = TorchTensorParallelConfig(loss_parallel=True)
    assert apply_parallelism(fsdp, ParallelismConfig(dp_shard_size=2, tp_size=2, tp_handler=handler)).loss_parallel
    assert not apply_parallelism(fsdp, ParallelismConfig(dp_shard_size=2, tp_size=2)).loss_parallel


def test_unwrapping_sees_through_the_loss_parallel_forward():
    import torch
    from torch import nn

    from surge.precision import BF16
    from surge.precision.base import AutocastForward, remove_autocast_forward
    from surge.strategies.tensor_parallel import LossParallelForward

    layer = nn.Linear(2, 2)
    BF16(torch.device("cpu")).wrap_forward(layer)
    layer.forward = LossParallelForward(layer.forward)
    remove_autocast_forward(layer)
    wrapper = layer.__dict__["forward"]
    assert isinstance(wrapper, LossParallelForward) and not isinstance(wrapper.forward, AutocastForward)
    assert layer(torch.ones(1, 2)).dtype == torch.float32  # no autocast left


def test_context_parallel_handler_from_the_environment_and_the_config_file(monkeypatch):
    from surge.utils import TorchContextParallelConfig

    assert ParallelismConfig().cp_handler is None
    monkeypatch.setenv("PARALLELISM_CONFIG_CP_COMM_STRATEGY", "alltoall")  # what Accelerate's launcher sets
    assert ParallelismConfig(cp_size=2).cp_handler.cp_comm_strategy == "alltoall"
    monkeypatch.delenv("PARALLELISM_CONFIG_CP_COMM_STRATEGY")
    assert ParallelismConfig(cp_size=2).cp_handler.cp_comm_strategy == "allgather"
    file_values = {"parallelism_config_cp_size": 2, "parallelism_config_cp_comm_strategy": "alltoall"}
    pc = settle_parallelism(None, file_values, 2)
    assert pc is not None and pc.cp_handler.cp_comm_strategy == "alltoall"
    with pytest.raises(ValueError, match=r"cp_comm_strategy='ring' must be 'allgather' or 'alltoall'"):
        TorchContextParallelConfig(cp_comm_strategy="ring")
    with pytest.raises(TypeError, match="must be a TorchContextParallelConfig"):
        ParallelismConfig(cp_size=2, cp_handler={"cp_comm_strategy": "alltoall"})
    fsdp = StrategySpec(family="fsdp", shard_degree=3, mesh=MeshSpec(dp_shard=4))
    assert apply_parallelism(fsdp, ParallelismConfig(tp_size=2, cp_size=2)).mesh == MeshSpec(tp=2, cp=2)
    ddp = StrategySpec(mesh=MeshSpec(dp_shard=2))
    assert apply_parallelism(ddp, ParallelismConfig(cp_size=2)) is ddp  # DDP averages over every process


def test_context_parallel_buffers_are_checked():
    from surge.parallel.context import check_buffers

    ids = torch.zeros(2, 8, dtype=torch.long)
    buffers, dims = check_buffers((ids, ids.T.clone()), (-1, 0), 2)
    assert buffers[0] is ids and buffers[1].shape == (8, 2) and dims == [1, 0]  # negative dims made positive
    for args, error, words in (
            (([], [], 2), ValueError, "needs the tensors to split"),
            (([ids], [1, 1], 2), ValueError, "1 buffers but 2 buffer_seq_dims"),
            (([ids], [2], 2), ValueError, r"buffer_seq_dims\[0\]=2 is out of range .* \(2, 8\)"),
            (([ids[:, :4], ids[:, 4:]], [1, 1], 2), ValueError, r"buffers\[0\] and buffers\[1\] share memory"),
            (([ids, ids[:, :4].clone()], [1, 1], 2), ValueError, r"sequence lengths differ \(\[8, 4\]\)"),
            (([ids], [1], 3), ValueError, r"sequence length 8 does not split over cp_size=3; pad .* multiple of 6"),
            (([torch.nn.Parameter(torch.zeros(2, 8))], [1], 2), TypeError, "never parameters"),
            (([[1, 2]], [0], 2), TypeError, r"buffers\[0\] is a list")):
        with pytest.raises(error, match=words):
            check_buffers(*args)


def test_context_parallel_model_hooks():
    """prepare under cp: attention masks dropped and causal asked for on *self_attn modules;
    a sliding-window model refused (its mask cannot be expressed by ring attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from surge.parallel.context import prepare_model

    seen = {}

    class Attention(torch.nn.Module):
        def forward(self, x, attention_mask=None, is_causal=None):
            seen.update(mask=attention_mask, causal=is_causal)
            return x

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attention()

        def forward(self, x):
            return self.self_attn(x, attention_mask=torch.ones(2))

    block = prepare_model(Block())
    assert prepare_model(block) is block  # once
    block(torch.zeros(1))
    assert seen == {"mask": None, "causal": True}
    config = {"vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2}
    prepare_model(LlamaForCausalLM(LlamaConfig(**config)))
    with pytest.raises(ValueError, match=r"cannot express attention layers of type \['sliding_attention'\] "
                                         r"\(model MistralForCausalLM\)"):
        prepare_model(MistralForCausalLM(MistralConfig(**config, sliding_window=4)))


def test_sizes_left_unset_are_the_launchers(monkeypatch):
    """Accelerate's rule: a size (or backend) not given is PARALLELISM_CONFIG_*_SIZE from the
    launcher (Accelerate's nd_parallel_trainer.py builds a bare ParallelismConfig()), else 1;
    a given one wins; a bad variable is named."""
    monkeypatch.setenv("PARALLELISM_CONFIG_CP_SIZE", "2")
    monkeypatch.setenv("PARALLELISM_CONFIG_DP_SHARD_SIZE", "3")
    pc = ParallelismConfig()
    assert (pc.dp_shard_size, pc.cp_size, pc.tp_size, pc.total_size) == (3, 2, 1, 6)
    assert ParallelismConfig(cp_size=1, dp_shard_size=1).total_size == 1
    assert pc.from_environment == ("dp_shard_size", "cp_size")
    with pytest.raises(ValueError, match=r"multiply to 4, but the job has 2 processes.*\(cp_size came from the "
                                         r"launcher's PARALLELISM_CONFIG_\*_SIZE variables"):
        settle_parallelism(ParallelismConfig(dp_shard_size=2), {}, 2)
    monkeypatch.setenv("PARALLELISM_CONFIG_TP_SIZE", "two")
    with pytest.raises(ValueError, match="tp_size"):
        ParallelismConfig()
