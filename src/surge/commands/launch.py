"""``surge launch``: run a script on every local process through torch's elastic launcher.

The flags are derived from the config schema (config/schema.py), so every config key is
also a flag with the same name and help; they are ``accelerate launch``'s flags, dashed
spellings included. The flags of Accelerate that mean nothing here (TPU, SageMaker,
Megatron-LM, Transformer Engine) are accepted: switched on, the ones that would change
what runs are an error naming them, the rest one note.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from surge.commands import deepspeed_launcher
from surge.config.accelerate_file import AccelerateFile, accelerate_default_config_path, normalise
from surge.config.file import (
    ENV_VAR,
    FIELDS,
    SHARDING_KEYS,
    ConfigError,
    SurgeConfig,
    default_config_path,
    read_config,
)
from surge.config.schema import DEEPSPEED_KEYS, FSDP_KEYS

# Short aliases users know from `accelerate launch`.
ALIASES = {"use_cpu": ["--cpu"], "quiet": ["-q"], "tee": ["-t"]}
GROUP_TITLES = {
    "main": "settings (each overrides the same key of the config file)",
    "deepspeed": "DeepSpeed / ZeRO (as accelerate launch --use_deepspeed)",
    "fsdp": "FSDP (as accelerate launch --use_fsdp)",
    "compile": "torch.compile",
    "fp8": "fp8",
    "parallelism": "parallelism (Accelerate's ParallelismConfig sizes)",
    "processes": "processes and logs",
}
# Accelerate's flags with no effect in surge: (flags, takes a value, what happens when set).
_MEGATRON = ("tp_degree", "use_custom_fsdp", "no_load_optim", "eod_mask_loss", "overlap_cpu_optimizer_d2h_h2d",
             "no_save_optim", "optimizer_cpu_offload", "use_precision_aware_optimizer",
             "decoder_last_pipeline_num_layers", "pp_degree", "num_micro_batches", "sequence_parallelism",
             "recompute_activations", "use_distributed_optimizer", "gradient_clipping", "recompute_granularity",
             "recompute_method", "recompute_num_layers", "attention_backend", "expert_model_parallel_size",
             "context_parallel_size", "attention_dropout", "hidden_dropout", "attention_softmax_in_fp32",
             "expert_tensor_parallel_size", "calculate_per_token_loss", "use_rotary_position_embeddings")
FOREIGN: dict[str, tuple[bool, str]] = {
    "tpu": (False, "error:surge does not run on TPUs; use --multi_gpu or --cpu"),
    "tpu_use_cluster": (False, "error:surge does not run on TPU pods"),
    "tpu_use_sudo": (False, "TPU"), "vm": (True, "TPU"), "env": (True, "TPU"),
    "main_training_function": (True, "TPU"), "downcast_bf16": (False, "TPU"),
    "use_megatron_lm": (False, "error:surge does not drive Megatron-LM; use --use_fsdp or --use_deepspeed"),
    **{f"megatron_lm_{name}": (True, "Megatron-LM") for name in _MEGATRON},
    "fp8_use_autocast_during_eval": (False, "Transformer Engine"), "fp8_margin": (True, "Transformer Engine"),
    "fp8_interval": (True, "Transformer Engine"), "fp8_format": (True, "Transformer Engine"),
    "fp8_amax_history_len": (True, "Transformer Engine"), "fp8_amax_compute_algo": (True, "Transformer Engine"),
    "fp8_override_linear_precision": (True, "Transformer Engine"), "fp8_opt_level": (True, "MS-AMP"),
    "aws_access_key_id": (True, "SageMaker"), "aws_secret_access_key": (True, "SageMaker"),
    "mpirun_hostfile": (True, ("error:surge starts the processes itself, not through mpirun; run `surge launch "
                               "--machine_rank N` on each machine")),
    "use_parallelism_config": (False, "parallelism"),
    **{f"parallelism_config_{name}": (True, "parallelism") for name in
       ("cp_backend", "sp_backend", "sp_seq_length", "sp_seq_length_is_variable",
        "sp_attn_implementation")},
}
_PARADIGMS = ("use_cpu", "multi_gpu", "tpu", "use_deepspeed", "use_fsdp")
_TRUTH = {"true": True, "yes": True, "1": True, "y": True, "on": True, "t": True,
          "false": False, "no": False, "0": False, "n": False, "off": False, "f": False}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _bool(text: str) -> bool:
    try:
        return _TRUTH[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}") from None


def _spellings(name: str) -> list[str]:
    """``--name`` and, as Accelerate accepts, ``--na-me``."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (``--num_processes``, ``--mixed_precision``, ...), plus
    ``--config_file``, ``--multi_gpu`` and Accelerate's flags that mean nothing here.
    Unset flags are None (the file decides)."""
    parser.add_argument(*_spellings("config_file"), default=None,
                        help=f"Config file to start from, surge's or Accelerate's (default: {default_config_path()}, "
                             f"else Accelerate's {accelerate_default_config_path()}).")
    parser.add_argument(*_spellings("multi_gpu"), action="store_const", const=True, default=None,
                        help="Shorthand for --machine_type multi_gpu (one process per GPU).")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for name, f in FIELDS.items():
        meta = f.metadata
        flags = [*_spellings(name), *ALIASES.get(name, [])]
        group, kind = groups[meta["group"]], meta["kind"]
        if kind == "bool" and meta.get("value_flag"):
            group.add_argument(*flags, dest=name, nargs="?", const=True, type=_bool, default=None,
                               help=meta["help"], metavar="true|false")
        elif kind == "bool":
            group.add_argument(*flags, dest=name, action="store_const", const=True, default=None, help=meta["help"])
        elif kind == "float":
            group.add_argument(*flags, dest=name, type=_float, default=None, help=meta["help"])
        elif kind == "int":
            group.add_argument(*flags, dest=name, type=_int, default=None, help=meta["help"])
        else:
            group.add_argument(*flags, dest=name, default=None, help=meta["help"], metavar=name.upper())
    foreign = parser.add_argument_group("accelerate launch flags for TPUs, SageMaker, Megatron-LM, Transformer "
                                        "Engine and mpirun: accepted, named if set")
    for name, (takes_value, _) in FOREIGN.items():
        if takes_value:
            foreign.add_argument(*_spellings(name), dest=name, default=None, help=argparse.SUPPRESS)
        else:
            foreign.add_argument(*_spellings(name), dest=name, action="store_const", const=True, default=None,
                                 help=argparse.SUPPRESS)
    foreign.add_argument(*_spellings("tpu_cluster"), dest="tpu_use_cluster", action="store_const", const=True,
                         help=argparse.SUPPRESS)
    foreign.add_argument(*_spellings("no_tpu_cluster"), dest="tpu_use_cluster", action="store_const", const=None,
                         help=argparse.SUPPRESS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "surge launch [launcher flags] script [script arguments]  (launcher flags go before the script)"
    add_config_flags(parser)
    deepspeed_launcher.add_flags(parser)
    parser.add_argument("-m", "--module", action="store_true", help="Run the target as a module (python -m).")
    parser.add_argument(*_spellings("no_python"), dest="no_python", action="store_true",
                        help="Run the target as a program, not through Python (as torchrun --no-python).")
    parser.add_argument("script", help="The training script (or module with -m).")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, default=[],
                        help="Arguments passed to the script untouched.")


def _config_source(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The config file to read and whether it is Accelerate's default one (found, not asked for)."""
    path = args.config_file
    if path == "":
        raise ConfigError("--config_file '' is empty; give the path of a YAML or JSON file")
    if path is not None:
        return path, False
    if os.environ.get(ENV_VAR) or os.path.exists(default_config_path()):
        return default_config_path(), False  # an explicit SURGE_CONFIG_FILE must exist: a typo is an error
    accelerate = accelerate_default_config_path()
    # As `accelerate launch`: its default config is not read with --cpu.
    if os.path.isfile(accelerate) and not getattr(args, "use_cpu", None):
        return accelerate, True
    return None, False


