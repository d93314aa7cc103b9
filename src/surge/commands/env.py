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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="Print JSON for machines.")


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
    }


def run(args: argparse.Namespace) -> int:
    info = collect()
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
    Console().print(table)
    return 0
