"""``surge estimate-memory``: model-state memory per process for each strategy.

Also in ``accelerate estimate-memory``'s form: ``surge estimate-memory MODEL_DIR --dtypes
float32 float16`` prints Accelerate's table (largest layer, total size, training with Adam
per dtype; the same numbers) before surge's per-strategy one. Models are read from local
directories or config files only and built on the meta device: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import torch

# Accelerate's dtypes and what each divides the float32 size by; bfloat16 is 2 bytes like
# float16 (Accelerate's CLI does not offer it: its code would leave it at 4).
DTYPES = {"float32": 1, "float16": 2, "bfloat16": 2, "int8": 4, "int4": 8}
ACCELERATE_DTYPES = ["float32", "float16", "int8", "int4"]  # `accelerate estimate-memory`'s default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("model_name", nargs="?", metavar="MODEL_DIR_OR_CONFIG",
                        help="A local model directory or config.json (as `accelerate estimate-memory MODEL`, but "
                             "local only: nothing is downloaded). Prints Accelerate's table, then surge's.")
    source.add_argument("--params", type=float, help="Number of parameters, e.g. 7e9.")
    source.add_argument("--model", help="'package.module:factory' (a function returning a module) or a transformers "
                                        "config (config.json or its directory). Built on the meta device: no memory, "
                                        "no download.")
    parser.add_argument("--library_name", choices=["transformers", "timm"], default=None,
                        help="The library that builds the model (default: transformers; timm takes an architecture "
                             "name such as resnet50, or a local directory with timm's config.json).")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help=f"Dtypes of Accelerate's table (default: {' '.join(ACCELERATE_DTYPES)}).")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="Run the modeling code a local model directory ships (its auto_map).")
    parser.add_argument("--num_processes", type=int, nargs="+", default=[1, 8, 64], help="World sizes to show.")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                        help="Training precision of surge's table (bf16/fp16: mixed precision with fp32 Adam state).")
    parser.add_argument("--gpu-memory", "--gpu_memory", dest="gpu_memory", type=float, default=None,
                        help="GB per GPU; configurations that fit are marked.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser.add_argument("--recommend", action="store_true",
                        help="Print the strategy `strategy: auto` would choose at each --num_processes for "
                             "--gpu-memory GB per process (the same choice and numbers it prints at prepare()).")
    mesh = parser.add_argument_group("an N-D mesh (ParallelismConfig's sizes): per-process memory under FSDP2 x tp")
    for dim, what in (("dp_replicate", "replicas"), ("dp_shard", "processes sharding the model"),
                      ("cp", "context-parallel degree (shards like dp_shard)"),
                      ("sp", "sequence-parallel degree (shards like dp_shard)"),
                      ("tp", "tensor-parallel degree (the model's plan splits its layers)")):
        mesh.add_argument(f"--{dim}_size", f"--{dim.replace('_', '-')}-size", dest=f"{dim}_size", type=int,
                          default=None, help=f"The {what}.")


def _not_local(name: str) -> ValueError:
    return ValueError(f"{name!r} is not a local path: surge estimate-memory reads local model directories and "
                      "config.json files and downloads nothing; fetch the config first (e.g. `huggingface-cli "
                      f"download {name} config.json --local-dir DIR`) and pass DIR")


def _transformers_model(path: str, trust_remote_code: bool) -> torch.nn.Module:
    """The model of a local transformers config, in float32 on the meta device, built as
    Accelerate's ``create_empty_model`` builds it (an ``AutoModelFor*`` of the config's
    ``auto_map`` when it names one, else ``AutoModel``)."""
    import torch

    try:
        import transformers
    except ImportError:
        raise ImportError("reading a transformers config needs transformers: pip install transformers") from None
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    constructor: Any = transformers.AutoModel
    auto_map = getattr(config, "auto_map", None)
    if isinstance(auto_map, dict):
        key = next((k for k in auto_map if k.startswith("AutoModelFor")), None)
        if key is not None:
            constructor = getattr(transformers, key)
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    with torch.device("meta"):
        model: torch.nn.Module = constructor.from_config(config, trust_remote_code=trust_remote_code,
                                                         **{dtype_key: torch.float32})
    return model


def _timm_model(name: str) -> torch.nn.Module:
    """A timm architecture (``resnet50``) or a local directory with timm's config.json, on
    the meta device, without pretrained weights."""
    import torch

    try:
        import timm
    except ImportError:
        raise ImportError("--library_name timm needs timm: pip install timm") from None
    kwargs: dict[str, Any] = {}
    architecture = name
    if os.path.exists(name):
        path = os.path.join(name, "config.json") if os.path.isdir(name) else name
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            architecture = config["architecture"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{name!r} is not a timm model directory (a config.json with an 'architecture')") from None
        kwargs = {k: config[k] for k in ("num_classes", "in_chans") if k in config}
    elif not timm.is_model(name):
        raise ValueError(f"{name!r} is neither a timm architecture (see timm.list_models()) nor a local timm model "
                         "directory; surge estimate-memory downloads nothing")
    with torch.device("meta"):
        model: torch.nn.Module = timm.create_model(architecture, pretrained=False, **kwargs)
    return model


def _build(args: argparse.Namespace) -> torch.nn.Module | None:
    """The model named on the command line, on the meta device (None for ``--params``)."""
    import torch

    if args.model_name is not None:
        if args.library_name == "timm":
            return _timm_model(args.model_name)
        if not os.path.exists(args.model_name):
            raise _not_local(args.model_name)
        return _transformers_model(args.model_name, args.trust_remote_code)
    if args.model is None:
        return None
    model: str = args.model
    if os.path.exists(model):
        return _timm_model(model) if args.library_name == "timm" else _transformers_model(model,
                                                                                          args.trust_remote_code)
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
    return built


class _Size(TypedDict):
    dtype: str
    largest_layer: float
    largest_layer_names: list[str]
    total_size: float
    training_adam: float | None


def accelerate_sizes(model: torch.nn.Module, dtypes: list[str]) -> list[_Size]:
    """Accelerate's ``estimate-memory`` numbers (``gather_data``) for ``model``: per dtype,
    the largest layer and the total size in bytes (float32 sizes divided by 1, 2, 4 or 8)
    and the training size with Adam at batch size 1 (float32: weights, gradients, two Adam
    states and the step's copies, 4x; float16/bfloat16 mixed precision: 2x the float32
    size; int8/int4: None)."""
    from surge.utils.modeling import calculate_maximum_sizes

    total, (largest, names) = calculate_maximum_sizes(model)
    sizes: list[_Size] = []
    for dtype in dtypes:
        divisor = DTYPES[dtype]
        # Accelerate's estimate_training_usage: the largest of model, gradients, optimizer, step.
        if dtype == "float32":
            training: float | None = max(total, total, 2 * total, 4 * total)
        elif dtype in ("float16", "bfloat16"):
            training = max(total, total + total // 2, 2 * total, 2 * total)
        else:
            training = None
        sizes.append({"dtype": dtype, "largest_layer": largest / divisor if divisor > 1 else largest,
                      "largest_layer_names": names, "total_size": total / divisor if divisor > 1 else total,
                      "training_adam": training})
    return sizes


def accelerate_table(model_name: str, sizes: list[_Size]) -> str:
    """``sizes`` as ``accelerate estimate-memory`` prints them: its title, columns and
    box drawing, character for character."""
    from surge.utils.other import convert_bytes

    headers = ["dtype", "Largest Layer", "Total Size", "Training using Adam"]
    rows = [[s["dtype"], convert_bytes(s["largest_layer"]), convert_bytes(s["total_size"]),
             "N/A" if s["training_adam"] is None else convert_bytes(s["training_adam"])] for s in sizes]
    title = f"Memory Usage for loading `{model_name}`"
    widths = [max(len(text) for text in [*(row[i] for row in rows), header]) for i, header in enumerate(headers)]
    pattern = "│" + "│".join(f"%{w}s" for w in widths) + "│"  # the widths before the title widens the last
    extra = 0  # a title wider than the columns widens the last column (Accelerate counts it twice)
    if len(title) > sum(widths):
        extra = abs(len(title) - (sum(widths) + len(widths) + 1))
        widths[-1] += extra

    def rule(left: str, middle: str, right: str, pad: int) -> str:
        return left + middle.join("─" * w for w in widths) + "─" * pad + right

    separator = rule("├", "┼", "┤", extra)
    lines = [rule("┌", "─", "┐", extra), f"│{title.center(len(separator) - 2)}│", rule("├", "┬", "┤", extra)]
    widths[-1] += extra
    lines.append(pattern % tuple(h.center(widths[i]) for i, h in enumerate(headers)))
    lines.append(separator)
    lines += [pattern % tuple(t.center(widths[i]) for i, t in enumerate(row)) for row in rows]
    lines.append(rule("└", "┴", "┘", 0))
    return "\n".join(lines)


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
    from surge.memory import count_parameters

    model = _build(args)
    if model is None and (args.dtypes is not None or args.library_name is not None or args.trust_remote_code):
        raise ValueError("--dtypes, --library_name and --trust_remote_code describe a model: give a model directory "
                         "or --model instead of --params")
    sizes = accelerate_sizes(model, args.dtypes or ACCELERATE_DTYPES) if model is not None else None
    name = args.model_name if args.model_name is not None else args.model
    num = args.params if model is None else count_parameters(model)
    mesh = _mesh(args, model, num)
    if args.recommend and args.gpu_memory is None:
        raise ValueError("--recommend needs --gpu-memory GB: the memory each process may use (strategy auto reads the "
                         "free memory when the job runs).")
    from surge.memory import recommend

    choices = [recommend(num, n, args.gpu_memory * 1e9, args.precision) for n in args.num_processes] \
        if args.recommend else []
    rows: list[_Row] = []
    for strategy in STRATEGIES:
        cells: list[_Cell] = []
        for n in args.num_processes:
            gpu, cpu = model_state_bytes(num, strategy, n, args.precision)
            fits = None if args.gpu_memory is None else gpu / 1e9 <= args.gpu_memory
            cells.append({"num_processes": n, "gpu_gb": gpu / 1e9, "cpu_gb": cpu / 1e9, "fits": fits})
        rows.append({"strategy": strategy.name, "per_process": cells})
    if args.json:
        extra: dict[str, Any] = {} if sizes is None else {"model": name, "sizes": sizes}
        if mesh is not None:
            extra["mesh"] = mesh
        if choices:
            extra["recommend"] = [{"num_processes": c.world_size, "strategy": c.rung.name, "fits": c.fits,
                                   "gpu_gb": c.device_bytes / 1e9, "cpu_gb": c.cpu_bytes / 1e9,
                                   "explain": c.explain()} for c in choices]
        print(json.dumps({"parameters": num, "precision": args.precision, "rows": rows, **extra}, indent=2))
        return 0
    if sizes is not None:
        print(accelerate_table(name, sizes))
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
    for choice in choices:
        console.print(choice.explain(), highlight=False, soft_wrap=True)
    if mesh is not None:
        console.print(f"N-D mesh {mesh['layout']} ({mesh['num_processes']} processes), FSDP2 FULL_SHARD x tp, "
                      f"{args.precision} + Adam: {mesh['gpu_gb']:.3g} GB per process ({mesh['tp_parameters']:,} of "
                      f"{num:,.0f} parameters split by tp, the rest sharded over dp_shard x cp x sp = {mesh['shard']})")
    return 0


def _mesh(args: argparse.Namespace, model: torch.nn.Module | None, num: float) -> dict[str, Any] | None:
    """The per-process memory of the mesh the ``--*_size`` flags describe (None without them).

    Raises:
        ValueError: a size below 1, ``--tp_size`` without a model (its plan decides what
            splits), or a model without a tensor-parallel plan.
    """
    from surge.memory import mesh_model_state_bytes, tensor_parallel_parameters

    given = {d: getattr(args, f"{d}_size") for d in ("dp_replicate", "dp_shard", "cp", "sp", "tp")}
    if all(v is None for v in given.values()):
        return None
    sizes = {d: 1 if v is None else v for d, v in given.items()}
    bad = [f"--{d}_size {v}" for d, v in sizes.items() if v < 1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: mesh sizes must be >= 1.")
    if sizes["tp"] > 1 and model is None:
        raise ValueError("--tp_size needs the model (a directory or --model), not --params: its tensor-parallel plan "
                         "decides which parameters split.")
    tp_params = tensor_parallel_parameters(model) if sizes["tp"] > 1 and model is not None else 0
    shard = sizes["dp_shard"] * sizes["cp"] * sizes["sp"]
    gpu = mesh_model_state_bytes(num, tp_params, tp=sizes["tp"], shard=shard)
    layout = " x ".join(f"{d} {v}" for d, v in sizes.items() if v > 1) or "one process"
    processes = sizes["dp_replicate"] * shard * sizes["tp"]
    return {**{f"{d}_size": v for d, v in sizes.items()}, "layout": layout, "num_processes": processes,
            "shard": shard, "tp_parameters": tp_params, "gpu_gb": gpu / 1e9}
