"""``surge env``: what this machine has, for bug reports (like DeepSpeed's ds_report)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

OPTIONAL = ("transformers", "accelerate", "deepspeed", "tensorboard", "wandb", "mlflow", "torchao", "safetensors",
            "numpy", "psutil", "rich", "pyyaml")


# DeepSpeed's ops and features (what `ds_report` lists) -> how surge provides them.
FEATURES: tuple[tuple[str, str, str], ...] = (
    ("cpu_adam", "offload", "optimizer offload: the torch optimizer steps fp32 masters on the CPU"),
    ("fused_adam", "cuda", "torch.optim.Adam/AdamW(fused=True) on CUDA"),
    ("zero stages 0-3, CPU offload", "yes", "FSDP2 fully_shard (ZeRO-2/3), ZeroRedundancyOptimizer (ZeRO-1)"),
    ("fp16 / bf16", "yes", "torch.autocast + GradScaler (DeepSpeed's loss-scaling rule)"),
    ("fp8", "torchao", "torchao float8 training (needs a GPU with capability >= 8.9)"),
    ("activation checkpointing", "yes", "torch.utils.checkpoint (+ CPU offload of saved activations)"),
    ("async_io (NVMe offload)", "no", "not offered: offload to CPU memory instead"),
    ("fused_lamb, 1-bit Adam/LAMB, 0/1 Adam", "no", "not offered: use a torch optimizer"),
    ("sparse_attn, transformer kernels, inference kernels", "no", "not offered: torch SDPA and torch.compile"),
    ("MoE, pipeline parallelism, compression, quantizer", "no", "not offered"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="Print JSON for machines.")
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="Also check a config (a DeepSpeed JSON, or a surge / Accelerate config file) and show "
                             "what surge makes of it.")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    import psutil
    import torch
    import torch.distributed as dist

    from surge._version import __version__
    from surge.config.file import ConfigError, default_config_path, read_values

    cuda = torch.cuda.is_available()
    devices = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": props.name, "memory_gb": round(props.total_memory / 1e9, 1),
                            "capability": f"{props.major}.{props.minor}"})
    nccl = None
    if cuda and dist.is_nccl_available():
        v = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]  # unannotated in torch
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    config_path = default_config_path()
    config: Any = None
    if os.path.exists(config_path):
        try:
            config = read_values(config_path)
        except ConfigError as exc:
            config = f"invalid: {exc}"
    mps = getattr(torch.backends, "mps", None)
    import surge

    return {
        "surge": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,  # type: ignore[no-untyped-call]  # as above
        "nccl": nccl,
        "devices": devices,
        "mps_available": bool(mps is not None and mps.is_available()),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "backends": {
            "nccl": dist.is_nccl_available(),
            "gloo": dist.is_gloo_available(),
            "mpi": dist.is_mpi_available(),
        },
        "packages": {name: _version(name) for name in OPTIONAL},
        "config_file": config_path if os.path.exists(config_path) else None,
        "config": config,
        "install": {"torch": os.path.dirname(torch.__file__), "surge": os.path.dirname(surge.__file__),
                    "nvcc": _nvcc(), "shared_memory_gb": _shared_memory_gb()},
        "features": {name: {"available": _available(kind, cuda), "how": how} for name, kind, how in FEATURES},
    }


def _available(kind: str, cuda: bool) -> bool:
    if kind == "cuda":
        return cuda
    if kind == "torchao":
        return _version("torchao") is not None
    return kind != "no"


def _nvcc() -> str | None:
    """nvcc's version line, as ds_report shows it (None without a CUDA toolkit on PATH)."""
    import shutil
    import subprocess

    path = shutil.which("nvcc")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return path
    release = [line for line in out.splitlines() if "release" in line]
    return release[-1].strip() if release else path


def _shared_memory_gb() -> float | None:
    """Size of /dev/shm (DataLoader workers and NCCL use it; containers often make it tiny)."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return round(stat.f_frsize * stat.f_blocks / 1e9, 2)


def check_config(path: str) -> dict[str, Any]:
    """What surge makes of a config: a DeepSpeed JSON (its settings and the keys surge
    accepts without applying), or a surge / Accelerate config file (its values and notes).

    Raises:
        ValueError: a config surge refuses (the message names the key and the fix).
    """
    if path.endswith(".json"):
        from surge.deepspeed.ds_config import load_json, parse_deepspeed_config

        data = load_json(path)
        if "distributed_type" not in data and "compute_environment" not in data:
            settings = parse_deepspeed_config(data)
            values = {k: v for k, v in vars(settings).items() if k != "unhonoured" and v not in (None, [], {})}
            return {"kind": "DeepSpeed config", "settings": values, "notes": list(settings.unhonoured)}
    from surge.config.file import read_config

    values, accelerate = read_config(path)
    return {"kind": "Accelerate config" if accelerate is not None else "surge config", "settings": values,
            "notes": accelerate.notes if accelerate is not None else []}


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.config is not None:
        info["checked_config"] = {"path": args.config, **check_config(args.config)}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="surge env", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("surge", "python", "platform", "torch", "cuda", "cudnn", "nccl", "cpu_count", "memory_gb"):
        table.add_row(key, str(info[key]))
    if info["devices"]:
        for d in info["devices"]:
            table.add_row(f"cuda:{d['index']}", f"{d['name']}, {d['memory_gb']} GB, capability {d['capability']}")
    else:
        table.add_row("devices", "no CUDA GPU" + (" (MPS available)" if info["mps_available"] else ""))
    table.add_row("backends", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["backends"].items()))
    table.add_row("packages", ", ".join(f"{k} {v or '-'}" for k, v in info["packages"].items()))
    table.add_row("config file", info["config_file"] or "none (run `surge config`)")
    if isinstance(info["config"], dict):
        table.add_row("config", ", ".join(f"{k}={v}" for k, v in info["config"].items()) or "(defaults)")
    elif info["config"]:
        table.add_row("config", str(info["config"]))
    install = info["install"]
    table.add_row("install paths", f"torch {install['torch']}, surge {install['surge']}")
    table.add_row("nvcc", install["nvcc"] or "not found")
    table.add_row("/dev/shm", "unknown" if install["shared_memory_gb"] is None else f"{install['shared_memory_gb']} GB")
    console = Console()
    console.print(table)
    features = Table(title="DeepSpeed features (ds_report's ops) on surge")
    for column in ("feature", "available", "how"):
        features.add_column(column)
    for name, entry in info["features"].items():
        features.add_row(name, "[green]yes[/green]" if entry["available"] else "[yellow]no[/yellow]", entry["how"])
    console.print(features)
    checked = info.get("checked_config")
    if checked is not None:
        console.print(f"[bold]{checked['path']}[/bold] ({checked['kind']}): accepted")
        for key, value in checked["settings"].items():
            console.print(f"  {key}: {value}")
        for note in checked["notes"]:
            console.print(f"  [yellow]note[/yellow]: {note}")
    return 0