def _prune_paradigms(values: dict[str, Any], flags: dict[str, Any]) -> None:
    """A strategy flag replaces the strategy an Accelerate file selected, as in ``accelerate
    launch`` (``--multi_gpu`` over a DEEPSPEED file runs DDP)."""
    if flags.get("multi_gpu") or flags.get("use_fsdp"):
        for key in (*DEEPSPEED_KEYS, "gradient_accumulation_steps"):
            if key in values and key not in flags:
                del values[key]
    if flags.get("multi_gpu") or flags.get("use_deepspeed"):
        for key in FSDP_KEYS:
            if key in values and key not in flags:
                del values[key]


def _foreign(args: argparse.Namespace) -> list[str]:
    """Errors for Accelerate flags that would change what runs; notes (printed) for the rest."""
    notes: dict[str, list[str]] = {}
    for name, (_, meaning) in FOREIGN.items():
        if getattr(args, name, None) is None:
            continue
        if meaning.startswith("error:"):
            raise ConfigError(f"--{name}: {meaning.removeprefix('error:')}")
        notes.setdefault(meaning, []).append(f"--{name}")
    return [f"{', '.join(flags)} only apply to {what} launches; ignored" for what, flags in notes.items()]


def resolve_config(args: argparse.Namespace) -> tuple[SurgeConfig, dict[str, Any]]:
    """Config file values (surge's or Accelerate's format) overlaid with the flags that were given.

    Returns the validated config and the mapping of keys that were set (by the file or
    a flag), which is what the workers are handed. Notes about accepted-but-unused
    settings are printed to stderr.

    Raises:
        ConfigError: a bad file or flag value, or an impossible combination.
    """
    chosen = [name for name in _PARADIGMS if getattr(args, name, None)]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join('--' + n.replace('use_cpu', 'cpu') for n in chosen)} contradict each "
                          "other; use only one of --cpu, --multi_gpu, --use_deepspeed, --use_fsdp")
    notes = _foreign(args)
    path, found = _config_source(args)
    values: dict[str, Any] = {}
    accelerate: AccelerateFile | None = None
    if path is not None:
        values, accelerate = read_config(path)
        if found:
            print(f"surge launch: no surge config file; using Accelerate's {path}", file=sys.stderr)
    flags = {name: normalise(name, getattr(args, name)) for name in FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "multi_gpu", None):
        flags["multi_gpu"] = True
    if accelerate is not None:
        notes.extend(accelerate.notes)
        _prune_paradigms(values, flags)
        if flags.get("multi_gpu") or flags.get("use_fsdp"):
            values.pop("use_deepspeed", None)
        if flags.get("multi_gpu") or flags.get("use_deepspeed"):
            values.pop("use_fsdp", None)
        if accelerate.needs_num_processes and "num_processes" not in flags:
            raise ConfigError(f"{path} leaves num_processes unset (-1); pass --num_processes, as accelerate launch "
                              "asks too")
    flags.pop("multi_gpu", None)
    if hasattr(args, "ds_num_gpus"):  # the deepspeed launcher's flags (commands/deepspeed_launcher.py)
        deepspeed = deepspeed_launcher.resolve(args, _gpu_count)
        notes.extend(deepspeed.notes)
        values.update(deepspeed.values)
        args.local_rank_arg, args.bind_cores = deepspeed.local_rank_arg, deepspeed.bind_cores
    values.update(flags)
    if getattr(args, "multi_gpu", None):
        if values.get("use_cpu"):
            raise ConfigError("--multi_gpu and --cpu contradict each other; choose one")
        if "num_processes" in flags and flags["num_processes"] < 2:
            raise ConfigError(f"--multi_gpu needs at least 2 processes (got --num_processes {flags['num_processes']})")
        values["machine_type"] = "multi_gpu" if values.get("num_machines", 1) == 1 else "multi_node"
        if "num_processes" not in values:  # neither the file nor a flag set it: one per GPU
            ids = values.get("gpu_ids")
            values["num_processes"] = len(ids.split(",")) if ids not in (None, "all") else (_gpu_count() or 1)
    _parallelism(values)
    config = SurgeConfig(**values)
    _check_runnable(config)
    for note in notes:
        print(f"surge launch: note: {note}", file=sys.stderr)
    return config, values


