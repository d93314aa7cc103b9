"""``surge config``: write the config file by answering questions (or ``--default``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from surge.config.accelerate_file import accelerate_default_config_path, to_accelerate
from surge.config.file import MIXED_PRECISION, ConfigError, SurgeConfig, default_config_path, write_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config_file", default=None,
                        help=f"Where to write (default: {default_config_path()}; with --format accelerate, "
                             f"{accelerate_default_config_path()}).")
    parser.add_argument("--format", choices=("surge", "accelerate"), default="surge",
                        help="surge's config file, or Accelerate's (as `accelerate config` writes it: `accelerate "
                             "launch` and `surge launch` both read it).")
    parser.add_argument("--default", action="store_true",
                        help="Write a sensible config for this machine without questions.")
    parser.add_argument("--force", action="store_true", help="With --default: replace an existing config file.")


def _gpus() -> tuple[int, bool]:
    """(visible CUDA GPUs, whether all of them support bf16)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0, False
    if not torch.cuda.is_available():
        return 0, False
    return torch.cuda.device_count(), bool(torch.cuda.is_bf16_supported())


def default_config(gpus: int, bf16: bool) -> SurgeConfig:
    """What ``--default`` writes: every GPU with bf16 where supported, else one CPU process."""
    if gpus == 0:
        return SurgeConfig(machine_type="cpu", num_processes=1)
    return SurgeConfig(
        machine_type="multi_gpu" if gpus > 1 else "single_gpu",
        num_processes=gpus,
        gpu_ids="all",
        mixed_precision="bf16" if bf16 else "fp16",
    )


def ask(gpus: int, bf16: bool) -> SurgeConfig:
    """The interactive questions; each has a sensible default (Enter accepts it)."""
    from rich.console import Console
    from rich.prompt import Confirm, IntPrompt, Prompt

    console = Console()
    base = default_config(gpus, bf16)
    console.print("[bold]surge config[/bold]: press Enter to accept the value in parentheses.")
    values: dict[str, Any] = {}
    machine = Prompt.ask("Machine type", choices=["cpu", "single_gpu", "multi_gpu", "multi_node"],
                         default=base.machine_type)
    values["machine_type"] = machine
    if machine == "multi_node":
        values["num_machines"] = _ask_int(IntPrompt, "How many machines", 2, minimum=2)
        values["machine_rank"] = _ask_int(IntPrompt, "Rank of this machine (0 for the main one)", 0, minimum=0,
                                          maximum=values["num_machines"] - 1)
        values["main_process_ip"] = ""
        while not values["main_process_ip"].strip():
            values["main_process_ip"] = Prompt.ask("IP address of machine 0")
        values["main_process_port"] = _ask_int(IntPrompt, "Port on machine 0", 29500, minimum=1, maximum=65535)
    if machine == "single_gpu":
        values["num_processes"] = 1
    else:
        per = gpus if machine in ("multi_gpu", "multi_node") and gpus else 1
        total_default = per * values.get("num_machines", 1)
        machines = values.get("num_machines", 1)
        while True:
            values["num_processes"] = _ask_int(IntPrompt, "How many processes in total (all machines)", total_default,
                                               minimum=1)
            if values["num_processes"] % machines == 0:
                break
            console.print(f"[prompt.invalid]Please enter a multiple of {machines} (the same number on every machine)")
    if machine != "cpu":
        values["gpu_ids"] = Prompt.ask("Which GPUs (ids like 0,1 or all)", default="all")
    else:
        values["use_cpu"] = True
    values["mixed_precision"] = Prompt.ask("Mixed precision", choices=list(MIXED_PRECISION),
                                           default=base.mixed_precision)
    values["gradient_accumulation_steps"] = _ask_int(IntPrompt, "Gradient accumulation steps", 1, minimum=1)
    stage = _ask_int(IntPrompt, "ZeRO sharding stage (0 none, 1 optimizer, 2 +gradients, 3 +parameters)", 0,
                     minimum=0, maximum=3)
    values["zero_stage"] = stage
    if stage and Confirm.ask("Offload optimizer state to the CPU?", default=False):
        values["offload_optimizer_device"] = "cpu"
    if stage == 3 and Confirm.ask("Offload parameters to the CPU?", default=False):
        values["offload_param_device"] = "cpu"
    values["max_restarts"] = _ask_int(IntPrompt, "Restart the workers how many times if one fails", 0, minimum=0)
    return SurgeConfig(**values)


def _ask_int(prompt: Any, question: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    from rich.console import Console

    while True:
        value = prompt.ask(question, default=default)
        if value >= minimum and (maximum is None or value <= maximum):
            return int(value)
        allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        Console().print(f"[prompt.invalid]Please enter a number {allowed}")


def run(args: argparse.Namespace) -> int:
    if args.config_file == "":
        raise ConfigError("--config_file '' is empty; give the path of a YAML file")
    accelerate = args.format == "accelerate"
    path = args.config_file or (accelerate_default_config_path() if accelerate else default_config_path())
    if args.default and os.path.exists(path) and not args.force:
        raise ConfigError(f"{path} already exists; it was kept. Pass --force to replace it, or run `surge config` "
                          "to answer the questions again")
    gpus, bf16 = _gpus()
    try:
        config = default_config(gpus, bf16) if args.default else ask(gpus, bf16)
    except EOFError:
        raise ConfigError("input ended before every question was answered; nothing was written") from None
    if accelerate:
        values, lost = to_accelerate(config.changed())
        write_config(values, path, header="# Accelerate's config format (written by `surge config --format "
                                          "accelerate`): accelerate launch and surge launch read it\n")
        if lost:
            print(f"surge config: warning: Accelerate's format has no place for {', '.join(lost)}; pass them as "
                  "surge launch flags (or write --format surge)", file=sys.stderr)
    else:
        write_config(config, path)
    print(f"surge config: wrote {path}")
    return 0
