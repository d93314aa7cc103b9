"""Settle, then act: every input becomes one frozen Plan before any side effect; the
strategy is chosen from the plan's StrategySpec; other layers ask the precision object."""

import dataclasses
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

import surge
from surge import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin
from surge.config.accelerator_config import DEFAULT_TIMEOUT
from surge.config.environment import LaunchEnvironment
from surge.config.resolve import MeshSpec, StrategySpec, resolve_plan, resolve_timeout, strategy_spec
from surge.precision import select_precision
from surge.strategies.registry import select_strategy
from surge.topology import Topology

DEFAULTS = {"device_placement": True, "split_batches": False, "mixed_precision": None,
            "gradient_accumulation_steps": None, "cpu": None, "project_dir": None, "project_config": None,
            "even_batches": True, "step_scheduler_with_optimizer": True, "kwargs_handlers": None,
            "deepspeed_plugin": None, "fsdp_plugin": None, "log_with": None, "dynamo_backend": None,
            "dynamo_plugin": None, "nonfinite": None}


def plan_for(**kwargs):
    return resolve_plan(**{**DEFAULTS, **kwargs})[0]


def two_process_job(monkeypatch):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)


def test_a_two_process_plan_is_settled_in_one_process_without_starting_anything(monkeypatch):
    two_process_job(monkeypatch)
    plan = plan_for(deepspeed_plugin={"zero_stage": 3, "gradient_accumulation_steps": 4, "offload_param": True},
                    mixed_precision="bf16")
    assert not dist.is_initialized()
    assert (plan.topology.world_size, plan.topology.rank, plan.topology.source) == (2, 1, "env")
    assert plan.config.gradient_accumulation_steps == 4 and plan.config.mixed_precision == "bf16"
    assert plan.strategy == StrategySpec(family="deepspeed", shard_degree=3, offload_params=True,
                                         mesh=MeshSpec(dp_shard=2))
    assert plan.timeout == DEFAULT_TIMEOUT
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.nonfinite = "skip"


def test_bad_inputs_fail_while_settling(monkeypatch):
    two_process_job(monkeypatch)
    with pytest.raises(ValueError, match="either deepspeed_plugin or fsdp_plugin"):
        plan_for(deepspeed_plugin=DeepSpeedPlugin(), fsdp_plugin=FullyShardedDataParallelPlugin())
    with pytest.raises(ValueError, match="contradicts the DeepSpeed config"):
        plan_for(mixed_precision="fp16", deepspeed_plugin=DeepSpeedPlugin(hf_ds_config={"bf16": {"enabled": True}}))
    assert not dist.is_initialized()


@pytest.mark.parametrize("plugin, want", [
    (None, {"family": "none", "shard_degree": 0}),
    (DeepSpeedPlugin(zero_stage=0), {"family": "deepspeed", "shard_degree": 0}),
    (DeepSpeedPlugin(zero_stage=1), {"family": "deepspeed", "shard_degree": 1}),
    (DeepSpeedPlugin(zero_stage=1, offload_optimizer_device="cpu"),  # ZeRO-1 + offload runs as ZeRO-2
     {"family": "deepspeed", "shard_degree": 2, "offload_optimizer": True}),
    (DeepSpeedPlugin(zero_stage=2), {"family": "deepspeed", "shard_degree": 2}),
    (FullyShardedDataParallelPlugin(sharding_strategy="SHARD_GRAD_OP"), {"family": "fsdp", "shard_degree": 2,
                                                                             "full_state_dict": True}),
    (FullyShardedDataParallelPlugin(sharding_strategy="HYBRID_SHARD", state_dict_type="SHARDED_STATE_DICT"),
     {"family": "fsdp", "shard_degree": 3, "hybrid": True, "mesh": MeshSpec(dp_replicate=2, dp_shard=2)}),
    (FullyShardedDataParallelPlugin(auto_wrap_policy="NO_WRAP", cpu_offload=True),
     {"family": "fsdp", "shard_degree": 3, "layer_classes": (), "offload_params": True, "full_state_dict": True}),
    (FullyShardedDataParallelPlugin(auto_wrap_policy="SIZE_BASED_WRAP", min_num_params=10),
     {"family": "fsdp", "shard_degree": 3, "min_num_params": 10, "full_state_dict": True}),
    (FullyShardedDataParallelPlugin(transformer_layer_cls_to_wrap=["Block"], activation_checkpointing=True),
     {"family": "fsdp", "shard_degree": 3, "layer_classes": ("Block",), "activation_checkpointing": True,
          "full_state_dict": True}),
])
def test_plugins_become_one_strategy_spec(plugin, want):
    ds = plugin if isinstance(plugin, DeepSpeedPlugin) else None
    fsdp = plugin if isinstance(plugin, FullyShardedDataParallelPlugin) else None
    spec = strategy_spec(ds, fsdp, num_nodes=2, world_size=4)
    want.setdefault("mesh", MeshSpec(dp_shard=4))
    assert spec == StrategySpec(**want)
    assert spec.mesh.size == 4


@pytest.mark.parametrize("spec, world, name", [
    (StrategySpec(), 1, "single"), (StrategySpec(shard_degree=3), 1, "single"), (StrategySpec(), 2, "ddp"),
    (StrategySpec(shard_degree=1), 2, "zero1"), (StrategySpec(shard_degree=2), 2, "fsdp"),
    (StrategySpec(shard_degree=3), 2, "fsdp"),
])
def test_the_strategy_is_chosen_from_the_spec(spec, world, name):
    topology = Topology.from_launch(LaunchEnvironment("env", 0, world, 0, world))
    strategy = select_strategy(topology, plan_for().config, select_precision("no", torch.device("cpu")), spec)
    assert strategy.name == name
    if name == "fsdp":
        assert strategy.reshard_after_forward == (spec.shard_degree == 3)


