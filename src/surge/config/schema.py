"""The config schema: every key of the surge config file, its type, default and help.

The keys are named as ``accelerate launch`` names its flags (``--num_processes``,
``--zero_stage``, ``--fsdp_offload_params``, ...), so one schema gives the config file,
the launch flags (commands/launch.py derives one flag per key) and the mapping from
Accelerate's own config format (config/accelerate_file.py). A key whose value is
None is unset: the plugin or the launcher decides, as Accelerate's would.

See [Note: the config file has no torch] in file.py: nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

MachineType = Literal["cpu", "single_gpu", "multi_gpu", "multi_node"]
MACHINE_TYPES: tuple[str, ...] = get_args(MachineType)
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RDZV_BACKENDS = ("static", "c10d", "etcd", "etcd-v2")
MULTINODE_LAUNCHERS = ("standard", "pdsh", "openmpi", "mvapich", "mpich", "nossh", "slurm")


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message says what and how to fix."""


def _key(default: Any, text: str, *, kind: str | None = None, group: str = "main", **extra: Any) -> Any:
    """A schema field. ``kind`` is bool / int / float / str (from the default unless
    given); ``group`` places its flag in ``surge launch --help``; ``value_flag`` marks a
    boolean flag that takes a value (``--fsdp_offload_params true``), as Accelerate's do."""
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float"}.get(type(default), "str")
    return field(default=default, metadata={"help": text, "kind": kind, "group": group, **extra})


