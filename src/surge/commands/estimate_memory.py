"""``surge estimate-memory``: model-state memory per process for each strategy."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import TypedDict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--params", type=float, help="Number of parameters, e.g. 7e9.")
    source.add_argument("--model", help="'package.module:factory' (a function returning a module) or a transformers "
                                        "config (config.json or its directory). Built on the meta device: no memory, "
                                        "no download.")
    parser.add_argument("--num_processes", type=int, nargs="+", default=[1, 8, 64], help="World sizes to show.")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                        help="Training precision (bf16/fp16: mixed precision with fp32 Adam state).")
    parser.add_argument("--gpu-memory", "--gpu_memory", dest="gpu_memory", type=float, default=None,
                        help="GB per GPU; configurations that fit are marked.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")


def _count(model: str) -> int:
    import torch

    from surge.memory import count_parameters

    if os.path.exists(model):
        try:
            import transformers
        except ImportError:
            raise ImportError("reading a transformers config needs transformers: pip install transformers") from None
        config = transformers.AutoConfig.from_pretrained(model)
        with torch.device("meta"):
            module = transformers.AutoModel.from_config(config)  # type: ignore[no-untyped-call]  # unannotated
        return count_parameters(module)
    if ":" not in model:
        raise ValueError(f"--model {model!r} is neither an existing config path nor 'package.module:factory'.")
    module_name, _, attr = model.partition(":")
    import sys

    sys.path.insert(0, os.getcwd())  # a module next to you is found, as with `python -m`
    try:
        factory = getattr(importlib.import_module(module_name), attr, None)
    finally:
        sys.path.pop(0)
    if not callable(factory):
        raise ValueError(f"--model {model!r}: {module_name} has no callable {attr!r}.")
    with torch.device("meta"):
        built = factory()
    if not isinstance(built, torch.nn.Module):
        raise TypeError(f"--model {model!r} returned a {type(built).__name__}, not a torch.nn.Module.")
    return count_parameters(built)


class _Cell(TypedDict):
    num_processes: int
    gpu_gb: float
    cpu_gb: float
    fits: bool | None


class _Row(TypedDict):
    strategy: str
    per_process: list[_Cell]


def run(args: argparse.Namespace) -> int:
    import math

    from surge.memory import STRATEGIES, model_state_bytes

    if args.params is not None and not (args.params > 0 and math.isfinite(args.params)):
        raise ValueError(f"--params {args.params} must be a positive number of parameters, e.g. 7e9.")
    if args.gpu_memory is not None and not (args.gpu_memory > 0 and math.isfinite(args.gpu_memory)):
        raise ValueError(f"--gpu-memory {args.gpu_memory} must be a positive number of GB, e.g. 80.")
    if any(n < 1 for n in args.num_processes):
        raise ValueError(f"--num_processes {args.num_processes} must all be >= 1.")
    num = args.params if args.params is not None else _count(args.model)
    rows: list[_Row] = []
    for strategy in STRATEGIES:
        cells: list[_Cell] = []
        for n in args.num_processes:
            gpu, cpu = model_state_bytes(num, strategy, n, args.precision)
            fits = None if args.gpu_memory is None else gpu / 1e9 <= args.gpu_memory
            cells.append({"num_processes": n, "gpu_gb": gpu / 1e9, "cpu_gb": cpu / 1e9, "fits": fits})
        rows.append({"strategy": strategy.name, "per_process": cells})
    if args.json:
        print(json.dumps({"parameters": num, "precision": args.precision, "rows": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Model-state memory per process: {num / 1e9:.3g}B parameters, {args.precision} + Adam "
                        "(GB; + CPU GB when offloaded)")
    table.add_column("strategy")
    for n in args.num_processes:
        table.add_column(f"{n} proc", justify="right")
    for row in rows:
        out = []
        for c in row["per_process"]:
            text = f"{c['gpu_gb']:.1f}" + (f" + {c['cpu_gb']:.1f} CPU" if c["cpu_gb"] else "")
            if c["fits"] is not None:
                text += " ✓" if c["fits"] else " ✗"
            out.append(text)
        table.add_row(row["strategy"], *out)
    console = Console()
    console.print(table)
    if args.gpu_memory is not None:
        console.print(f"✓ fits in {args.gpu_memory:g} GB per GPU (model states only; activations come on top).")
    return 0