def _parallelism(values: dict[str, Any]) -> None:
    """Accelerate's ParallelismConfig sizes: data-parallel ones map to surge's strategies,
    tp composes with FSDP2, sp (Ulysses) and cp (ring attention) with any strategy (the
    worker's Accelerator reads the sizes from the handed-over config); FSDP shards over
    ``dp_shard x cp x sp``.

    Raises:
        ConfigError: cp and sp both above 1, tp above 1 without FSDP or with nothing to
            shard over, or sizes that do not multiply to the world size.
    """
    size = {k: values.get(f"parallelism_config_{k}_size", 1) for k in ("dp_replicate", "dp_shard", "tp", "cp", "sp")}
    replicate, shard, tp, cp, sp = (size[k] for k in ("dp_replicate", "dp_shard", "tp", "cp", "sp"))
    if cp > 1 and sp > 1:
        raise ConfigError(f"parallelism_config cp_size={cp} and sp_size={sp}: context and sequence parallelism are "
                          "mutually exclusive; set one of them to 1")
    total = replicate * shard * tp * cp * sp
    if total == 1:
        return
    processes = values.get("num_processes", 1)
    if total != processes:
        raise ConfigError(f"parallelism_config dp_replicate_size={replicate} x dp_shard_size={shard} x tp_size={tp} x "
                          f"cp_size={cp} x sp_size={sp} = {total} must equal num_processes={processes}")
    if tp == total and not values.get("use_deepspeed") and not values.get("use_fsdp"):
        return  # tensor parallelism alone, over every process
    seq = cp * sp  # the ranks that hold parts of each sequence shard like dp_shard
    if tp > 1 and (shard * seq == 1 or values.get("use_deepspeed")):
        raise ConfigError(f"parallelism_config tp_size={tp}: tensor parallelism composes with FSDP2 over "
                          f"dp_shard_size, cp_size or sp_size > 1 (got dp_shard_size={shard}, cp_size={cp}, "
                          f"sp_size={sp}), or runs alone on every process (tp_size = num_processes, no --use_fsdp / "
                          "--use_deepspeed)")
    if (tp > 1 or cp > 1) and replicate > 1 and shard == 1:
        raise ConfigError(f"parallelism_config tp_size={tp} / cp_size={cp} cannot be composed with pure data "
                          f"parallelism (dp_replicate_size={replicate}, dp_shard_size=1): set dp_shard_size > 1 too "
                          "(HSDP x tp/cp), or dp_replicate_size=1")
    if replicate > 1 and shard * seq > 1:
        per_machine = processes // values.get("num_machines", 1)
        if shard * seq * tp != per_machine:
            raise ConfigError(f"parallelism_config dp_shard_size={shard} x cp_size={cp} x sp_size={sp} x tp_size={tp} "
                              f"must be the processes per machine ({per_machine}) when dp_replicate_size={replicate} "
                              "> 1: surge shards within a machine and replicates across machines (HYBRID_SHARD)")
        values.setdefault("fsdp_sharding_strategy", "HYBRID_SHARD")
    elif (shard > 1 or tp > 1) and not values.get("use_deepspeed"):
        values["use_fsdp"] = True  # dp_shard (x cp x sp) over every process: FSDP (FULL_SHARD)