@dataclass(frozen=True)
class SurgeConfig:
    """Everything `surge config` asks and `surge launch` uses. Field help is shown by
    the CLI (its flags are derived from these fields)."""

    # -- where and how many --------------------------------------------------------------------------------------
    machine_type: MachineType = _key("cpu", "Where the job runs: cpu, single_gpu, multi_gpu or multi_node.",
                                     choices=MACHINE_TYPES)
    num_machines: int = _key(1, "Number of machines in the job.", minimum=1, maximum=100_000)
    num_processes: int = _key(1, "Total number of processes over all machines (one per GPU on GPU machines).",
                              minimum=1, maximum=1_000_000)
    machine_rank: int = _key(0, "Index of this machine, 0 to num_machines-1.", minimum=0)
    main_process_ip: str | None = _key(None, "Address of machine 0 (multi-machine jobs); single-machine jobs use "
                                             "127.0.0.1.")
    main_process_port: int | None = _key(None, "Rendezvous port on machine 0; unset or 0: a free port (one "
                                               "machine) or 29500.", kind="int", minimum=0, maximum=65535)
    gpu_ids: str | None = _key(None, 'GPUs to use on this machine: "all" or a list like "0,1".')
    use_cpu: bool = _key(False, "Train on the CPU even when GPUs are present.")
    # -- training ------------------------------------------------------------------------------------------------
    mixed_precision: str = _key("no", "Number format: no, fp16, bf16 or fp8.", choices=MIXED_PRECISION)
    gradient_accumulation_steps: int = _key(1, "Micro-batches per optimizer step.", minimum=1)
    nonfinite: str = _key("ignore", "At each optimizer step, on a NaN/inf loss or gradient: ignore, skip (the step) "
                                    "or raise.", choices=("ignore", "skip", "raise"))
    strategy: str | None = _key(None, "auto: choose the lightest strategy whose model states fit (DDP, ZeRO-1/2/3, "
                                      "activation checkpointing, CPU offload) at prepare(), from the model, precision, "
                                      "optimizer, processes and free memory; printed with its numbers.",
                                choices=("auto",))
    memory_budget_gb: float | None = _key(None, "GB of memory each process may use, for strategy auto (default: the "
                                                "GPU's free memory, or the host's available memory shared by the "
                                                "machine's processes).", kind="float", positive=True)
    warnings: str = _key("on", "Run-time warnings for common mistakes (docs/guide.md, \"Run-time warnings\"): on or "
                               "off.", choices=("on", "off"))
    collective_timeout: float = _key(600.0, "Seconds a collective may wait for the other ranks before every rank "
                                            "stops with a report of who waited where and who never arrived.",
                                     positive=True, maximum=7 * 24 * 3600)
    # -- DeepSpeed / ZeRO ----------------------------------------------------------------------------------------
    use_deepspeed: bool = _key(False, "Use the DeepSpeed strategy (ZeRO stage 2 unless --zero_stage says "
                                      "otherwise), as `accelerate launch --use_deepspeed`.", group="deepspeed")
    zero_stage: int | None = _key(None, "ZeRO sharding stage: 0 (none), 1 (optimizer), 2 (+gradients), 3 "
                                        "(+parameters). A stage above 0 alone selects ZeRO.", kind="int",
                                  group="deepspeed", minimum=0, maximum=3)
    offload_optimizer_device: str = _key("none", "Keep optimizer state on: none or cpu (ZeRO stages 1-3).",
                                         group="deepspeed", choices=OFFLOAD_DEVICES)
    offload_param_device: str = _key("none", "Keep parameters on: none or cpu (ZeRO stage 3 only).",
                                     group="deepspeed", choices=OFFLOAD_DEVICES)
    offload_optimizer_nvme_path: str | None = _key(None, "NVMe path for optimizer offload (DeepSpeed; surge "
                                                         "offloads to the CPU only).", group="deepspeed")
    offload_param_nvme_path: str | None = _key(None, "NVMe path for parameter offload (DeepSpeed; surge offloads "
                                                     "to the CPU only).", group="deepspeed")
    gradient_clipping: float | None = _key(None, "Clip the gradient norm to this value at each step (DeepSpeed "
                                                 "strategy).", kind="float", group="deepspeed", minimum=0)
    zero3_init_flag: bool | None = _key(None, "ZeRO-3: build models sharded (deepspeed.zero.Init).", kind="bool",
                                        group="deepspeed", value_flag=True)
    zero3_save_16bit_model: bool | None = _key(None, "ZeRO-3: save_model gathers a 16-bit model.", kind="bool",
                                               group="deepspeed", value_flag=True)
    deepspeed_config_file: str | None = _key(None, "A DeepSpeed JSON config to take ZeRO / precision / batch "
                                                   "settings from.", group="deepspeed")
    deepspeed_moe_layer_cls_names: str | None = _key(None, "Comma-separated MoE layer class names (DeepSpeed).",
                                                     group="deepspeed")
    deepspeed_multinode_launcher: str | None = _key(None, "How DeepSpeed starts other machines; surge runs one "
                                                          "launcher per machine (standard).", group="deepspeed",
                                                    choices=MULTINODE_LAUNCHERS)
    deepspeed_hostfile: str | None = _key(None, "DeepSpeed's hostfile (pdsh/MPI launchers only).", group="deepspeed")
    deepspeed_inclusion_filter: str | None = _key(None, "DeepSpeed's --include (pdsh/MPI launchers only).",
                                                  group="deepspeed")
    deepspeed_exclusion_filter: str | None = _key(None, "DeepSpeed's --exclude (pdsh/MPI launchers only).",
                                                  group="deepspeed")
    # -- FSDP ----------------------------------------------------------------------------------------------------
    use_fsdp: bool = _key(False, "Use the FSDP strategy (FULL_SHARD unless set otherwise), as `accelerate launch "
                                 "--use_fsdp`.", group="fsdp")
    fsdp_version: int | None = _key(None, "Accelerate's FSDP version, 1 or 2 (surge runs FSDP2's fully_shard "
                                          "either way; the version decides how the other keys read).", kind="int",
                                    group="fsdp", minimum=1, maximum=2)
    fsdp_sharding_strategy: str | None = _key(None, "FSDP sharding: FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, "
                                                    "HYBRID_SHARD or HYBRID_SHARD_ZERO2 (or 1-5). Setting it selects "
                                                    "FSDP.", group="fsdp", choices=(*FSDP_SHARDING, *"12345"),
                                            upper=True)
    fsdp_reshard_after_forward: str | None = _key(None, "FSDP2: free gathered parameters after forward "
                                                        "(true/false); FSDP1: a sharding strategy.", group="fsdp",
                                                choices=("true", "false", *FSDP_SHARDING, *"12345"), upper=True)
    fsdp_offload_params: bool | None = _key(None, "FSDP: keep parameters on the CPU.", kind="bool", group="fsdp",
                                            value_flag=True)
    fsdp_auto_wrap_policy: str | None = _key(None, "Which blocks are sharded one by one: TRANSFORMER_BASED_WRAP, "
                                                   "SIZE_BASED_WRAP or NO_WRAP.", group="fsdp",
                                           choices=("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"), upper=True)
    fsdp_transformer_layer_cls_to_wrap: str | None = _key(None, "Comma-separated block class names "
                                                                "(TRANSFORMER_BASED_WRAP).", group="fsdp")
    fsdp_min_num_params: int | None = _key(None, "Parameters per block (SIZE_BASED_WRAP).", kind="int", group="fsdp",
                                           minimum=0)
    fsdp_backward_prefetch: str | None = _key(None, "BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH (FSDP1).",
                                              group="fsdp", choices=("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"),
                                              upper=True)
    fsdp_forward_prefetch: bool | None = _key(None, "Prefetch the next block's parameters in forward.", kind="bool",
                                              group="fsdp", value_flag=True)
    fsdp_state_dict_type: str | None = _key(None, "Checkpoint layout: FULL_STATE_DICT or SHARDED_STATE_DICT.",
                                            group="fsdp", choices=("FULL_STATE_DICT", "LOCAL_STATE_DICT",
                                                                   "SHARDED_STATE_DICT"), upper=True)
    fsdp_use_orig_params: bool | None = _key(None, "FSDP1's use_orig_params (FSDP2 always keeps the original "
                                                   "parameters).", kind="bool", group="fsdp", value_flag=True)
    fsdp_cpu_ram_efficient_loading: bool | None = _key(None, "Load weights on rank 0 only and send them to the "
                                                             "others (needs fsdp_sync_module_states).", kind="bool",
                                                       group="fsdp", value_flag=True)
    fsdp_sync_module_states: bool | None = _key(None, "Start every process from rank 0's weights.", kind="bool",
                                                group="fsdp", value_flag=True)
    fsdp_activation_checkpointing: bool | None = _key(None, "Recompute each block's activations in backward.",
                                                      kind="bool", group="fsdp", value_flag=True)
    fsdp_activation_checkpointing_offload: bool | None = _key(None, "Keep checkpointed activations in CPU memory.",
                                                              kind="bool", group="fsdp", value_flag=True)
    fsdp_ignored_modules: str | None = _key(None, "A regex of module names whose parameters are not sharded.",
                                            group="fsdp")
    # -- torch.compile -------------------------------------------------------------------------------------------
    dynamo_backend: str = _key("no", "torch.compile the prepared models with this backend: no, inductor, eager, "
                                     "aot_eager, ...", group="compile")
    dynamo_mode: str | None = _key(None, "torch.compile mode: default, reduce-overhead, max-autotune or "
                                         "max-autotune-no-cudagraphs.", group="compile", choices=COMPILE_MODES)
    dynamo_use_fullgraph: bool = _key(False, "torch.compile(fullgraph=True).", group="compile")
    dynamo_use_dynamic: bool | None = _key(None, "torch.compile(dynamic=True).", kind="bool", group="compile")
    dynamo_use_regional_compilation: bool = _key(False, "Compile each repeated block once instead of the whole "
                                                        "model.", group="compile")
    # -- fp8 / N-D parallelism -----------------------------------------------------------------------------------
    fp8_backend: str | None = _key(None, "fp8 library: AO (torchao; surge's only one).", group="fp8",
                                   choices=("AO", "TE", "MSAMP"), upper=True)
    fp8_enable_fsdp_float8_all_gather: bool | None = _key(None, "torchao: all-gather FSDP parameters in fp8.",
                                                          kind="bool", group="fp8", value_flag=True)
    fp8_pad_inner_dim: bool | None = _key(None, "torchao: pad matrix dimensions to multiples of 16.", kind="bool",
                                          group="fp8", value_flag=True)
    parallelism_config_dp_replicate_size: int = _key(1, "Data-parallel replicas (Accelerate's ParallelismConfig).",
                                                     group="parallelism", minimum=1)
    parallelism_config_dp_shard_size: int = _key(1, "Processes that shard the model among them.",
                                                 group="parallelism", minimum=1)
    parallelism_config_tp_size: int = _key(1, "Tensor-parallel degree.", group="parallelism", minimum=1)
    parallelism_config_cp_size: int = _key(1, "Context-parallel degree.", group="parallelism", minimum=1)
    parallelism_config_sp_size: int = _key(1, "Sequence-parallel degree.", group="parallelism", minimum=1)
    parallelism_config_cp_comm_strategy: str | None = _key(None, "How ring attention (cp_size > 1) exchanges keys and "
                                                           "values: allgather (the default) or alltoall.",
                                                           group="parallelism", kind="str",
                                                           choices=("allgather", "alltoall"))
    # -- processes -----------------------------------------------------------------------------------------------
    num_cpu_threads_per_process: int | None = _key(None, "OMP_NUM_THREADS for each process (default: the CPU "
                                                         "cores shared among the processes).", kind="int",
                                                   group="processes", minimum=1)
    enable_cpu_affinity: bool = _key(False, "Pin each GPU process to the CPU cores of its GPU's NUMA node.",
                                     group="processes")
    debug: bool = _key(False, "Check that every rank calls the same collectives with the same shapes "
                              "(TORCH_DISTRIBUTED_DEBUG=DETAIL); slower.", group="processes")
    quiet: bool = _key(False, "Report a failure as its cause and the log file, without the traceback.",
                       group="processes")
    tee: str = _key("0", "Also copy the workers' output to log files: 0 none, 1 stdout, 2 stderr, 3 both (or "
                         "per local rank: 0:3,1:1); in --log_dir, else a temporary directory named at the end.",
                    group="processes")
    log_dir: str | None = _key(None, "Where each job's log directory (surge-<id>) goes: failed ranks' full "
                                     "tracebacks, the --tee copies (default: a temporary one, kept if a rank failed).",
                               group="processes")
    role: str = _key("default", "The worker group's role name (torch elastic).", group="processes")
    rdzv_backend: str = _key("static", "Rendezvous: static or c10d (surge's own, bound to one address), etcd or "
                                       "etcd-v2 (torch's).", group="processes", choices=RDZV_BACKENDS)
    rdzv_conf: str = _key("", "Extra rendezvous settings as key=value,key=value.", group="processes")
    same_network: bool = _key(False, "Machines share a network (surge reaches machine 0 at main_process_ip "
                                     "either way).", group="processes")
    max_restarts: int = _key(0, "Restart all workers up to this many times when one fails.", group="processes",
                             minimum=0, maximum=1000)
    monitor_interval: float = _key(0.1, "Seconds between checks of the workers' health.", group="processes",
                                   positive=True, maximum=60)

    def __post_init__(self) -> None:
        errors = validate_values(dataclasses.asdict(self))
        if errors:
            raise ConfigError(join_errors(errors))

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the schema's defaults."""
        default = SurgeConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