def test_single_process_offloads_the_optimizer_for_either_offload():
    topology = Topology()
    for spec in (StrategySpec(offload_optimizer=True), StrategySpec(offload_params=True)):
        assert select_strategy(topology, plan_for().config, select_precision("no", torch.device("cpu")),
                               spec).offload_optimizer


def test_the_collective_timeout_is_read_once_from_the_config(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("collective_timeout: 7\n")
    monkeypatch.setenv("SURGE_CONFIG_FILE", str(path))
    assert resolve_timeout(None) == timedelta(seconds=7)
    assert resolve_timeout(timedelta(seconds=3)) == timedelta(seconds=3)  # an explicit one wins
    plan = plan_for()
    path.write_text("collective_timeout: 9\n")  # the settled plan does not change with the file
    assert plan.timeout == timedelta(seconds=7)
    assert plan.config.timeout is None  # nothing asked explicitly


@pytest.mark.parametrize("name, param, export, scaler", [
    ("no", None, None, False), ("bf16", torch.bfloat16, torch.bfloat16, False),
    ("fp16", None, torch.float16, True),
])
def test_the_precision_answers_what_others_ask(name, param, export, scaler):
    precision = select_precision(name, torch.device("cpu"))
    assert precision.sharded_param_dtype is param
    assert precision.export_dtype is export
    assert precision.has_loss_scaler is scaler
    assert precision.loss_scale == (precision.scaler.get_scale() if scaler else 1.0)


def test_auto_batch_sizes_leave_the_plugin_alone():
    from torch.utils.data import DataLoader, TensorDataset

    plugin = DeepSpeedPlugin(hf_ds_config={"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"})
    before = dataclasses.asdict(plugin.ds_settings)
    acc = Accelerator(deepspeed_plugin=plugin)
    assert acc.deepspeed_batch_sizes is None
    acc.prepare(DataLoader(TensorDataset(torch.zeros(8, 2)), batch_size=2))
    assert (acc.deepspeed_batch_sizes.train_batch_size, acc.deepspeed_batch_sizes.gradient_accumulation_steps) == (2, 1)
    assert dataclasses.asdict(plugin.ds_settings) == before


@pytest.mark.parametrize("scale_wrt_gas", [True, False])
def test_the_engine_backward_goes_through_the_non_finite_guard(tmp_path, monkeypatch, scale_wrt_gas):
    path = tmp_path / "c.yaml"
    path.write_text("nonfinite: raise\n")
    monkeypatch.setenv("SURGE_CONFIG_FILE", str(path))
    engine, *_ = surge.initialize(model=nn.Linear(3, 1), config={
        "train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})
    # A NaN loss whose gradients are finite: only a guard that saw the loss can tell.
    loss = engine(torch.ones(2, 3)).pow(2).mean() + torch.tensor(float("nan"))
    engine.backward(loss, scale_wrt_gas=scale_wrt_gas)
    assert all(torch.isfinite(p.grad).all() for p in engine.parameters())
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        engine.step()


def test_uneven_machines_cannot_hybrid_shard():
    with pytest.raises(ValueError, match="HYBRID_SHARD needs the same number of processes on every machine; 3"):
        strategy_spec(None, FullyShardedDataParallelPlugin(sharding_strategy="HYBRID_SHARD"), num_nodes=2,
                      world_size=3)


def test_one_process_state_reads_no_config_file(tmp_path, monkeypatch):
    from surge.state import PartialState

    monkeypatch.setenv("SURGE_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    assert PartialState().num_processes == 1  # no group to time out, so no file to read


def test_a_deepspeed_fp16_section_sets_the_scaler_only_for_fp16():
    from surge.config.kwargs import GradScalerKwargs, LossScaleSettings

    fp16 = {"fp16": {"enabled": "auto", "initial_scale_power": 4}}
    assert isinstance(plan_for(mixed_precision="bf16", deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=fp16))
                      .config.scaler, GradScalerKwargs)
    scaler = plan_for(mixed_precision="fp16", deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=fp16)).config.scaler
    assert isinstance(scaler, LossScaleSettings) and scaler.initial_scale == 16.0


def test_a_failed_settle_leaves_the_project_configuration_alone(tmp_path):
    from surge import ProjectConfiguration

    project = ProjectConfiguration()
    with pytest.raises(ValueError, match="either deepspeed_plugin or fsdp_plugin"):
        plan_for(project_dir=str(tmp_path), project_config=project, deepspeed_plugin=DeepSpeedPlugin(),
                 fsdp_plugin=FullyShardedDataParallelPlugin())
    assert project.project_dir is None
    assert plan_for(project_dir=str(tmp_path), project_config=project) and project.project_dir == str(tmp_path)


def test_a_hybrid_spec_must_cover_the_job():
    topology = Topology.from_launch(LaunchEnvironment("env", 0, 4, 0, 4))
    with pytest.raises(ValueError, match=r"mesh 1 x 1 \(replicas x shard size\) does not cover the job's 4"):
        select_strategy(topology, plan_for().config, select_precision("no", torch.device("cpu")),
                        StrategySpec(shard_degree=3, hybrid=True))
