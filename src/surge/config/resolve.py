"""Settle, then act: every input of an Accelerator becomes one frozen :class:`Plan`.

Constructor arguments, the config file (or what ``surge launch`` handed over), the
plugins and the launch environment are combined here, before the first side effect.
The Accelerator's constructor then only acts on the plan (starts the process group,
builds the strategy); layers below read the plan, never the raw inputs. Everything
that can be wrong with the inputs fails here, so a constructor that raises leaves
nothing behind (see [Note: several Accelerators] in accelerator.py).

Order of precedence, for every setting: an explicit argument, then the DeepSpeed
config (for what it sets), then the config file / launcher, then the default.
Conflicts between an argument and the config file warn (the argument wins);
contradictions between an argument and a DeepSpeed config raise.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from surge.config.accelerator_config import DEFAULT_TIMEOUT, AcceleratorConfig
from surge.config.dataloader import DataLoaderConfiguration, settle_dataloader_config
from surge.config.file import active_values, resolve_accelerator_args
from surge.config.kwargs import GradientAccumulationPlugin, GradScalerKwargs
from surge.config.parallelism import ParallelismConfig, TorchContextParallelConfig
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin, plugins_from_config
from surge.config.project import ProjectConfiguration
from surge.deepspeed.ds_config import DeepSpeedSettings, resolve_batch_sizes

if TYPE_CHECKING:
    from surge.topology import Topology
    from surge.tracking.base import GeneralTracker

Family = Literal["none", "deepspeed", "fsdp"]


def resolve_timeout(explicit: timedelta | None, file_values: dict[str, Any] | None = None) -> timedelta:
    """The collective timeout: ``explicit`` (``InitProcessGroupKwargs(timeout=)`` /
    ``PartialState(timeout=)``), else the active config's ``collective_timeout``
    (``file_values``, or read now), else ``DEFAULT_TIMEOUT`` (10 minutes). Read once,
    when a plan is settled."""
    if explicit is not None:
        return explicit
    seconds = (file_values if file_values is not None else active_values()[0]).get("collective_timeout")
    return timedelta(seconds=seconds) if seconds is not None else DEFAULT_TIMEOUT


@dataclass(frozen=True)
class MeshSpec:
    """The device-mesh dimensions of a job (Accelerate's ``ParallelismConfig`` names).

    ``dp_replicate`` machines (or a ``ParallelismConfig``'s ``dp_replicate_size``) x
    ``dp_shard`` processes for HYBRID_SHARD, else one dimension; ``tp`` > 1 under FSDP is
    tensor parallel x FSDP2 (tp innermost). FSDP shards over ``dp_shard x cp x sp`` (the
    ranks of a sequence share the model and average gradients like data-parallel ones).
    """

    dp_replicate: int = 1
    """Replicas of the (sharded) model: data-parallel groups that do not shard together."""
    dp_shard: int = 1
    """Processes that shard the model's parameters/gradients/optimizer state among them."""
    tp: int = 1
    """Tensor-parallel degree."""
    cp: int = 1
    """Context (ring-attention) parallel degree."""
    sp: int = 1
    """Sequence (Ulysses) parallel degree."""

    @property
    def size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.cp * self.sp


@dataclass(frozen=True)
class StrategySpec:
    """What the user asked of the strategy, whatever plugin or config file said it.

    ``strategies.registry.select_strategy`` turns it, with the topology, into a strategy;
    nothing below reads a plugin.
    """

    family: Family = "none"
    """Who asked: no plugin, a DeepSpeed plugin/config, or an FSDP plugin (a sharded
    strategy reports it as ``accelerator.distributed_type``: DEEPSPEED or FSDP)."""
    shard_degree: int = 0
    """ZeRO's stages: 0 replicate (DDP); 1 shard optimizer state; 2 + gradients; 3 + parameters."""
    offload_params: bool = False
    """Keep parameter shards (and so their step) on the CPU."""
    offload_optimizer: bool = False
    """fp32 master weights and optimizer state on the CPU, stepped there."""
    hybrid: bool = False
    """HYBRID_SHARD: shard within a machine, replicate across machines."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward."""
    layer_classes: tuple[str, ...] | None = None
    """Block class names to shard one by one; None finds them; () shards only the root."""
    min_num_params: int | None = None
    """Size-based block discovery: submodules with at least this many parameters."""
    full_state_dict: bool = False
    """Sharded models write the full checkpoint layout (FSDP FULL_STATE_DICT), gathered to
    the main process."""
    mesh: MeshSpec = field(default_factory=MeshSpec)
    """The device-mesh dimensions (see :class:`MeshSpec`)."""
    wrap_policy: Any = None
    """A callable block policy (FSDP1's ``(module, recurse, nonwrapped_numel)`` or
    ``(module) -> bool``, or torch's ``_Policy``) in place of layer classes / size."""
    mp_policy: Any = None
    """The user's FSDP2 ``MixedPrecisionPolicy``; None: the precision chooses."""
    ignored_modules: Any = None
    """Modules (or a regex of module names) whose parameters are not sharded."""
    forward_prefetch: bool = False
    """Each block prefetches the next one's all-gather in forward."""
    load_from_rank0: bool = False
    """Every process starts from rank 0's weights, sent into its shards at prepare (see
    [Note: a model built on the meta device] in strategies/meta.py)."""
    param_init_fn: Any = None
    """Run on every submodule of a model that is on the meta device on every process."""
    offload_pin_memory: bool | None = None
    """Pin offloaded parameter shards (None: when the device is a GPU)."""
    tp_plan: Any = None
    """With ``mesh.tp > 1``: the user's tensor-parallel plan (None: the model's own)."""
    loss_parallel: bool = False
    """With ``mesh.tp > 1``: the loss on vocabulary-split logits (``TorchTensorParallelConfig``)."""

    @property
    def zero_fills_grads(self) -> bool:
        """DeepSpeed's rule for a trainable parameter that got no gradient (a pooler the
        loss never uses): it is stepped with a zero gradient (so its optimizer state exists
        and weight decay and momentum advance, as under DeepSpeed), and DDP is built to
        find such parameters instead of failing on the next forward. Without a DeepSpeed
        config, torch's rule: the optimizer skips it, and DDP needs
        ``find_unused_parameters=True`` (Accelerate's behaviour). See [Note: unused
        parameters] in optim.py."""
        return self.family == "deepspeed"


def strategy_spec(deepspeed_plugin: DeepSpeedPlugin | None, fsdp_plugin: FullyShardedDataParallelPlugin | None,
                  num_nodes: int = 1, world_size: int = 1) -> StrategySpec:
    """The strategy the plugins ask for (pure).

    Raises:
        ValueError: both plugins.
    """
    if deepspeed_plugin is not None and fsdp_plugin is not None:
        raise ValueError("pass either deepspeed_plugin or fsdp_plugin, not both.")
    if deepspeed_plugin is not None:
        offload_optimizer = deepspeed_plugin.offload_optimizer_device == "cpu"
        stage = int(deepspeed_plugin.zero_stage or 0)  # settled (an int) by the plugin
        if stage == 1 and offload_optimizer:
            # ZeRO-1 with its optimizer offloaded runs as ZeRO-2 (as in DeepSpeed, one
            # optimizer serves both stages): once the state is on the CPU, sharding the
            # gradients too only saves more device memory.
            stage = 2
        return StrategySpec(family="deepspeed", shard_degree=stage,
                            offload_params=deepspeed_plugin.offload_param_device == "cpu",
                            offload_optimizer=offload_optimizer,
                            activation_checkpointing=deepspeed_plugin.activation_checkpointing,
                            mesh=MeshSpec(dp_shard=world_size), load_from_rank0=deepspeed_plugin.sync_from_rank0)
    if fsdp_plugin is not None:
        kind = fsdp_plugin.sharding_strategy
        policy = fsdp_plugin.auto_wrap_policy
        layer_classes: tuple[str, ...] | None = None
        if policy == "NO_WRAP" or (policy == "SIZE_BASED_WRAP" and fsdp_plugin.min_num_params == 0):
            layer_classes = ()
        elif fsdp_plugin.transformer_cls_names_to_wrap is not None and policy == "TRANSFORMER_AUTO_WRAP":
            layer_classes = tuple(fsdp_plugin.transformer_cls_names_to_wrap)
        hybrid = kind.startswith("HYBRID")
        if hybrid and world_size % num_nodes:
            raise ValueError(f"HYBRID_SHARD needs the same number of processes on every machine; {world_size} "
                             f"processes on {num_nodes} machines. Use FULL_SHARD, or launch equal processes per "
                             "machine.")
        mesh = MeshSpec(dp_replicate=num_nodes, dp_shard=world_size // num_nodes) if hybrid \
            else MeshSpec(dp_shard=world_size)
        degrees = {"FULL_SHARD": 3, "SHARD_GRAD_OP": 2, "HYBRID_SHARD": 3, "HYBRID_SHARD_ZERO2": 2, "NO_SHARD": 0}
        return StrategySpec(
            family="fsdp", shard_degree=degrees[kind], offload_params=bool(fsdp_plugin.cpu_offload), hybrid=hybrid,
            activation_checkpointing=bool(fsdp_plugin.activation_checkpointing), layer_classes=layer_classes,
            min_num_params=fsdp_plugin.min_num_params if policy == "SIZE_BASED_WRAP" and layer_classes is None
            else None,
            full_state_dict=fsdp_plugin.state_dict_type == "FULL_STATE_DICT", mesh=mesh,
            wrap_policy=None if isinstance(policy, str) else policy, mp_policy=fsdp_plugin.mixed_precision_policy,
            ignored_modules=fsdp_plugin.ignored_modules, forward_prefetch=bool(fsdp_plugin.forward_prefetch),
            load_from_rank0=bool(fsdp_plugin.sync_module_states), param_init_fn=fsdp_plugin.param_init_fn,
            offload_pin_memory=getattr(fsdp_plugin, "_offload_pin_memory", None))
    return StrategySpec(mesh=MeshSpec(dp_shard=world_size))


@dataclass(frozen=True)
class Plan:
    """Everything an Accelerator runs with, settled before any side effect."""

    config: AcceleratorConfig
    """Precision, accumulation, loss-scaler and autocast settings, DDP options, backend,
    the explicitly asked collective timeout, loader behaviour."""
    topology: Topology
    """Where this process sits (read, not yet acted on: no process group)."""
    timeout: timedelta
    """The collective timeout a process group this plan starts gets (see :func:`resolve_timeout`)."""
    strategy: StrategySpec
    """What the strategy must do."""
    max_grad_norm: float | None = None
    """Clip the gradient norm at every optimizer step (a DeepSpeed config's ``gradient_clipping``)."""
    nonfinite: str = "ignore"
    """The non-finite guard's mode: "ignore", "skip" or "raise"."""
    advice: str = "on"
    """Run-time warnings for common mistakes (surge/advice.py): "on" or "off"."""
    dynamo: TorchDynamoPlugin | None = None
    """``torch.compile`` settings; None: eager."""
    log_with: tuple[str | GeneralTracker, ...] = ()
    """The trackers to start at ``init_trackers``."""
    trackers_missing: tuple[str, ...] = ()
    """Trackers "all" left out because their package is missing."""
    deepspeed: DeepSpeedSettings | None = None
    """The DeepSpeed config the plugin carried, read-only (batch sizes, sections)."""
    deepspeed_plugin: DeepSpeedPlugin | None = None
    fsdp_plugin: FullyShardedDataParallelPlugin | None = None
    """The plugins as given (or built from the config file), for the user to read back."""
    warnings: tuple[str, ...] = ()
    """What the main process reports once the plan is acted on."""
    parallelism: ParallelismConfig | None = None
    """The mesh sizes (given, or from the config file / launcher), checked against the
    world size; the Accelerator builds its ``DeviceMesh``. None: no ParallelismConfig."""
    auto_strategy: bool = False
    """Strategy "auto": ``prepare`` chooses the strategy from the model (strategies/auto.py)."""
    memory_budget_gb: float | None = None
    """GB each process may use, for strategy "auto" (None: the free memory)."""


@dataclass(frozen=True)
class BatchSizes:
    """DeepSpeed's batch arithmetic for a run: ``train = micro x accumulation x processes``."""

    train_batch_size: int
    train_micro_batch_size_per_gpu: int
    gradient_accumulation_steps: int


def _dynamo_plugin(backend: Any, plugin: TorchDynamoPlugin | None) -> TorchDynamoPlugin | None:
    """The compile settings asked for, checked against the backends torch has.

    Raises:
        TypeError: ``plugin`` is not a TorchDynamoPlugin, or ``backend`` not a string.
        ValueError: an unknown backend (the known ones are listed).
    """
    if plugin is not None and not isinstance(plugin, TorchDynamoPlugin):
        raise TypeError(f"dynamo_plugin={plugin!r} must be a TorchDynamoPlugin.")
    if plugin is None:
        if backend is None or (isinstance(backend, str) and backend.strip().lower() in ("no", "none", "")):
            return None
        if not isinstance(backend, str):
            raise TypeError(f"dynamo_backend={backend!r} must be a backend name such as 'inductor', or 'no'.")
        plugin = TorchDynamoPlugin(backend=backend)
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if plugin.backend not in known:
        raise ValueError(f"dynamo_backend={plugin.backend!r} is not a torch.compile backend; use one of {known} "
                         "(or 'no' for eager).")
    return plugin


def _deepspeed_warning(ds: DeepSpeedSettings) -> str | None:
    # The optimizer and scheduler sections are applied: prepare builds them for a
    # DummyOptim / DummyScheduler (surge/deepspeed/dummy.py).
    if not ds.unhonoured:
        return None
    return "the DeepSpeed config sets keys surge accepts but does not apply: " + ", ".join(ds.unhonoured) + "."


def resolve_plan(
    *,
    device_placement: bool,
    split_batches: bool | None,
    mixed_precision: str | None,
    gradient_accumulation_steps: int | None,
    cpu: bool | None,
    project_dir: str | os.PathLike[str] | None,
    project_config: ProjectConfiguration | None,
    even_batches: bool | None,
    step_scheduler_with_optimizer: bool,
    scheduler_steps: str = "num_processes",
    kwargs_handlers: list[Any] | None,
    deepspeed_plugin: DeepSpeedPlugin | dict[str, Any] | None,
    fsdp_plugin: FullyShardedDataParallelPlugin | None,
    log_with: Any,
    dynamo_backend: str | None,
    dynamo_plugin: TorchDynamoPlugin | None,
    nonfinite: str | None,
    gradient_accumulation_plugin: GradientAccumulationPlugin | None = None,
    strategy: str | None = None,
    memory_budget_gb: float | None = None,
    accumulation_divisor: str = "cycle",
    dataloader_config: DataLoaderConfiguration | None = None,
    parallelism_config: ParallelismConfig | None = None,
    warnings: str | None = None,
) -> tuple[Plan, ProjectConfiguration]:
    """The Accelerator's arguments, settled (see the module docstring). Reads the
    environment and the config file, starts nothing; changes nothing but, once every
    check has passed, the given ``project_config`` (its directories).

    Returns:
        The plan, and the project configuration (a mutable value the Accelerator owns:
        it counts automatic checkpoint numbers).

    Raises:
        TypeError / ValueError: any bad argument, plugin, config-file value or
            combination, named with the fix.
    """
    from surge.guard import check_mode
    from surge.topology import Topology
    from surge.tracking import resolve_log_with

    chosen_trackers, trackers_missing = resolve_log_with(log_with)
    accumulation = accumulation_settings(gradient_accumulation_plugin, gradient_accumulation_steps)
    if gradient_accumulation_plugin is not None:
        gradient_accumulation_steps = gradient_accumulation_plugin.num_steps or 1
    loaders = settle_dataloader_config(dataloader_config, split_batches, even_batches)
    if isinstance(deepspeed_plugin, dict):
        deepspeed_plugin = DeepSpeedPlugin.from_dict(deepspeed_plugin)
    if deepspeed_plugin is not None and not isinstance(deepspeed_plugin, DeepSpeedPlugin):
        raise TypeError(f"deepspeed_plugin={deepspeed_plugin!r} must be a DeepSpeedPlugin or a dict.")
    if fsdp_plugin is not None and not isinstance(fsdp_plugin, FullyShardedDataParallelPlugin):
        raise TypeError(f"fsdp_plugin={fsdp_plugin!r} must be a FullyShardedDataParallelPlugin.")
    if gradient_accumulation_steps is None and deepspeed_plugin is not None:
        gradient_accumulation_steps = deepspeed_plugin.gradient_accumulation_steps
    asked_steps = gradient_accumulation_steps  # by the script or the plugin: wins over derived ones
    ds = deepspeed_plugin.ds_settings if deepspeed_plugin is not None else None
    if ds is not None and ds.mixed_precision is not None:
        if mixed_precision is None:
            mixed_precision = ds.mixed_precision
        elif mixed_precision != ds.mixed_precision:
            raise ValueError(f"mixed_precision={mixed_precision!r} contradicts the DeepSpeed config, which asks "
                             f"for {ds.mixed_precision!r}; set it in one place (or \"auto\" in the config).")
    active = active_values()  # the config file (or the launcher's handoff), read once
    resolved, conflicts, sharding = resolve_accelerator_args(
        {"mixed_precision": mixed_precision, "gradient_accumulation_steps": gradient_accumulation_steps, "cpu": cpu,
         "dynamo_backend": dynamo_backend, "nonfinite": nonfinite, "warnings": warnings, "strategy": strategy,
         "memory_budget_gb": memory_budget_gb}, active
    )
    nonfinite_mode = check_mode(resolved.pop("nonfinite"))
    advice = resolved.pop("warnings")
    if advice not in ("on", "off"):
        raise ValueError(f"warnings={advice!r} must be \"on\" or \"off\" (run-time warnings for common mistakes).")
    auto_strategy = _check_strategy(resolved.pop("strategy"))
    budget = _check_budget(resolved.pop("memory_budget_gb"))
    dynamo = _dynamo_plugin(resolved.pop("dynamo_backend"), dynamo_plugin)
    if dynamo is not None and dynamo_plugin is None:
        # The config file's / launcher's compile settings (--dynamo_mode, --dynamo_use_fullgraph, ...).
        file_values = active[0]
        dynamo = dataclasses.replace(
            dynamo, mode=file_values.get("dynamo_mode"), fullgraph=bool(file_values.get("dynamo_use_fullgraph")),
            dynamic=file_values.get("dynamo_use_dynamic"),
            use_regional_compilation=bool(file_values.get("dynamo_use_regional_compilation")))
    if sharding and deepspeed_plugin is None and fsdp_plugin is None:
        # The config file / launcher asks for sharding and the script passed no plugin.
        deepspeed_plugin, fsdp_plugin = plugins_from_config(sharding)
    config = AcceleratorConfig.from_handlers(
        kwargs_handlers,
        **resolved,
        device_placement=device_placement,
        split_batches=loaders.split_batches,
        even_batches=loaders.even_batches,
        dataloader=loaders,
        step_scheduler_with_optimizer=step_scheduler_with_optimizer,
        scheduler_steps=scheduler_steps,
        accumulation_divisor=accumulation_divisor,
        **accumulation,
    )
    fp8_file = {k: active[0][f"fp8_{k}"] for k in ("pad_inner_dim", "enable_fsdp_float8_all_gather")
                if active[0].get(f"fp8_{k}") is not None}
    if active[0].get("fp8_backend") not in (None, "AO"):
        raise ValueError(f"fp8_backend={active[0]['fp8_backend']!r} (from {active[1]}) is not offered: surge trains "
                         "fp8 with torchao; set fp8_backend: AO (or remove it).")
    if fp8_file and config.mixed_precision == "fp8" and config.fp8_recipe is None:
        from surge.config.kwargs import AORecipeKwargs  # the config file's torchao settings

        config = dataclasses.replace(config, fp8_recipe=AORecipeKwargs(**fp8_file))
    if ds is not None and ds.loss_scale is not None and config.mixed_precision == "fp16" \
            and not any(isinstance(h, GradScalerKwargs) for h in kwargs_handlers or []):
        # The config's fp16 section: DeepSpeed's loss-scaling rule (precision/fp16.py).
        config = dataclasses.replace(config, scaler=ds.loss_scale)
    if project_config is not None and not isinstance(project_config, ProjectConfiguration):
        raise TypeError(f"project_config={project_config!r} must be a ProjectConfiguration.")
    if project_dir is not None and not isinstance(project_dir, (str, os.PathLike)):
        raise TypeError(f"project_dir={project_dir!r} must be a path (str or os.PathLike).")
    topology = Topology.detect(cpu=config.cpu, backend=config.backend)
    if ds is not None and ds.train_batch_size is not None and ds.train_micro_batch_size_per_gpu is not None:
        # DeepSpeed's arithmetic with the numbers the config gives (errors show all three).
        _, _, derived = resolve_batch_sizes(ds.train_batch_size, ds.train_micro_batch_size_per_gpu,
                                            ds.gradient_accumulation_steps, topology.world_size)
        if ds.gradient_accumulation_steps is None and not asked_steps:
            config = dataclasses.replace(config, gradient_accumulation_steps=derived)
    notes = list(conflicts) + (deepspeed_plugin.notes if deepspeed_plugin is not None else [])
    if ds is not None:
        note = _deepspeed_warning(ds)
        if note is not None:
            notes.append(note)
    spec = strategy_spec(deepspeed_plugin, fsdp_plugin, topology.num_nodes, topology.world_size)
    if auto_strategy and (deepspeed_plugin is not None or fsdp_plugin is not None or parallelism_config is not None):
        given = "a DeepSpeed plugin/config" if deepspeed_plugin is not None else (
            "an FSDP plugin" if fsdp_plugin is not None else "a ParallelismConfig")
        raise ValueError(f"strategy='auto' chooses the strategy itself, but {given} chooses one too; drop one of them "
                         "(strategy=None keeps yours).")
    try:
        parallelism = settle_parallelism(parallelism_config, active[0], topology.world_size)
        spec = apply_parallelism(spec, parallelism)
    except ValueError as error:
        if parallelism_config is not None:
            raise
        # Sizes from a config file that does not fit this run (`python train.py` with a
        # default config written for 4 processes): the launcher checks them when it starts
        # the job; here the run goes on as it did before ParallelismConfig existed.
        notes.append(f"the config file's parallelism_config sizes are ignored: {error}")
        parallelism = None
    if auto_strategy and parallelism is not None and parallelism.total_size > parallelism.size("dp_replicate"):
        raise ValueError(f"strategy='auto' chooses a data-parallel strategy, but the parallelism_config sizes "
                         f"({', '.join(f'{k}={v}' for k, v in parallelism.to_json().items() if k.endswith('_size'))}) "
                         "ask for a mesh; drop strategy: auto or the sizes.")
    plan = Plan(
        config=config, topology=topology, timeout=resolve_timeout(config.timeout, active[0]),
        strategy=spec,
        max_grad_norm=deepspeed_plugin.effective_gradient_clipping() if deepspeed_plugin is not None else None,
        nonfinite=nonfinite_mode, advice=advice, dynamo=dynamo, log_with=tuple(chosen_trackers),
        trackers_missing=tuple(trackers_missing), deepspeed=ds, deepspeed_plugin=deepspeed_plugin,
        fsdp_plugin=fsdp_plugin, warnings=tuple(notes), parallelism=parallelism, auto_strategy=auto_strategy,
        memory_budget_gb=budget,
    )
    # Last, once nothing can fail: the user's ProjectConfiguration is the one object changed.
    project = project_config if project_config is not None else ProjectConfiguration()
    if project_dir is not None:
        project.set_directories(project_dir)
    return plan, project


_DIMS = ("dp_replicate", "dp_shard", "tp", "cp", "sp")


def settle_parallelism(asked: Any, file_values: dict[str, Any], world_size: int) -> ParallelismConfig | None:
    """The job's ``ParallelismConfig`` (pure): ``asked``, else one built from the config
    file's / launcher's ``parallelism_config_*_size`` keys when any is above 1 (and its
    ``parallelism_config_cp_comm_strategy``), else None.
    An all-ones config on several processes becomes ``dp_replicate_size = world_size``
    (Accelerate's rule; a copy: the user's object is not changed).

    Raises:
        TypeError: ``asked`` is not a ParallelismConfig.
        ValueError: the sizes do not multiply to ``world_size`` (each size is named).
    """
    if asked is not None and not isinstance(asked, ParallelismConfig):
        raise TypeError(f"parallelism_config={asked!r} must be a surge.ParallelismConfig.")
    if asked is None:
        sizes = {f"{d}_size": file_values.get(f"parallelism_config_{d}_size") for d in _DIMS}
        if all(v in (None, 1) for v in sizes.values()):
            return None
        strategy = file_values.get("parallelism_config_cp_comm_strategy")
        handler = TorchContextParallelConfig(cp_comm_strategy=strategy) if strategy is not None else None
        asked = ParallelismConfig(**sizes, cp_handler=handler if (sizes["cp_size"] or 1) > 1 else None)
    pc: ParallelismConfig = asked
    if pc.total_size == 1 and world_size > 1:
        pc = dataclasses.replace(pc, dp_replicate_size=world_size, device_mesh=None)
    if pc.total_size != world_size:
        named = " x ".join(f"{d}_size={getattr(pc, f'{d}_size')}" for d in _DIMS)
        came = (f" ({', '.join(pc.from_environment)} came from the launcher's PARALLELISM_CONFIG_*_SIZE variables, "
                "read for sizes the script's ParallelismConfig leaves unset, as Accelerate does; pass them "
                "explicitly)") if pc.from_environment else ""
        raise ValueError(f"ParallelismConfig's sizes ({named}) multiply to {pc.total_size}, but the job has "
                         f"{world_size} processes; change the sizes so their product is {world_size}{came}.")
    return pc


def apply_parallelism(spec: StrategySpec, pc: ParallelismConfig | None) -> StrategySpec:
    """``spec`` with the mesh ``pc`` asks for (pure). Under FSDP the data-parallel sizes
    are the FSDP2 mesh (``dp_replicate_size > 1``: HYBRID_SHARD); DDP and DeepSpeed keep
    one dimension over every process (the mesh is reported, the numbers are the same).

    Raises:
        ValueError: FSDP with no dimension to shard over (``dp_shard_size``, ``cp_size``
            and ``sp_size`` all 1 on several processes); ``tp_size > 1`` without FSDP.
    """
    if pc is not None and pc.tp_enabled and spec.family == "none" and spec.shard_degree == 0 \
            and pc.tp_size == pc.total_size:
        # tp over every process, nothing else: the TensorParallel strategy (Accelerate's pure TP).
        return dataclasses.replace(spec, mesh=MeshSpec(tp=pc.size("tp")), tp_plan=pc.tp_plan,
                                   loss_parallel=_loss_parallel(pc))
    if pc is not None and pc.tp_enabled and spec.family != "fsdp":
        raise ValueError(f"ParallelismConfig(tp_size={pc.tp_size}): tensor parallelism composes with FSDP2; pass "
                         "fsdp_plugin=FullyShardedDataParallelPlugin() (or --use_fsdp) with dp_shard_size or "
                         "sp_size > 1.")
    if pc is None or spec.family != "fsdp":
        return spec
    if pc.shard_size == 1 and pc.total_size > 1:
        raise ValueError(f"FSDP is enabled but the ParallelismConfig has no dimension to shard over "
                         f"(dp_replicate_size={pc.dp_replicate_size}, dp_shard_size=1, cp_size=1, sp_size=1). Set "
                         "dp_shard_size > 1, or drop the FSDP plugin for plain data parallelism.")
    mesh = MeshSpec(dp_replicate=pc.size("dp_replicate"), dp_shard=pc.size("dp_shard"), tp=pc.size("tp"),
                    cp=pc.size("cp"), sp=pc.size("sp"))
    return dataclasses.replace(spec, mesh=mesh, hybrid=pc.dp_replicate_enabled, tp_plan=pc.tp_plan,
                               loss_parallel=pc.tp_enabled and _loss_parallel(pc))


def _check_strategy(value: Any) -> bool:
    """True for strategy "auto"; None is the strategy the plugins say.

    Raises:
        ValueError: any other value.
    """
    if value is None or value == "auto":
        return value is not None
    raise ValueError(f"strategy={value!r}: surge chooses with 'auto' (or None: the plugins and config decide); "
                     "name a strategy with DeepSpeedPlugin / FullyShardedDataParallelPlugin or --use_deepspeed / "
                     "--use_fsdp instead.")


def _check_budget(value: Any) -> float | None:
    """The memory budget in GB (None: the free memory).

    Raises:
        TypeError / ValueError: not a positive number.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"memory_budget_gb={value!r} must be a number of GB, e.g. 40.")
    if not 0 < value < float("inf"):
        raise ValueError(f"memory_budget_gb={value!r} must be a positive number of GB, e.g. 40.")
    return float(value)


def _loss_parallel(pc: ParallelismConfig) -> bool:
    return getattr(pc.tp_handler, "loss_parallel", False) is True


def accumulation_settings(plugin: GradientAccumulationPlugin | None, steps: int | None) -> dict[str, bool]:
    """The accumulation options of a ``GradientAccumulationPlugin`` (defaults without one), as
    AcceleratorConfig fields.

    Raises:
        TypeError: ``plugin`` is not a GradientAccumulationPlugin.
        ValueError: both the plugin and ``gradient_accumulation_steps`` other than 1 (as Accelerate).
    """
    if plugin is None:
        return {}
    if not isinstance(plugin, GradientAccumulationPlugin):
        raise TypeError(f"gradient_accumulation_plugin={plugin!r} must be a GradientAccumulationPlugin.")
    if steps not in (None, 1):
        raise ValueError(f"gradient_accumulation_steps={steps!r} and gradient_accumulation_plugin are both given; pass "
                         f"only the plugin, with GradientAccumulationPlugin(num_steps={steps}).")
    return {"sync_each_batch": plugin.sync_each_batch, "sync_with_dataloader": plugin.sync_with_dataloader,
            "adjust_scheduler": plugin.adjust_scheduler}


def fill_batch_sizes(ds: DeepSpeedSettings, loader_batch_size: int, *, split_batches: bool,
                     gradient_accumulation_steps: int, world_size: int) -> tuple[BatchSizes, str | None]:
    """A DeepSpeed config's batch sizes completed from a prepared DataLoader: "auto"
    values are filled, given ones checked (DeepSpeed's arithmetic, all numbers shown).
    Returns a new value (the config is not changed) and a warning when the config's
    micro-batch size differs from the loader's.

    Raises:
        ValueError: the numbers disagree.
    """
    micro = loader_batch_size // world_size if split_batches else loader_batch_size
    configured = ds.train_micro_batch_size_per_gpu
    note = None
    if configured is not None and configured != micro:
        note = (f"the DeepSpeed config says train_micro_batch_size_per_gpu={configured} but the DataLoader gives "
                f"each process batches of {micro}; the DataLoader's batches are used.")
    train, micro, steps = resolve_batch_sizes(ds.train_batch_size if configured in (None, micro) else None, micro,
                                              gradient_accumulation_steps, world_size)
    return BatchSizes(train, micro, steps), note