FIELDS = {f.name: f for f in dataclasses.fields(SurgeConfig)}
DEEPSPEED_KEYS = tuple(n for n, f in FIELDS.items() if f.metadata["group"] == "deepspeed")
FSDP_KEYS = tuple(n for n, f in FIELDS.items() if f.metadata["group"] == "fsdp")


def join_errors(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} problems in the config: " + "; ".join(errors)


def _type_problem(name: str, value: Any) -> str | None:
    """An error for a value of the wrong type, or None."""
    f = FIELDS[name]
    if value is None:
        return None if f.default is None else f"{name} must not be empty"
    kind = f.metadata["kind"]
    if kind == "bool":
        return None if isinstance(value, bool) else f"{name}={value!r} must be true or false"
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{name}={value!r} must be a number"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{name}={value!r} must be a whole number"
    return None if isinstance(value, str) else f"{name}={value!r} must be a string"


def _value_problems(name: str, value: Any) -> list[str]:
    meta = FIELDS[name].metadata
    errors = []
    if "choices" in meta and value not in meta["choices"]:
        errors.append(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, meta['choices']))}")
    if "minimum" in meta and value < meta["minimum"]:
        errors.append(f"{name}={value!r} is out of range; it must be >= {meta['minimum']}"
                      + (f" and <= {meta['maximum']}" if "maximum" in meta else ""))
    elif "maximum" in meta and value > meta["maximum"]:
        errors.append(f"{name}={value!r} is out of range; it must be from {meta.get('minimum', 0)} to "
                      f"{meta['maximum']}")
    if meta.get("positive") and not value > 0:
        errors.append(f"{name}={value!r} must be > 0")
    return errors


