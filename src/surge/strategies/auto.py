"""Strategy "auto": the strategy chosen at ``prepare`` from the model in hand.

``Accelerator(strategy="auto")`` (config ``strategy: auto``, ``surge launch --strategy
auto``) starts with the plain strategy and, when ``prepare`` first sees a model, counts its
parameters, reads the precision, the optimizer passed along (Adam-family state or less),
the number of processes and the memory each process may use (the device's free memory,
or the host's available memory shared by the local processes, or ``memory_budget_gb``),
and takes the lightest rung of ``surge.memory.ladder`` whose model states fit (see
[Note: strategy "auto"] in memory.py). The choice and its numbers are printed by the
main process; ``surge estimate-memory --recommend`` prints the same choice beforehand.

Every process must choose the same: the budget is the smallest over the processes (one
all-reduce, once).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from surge.config.resolve import MeshSpec, StrategySpec
from surge.memory import Recommendation, count_parameters, optimizer_states, recommend
from surge.topology import Topology

_PRECISION_BYTES = {"bf16": "bf16", "fp16": "fp16", "fp8": "bf16", "no": "fp32"}


def available_bytes(topology: Topology) -> float:
    """The memory this process may use: the GPU's free memory, else the host's available
    memory divided among the processes of this machine."""
    device = torch.device(topology.device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    import psutil

    return float(psutil.virtual_memory().available) / max(1, topology.local_world_size)


def agreed_budget(topology: Topology, budget_gb: float | None) -> float:
    """The per-process budget in bytes every process agrees on: ``budget_gb`` when given,
    else the smallest available memory over the processes (one all-reduce)."""
    if budget_gb is not None:
        return budget_gb * 1e9
    mine = available_bytes(topology)
    if topology.is_distributed:
        import torch.distributed as dist

        value = torch.tensor([mine], dtype=torch.float64, device=topology.device if topology.backend == "nccl"
                             else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        mine = float(value.item())
    return mine


def choose(model: nn.Module, optimizer: Any, *, topology: Topology, mixed_precision: str,
           budget_gb: float | None) -> Recommendation:
    """The rung for ``model`` (see the module docstring)."""
    return recommend(count_parameters(model), topology.world_size, agreed_budget(topology, budget_gb),
                     _PRECISION_BYTES.get(mixed_precision, "fp32"), optimizer_states(optimizer),
                     trainable_params=count_parameters(model, trainable_only=True))


def spec_for(choice: Recommendation, base: StrategySpec, world_size: int) -> StrategySpec:
    """The StrategySpec that runs ``choice``: DDP / ZeRO-1 as themselves, ZeRO-2/3 on FSDP2,
    with offload and activation checkpointing as chosen (other settings from ``base``)."""
    strategy = choice.rung.strategy
    return dataclasses.replace(
        base, family="fsdp" if strategy.stage >= 2 else "none", shard_degree=strategy.stage,
        offload_optimizer=strategy.offload_optimizer, offload_params=strategy.offload_param,
        activation_checkpointing=choice.rung.activation_checkpointing, mesh=MeshSpec(dp_shard=world_size))


def choose_for(accelerator: Any, objects: Any) -> Recommendation | None:
    """Strategy "auto" at the first ``prepare`` that holds a model: choose from it (and the
    optimizer passed along), swap in that strategy and print the choice on the main
    process. Does nothing once a model is prepared, or without a model among ``objects``.
    Every process must call it (the budget is agreed on)."""
    from surge.strategies.registry import select_strategy

    model = next((o for o in objects if isinstance(o, nn.Module)), None)
    if model is None or accelerator._models:
        return None
    optimizer = next((o for o in objects if isinstance(o, torch.optim.Optimizer)), None)
    plan = accelerator.plan
    choice = choose(model, optimizer, topology=plan.topology, mixed_precision=plan.config.mixed_precision,
                    budget_gb=plan.memory_budget_gb)
    spec = spec_for(choice, plan.strategy, plan.topology.world_size)
    accelerator.plan = dataclasses.replace(plan, strategy=spec, auto_strategy=False)
    accelerator.strategy = select_strategy(plan.topology, plan.config, accelerator.precision, spec)
    if plan.topology.is_main_process:
        print(f"surge: {choice.explain()}", flush=True)
    return choice


def heavier_than_needed(accelerator: Any, objects: Any) -> str | None:
    """The advice when the configured strategy is far heavier than the model needs:
    ZeRO-3 or CPU offload while plain DDP's model states would take at most a tenth of
    the memory (on a GPU, or wherever ``memory_budget_gb`` declares the memory). None
    otherwise. Every process must call it (the budget is agreed on)."""
    spec = accelerator.plan.strategy
    pc = accelerator.plan.parallelism
    if pc is not None and pc.non_data_parallel_size > 1:
        return None  # tensor / sequence parallel need FSDP: "use DDP" would be refused
    heavy = spec.shard_degree >= 3 or spec.offload_optimizer or spec.offload_params
    topology = accelerator.plan.topology
    budget_gb = accelerator.plan.memory_budget_gb
    if not heavy or not topology.is_distributed or (budget_gb is None and not topology.device.startswith("cuda")):
        return None
    model = next((o for o in objects if isinstance(o, nn.Module)), None)
    if model is None:
        return None
    optimizer = next((o for o in objects if isinstance(o, torch.optim.Optimizer)), None)
    budget = agreed_budget(topology, budget_gb)
    params = count_parameters(model)
    from surge.memory import STRATEGIES, human_bytes, human_count, model_state_bytes

    ddp, _ = model_state_bytes(params, STRATEGIES[0], topology.world_size, "fp32", optimizer_states(optimizer),
                               count_parameters(model, trainable_only=True))
    if ddp > 0.1 * budget:
        return None
    what = "ZeRO-3" if spec.shard_degree >= 3 else f"ZeRO-{spec.shard_degree}"
    if spec.offload_optimizer or spec.offload_params:
        what += " with CPU offload"
    return (f"{what} for a {human_count(params)}-parameter model whose model states under plain DDP take "
            f"{human_bytes(ddp)} per process, {ddp / budget:.1%} of the {human_bytes(budget)} each process has: "
            "sharding and offload only add communication here. Drop the DeepSpeed/FSDP plugin (DDP), or let surge "
            "choose with strategy='auto'.")