def _check_runnable(config: SurgeConfig) -> None:
    """Refuse, before starting any process, what every worker would refuse."""
    from surge.config.plugins import plugins_from_config

    if config.strategy == "auto" and (config.use_deepspeed or config.use_fsdp):
        raise ConfigError("--strategy auto chooses the strategy itself, but --use_deepspeed / --use_fsdp (or the "
                          "config file) chooses one too; drop one of them")
    path = config.deepspeed_config_file
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"deepspeed_config_file={path!r} does not exist; give the path of a DeepSpeed JSON config")
    sharding = {k: v for k, v in config.changed().items() if k in SHARDING_KEYS}
    try:
        plugins_from_config(sharding)  # the plugins validate in their constructors
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if config.fp8_backend not in (None, "AO"):
        raise ConfigError(f"fp8_backend={config.fp8_backend!r}: surge trains fp8 with torchao; use --fp8_backend AO")
    if config.mixed_precision == "fp8" and _gpu_count() == 0:
        raise ConfigError("mixed_precision='fp8' needs a CUDA GPU with compute capability >= 8.9 and none is visible; "
                          "use --mixed_precision bf16")
    launcher = config.deepspeed_multinode_launcher
    if config.num_machines > 1 and launcher not in (None, "standard"):
        raise ConfigError(f"deepspeed_multinode_launcher={launcher!r} starts every machine from machine 0; surge runs "
                          "one launcher per machine: run `surge launch --machine_rank N` on each machine (or set "
                          "deepspeed_multinode_launcher: standard)")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(args: argparse.Namespace) -> int:
    from surge.launch.runner import launch

    if args.module and args.no_python:
        raise ConfigError("--module and --no_python cannot be used together")
    from surge.commands.hints import warn_flags_after_script
    warn_flags_after_script(args)  # `surge launch train.py --num_processes 2`: one line, and the run goes on
    config, values = resolve_config(args)
    return launch(config, values, args.script, list(args.script_args), module=args.module,
                  no_python=args.no_python, local_rank_arg=getattr(args, "local_rank_arg", False),
                  bind_cores=getattr(args, "bind_cores", None))