def validate_values(values: dict[str, Any]) -> list[str]:
    """Every problem in ``values`` (keys, types, ranges, combinations), as messages."""
    errors = []
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        errors.append(
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys are {', '.join(FIELDS)}"
        )
    for name, value in values.items():
        if name not in FIELDS:
            continue
        problem = _type_problem(name, value)
        if problem:
            errors.append(problem)
        elif value is not None:
            errors.extend(_value_problems(name, value))
    if errors:
        return errors
    return _combination_problems({**{n: f.default for n, f in FIELDS.items()}, **values})


def _combination_problems(v: dict[str, Any]) -> list[str]:
    errors = []
    if v["machine_rank"] >= v["num_machines"]:
        errors.append(f"machine_rank={v['machine_rank']} must be below num_machines={v['num_machines']} "
                      "(ranks count from 0)")
    if v["num_processes"] % v["num_machines"]:
        errors.append(
            f"num_processes={v['num_processes']} must be a multiple of num_machines={v['num_machines']} "
            "(the same number of processes on every machine)"
        )
    if v["num_machines"] > 1 and not v["main_process_ip"]:
        errors.append(f"num_machines={v['num_machines']} needs main_process_ip (the address of machine 0)")
    stage = v["zero_stage"] if v["zero_stage"] is not None else (2 if v["use_deepspeed"] else 0)
    for key in ("offload_optimizer_device", "offload_param_device"):
        if v[key] == "nvme":
            errors.append(f"{key}='nvme': surge offloads to CPU memory only, not to NVMe; use {key}: cpu")
    if v["offload_param_device"] == "cpu" and stage != 3:
        errors.append(f"offload_param_device={v['offload_param_device']!r} needs zero_stage=3 (got {stage}); "
                      "parameters can only be offloaded when they are sharded")
    if v["offload_optimizer_device"] == "cpu" and stage == 0:
        errors.append("offload_optimizer_device='cpu' needs zero_stage 1, 2 or 3")
    fsdp = v["use_fsdp"] or v["fsdp_sharding_strategy"] is not None
    if fsdp and (v["use_deepspeed"] or stage):
        errors.append(f"choose either DeepSpeed/ZeRO (zero_stage={stage}) or FSDP "
                      f"(fsdp_sharding_strategy={v['fsdp_sharding_strategy'] or 'FULL_SHARD'!r}), not both")
    if v["gpu_ids"] not in (None, "all") and not all(p.strip().isdigit() for p in str(v["gpu_ids"]).split(",")):
        errors.append(f"gpu_ids={v['gpu_ids']!r} must be 'all' or GPU indices like '0,1'")
    if v["mixed_precision"] == "fp8" and v["use_cpu"]:
        errors.append("mixed_precision='fp8' needs a GPU with compute capability >= 8.9; it cannot run with "
                      "use_cpu=true")
    return errors
