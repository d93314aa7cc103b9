"""``accelerate.utils.modeling``: sizes, tied weights and state-dict files of a model, by
Accelerate's names and results (the big-model inference dispatch it also holds is not
surge's: docs/migrating.md, "Accelerate names surge does not provide")."""

from __future__ import annotations

import contextlib
import enum
import inspect
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from surge.config.kwargs import AutocastKwargs
    from surge.topology import DistributedType

__all__ = [
    "CustomDtype",
    "calculate_maximum_sizes",
    "check_tied_parameters_in_config",
    "compute_module_sizes",
    "convert_file_size_to_int",
    "dtype_byte_size",
    "ensure_weights_retied",
    "extract_submodules_state_dict",
    "find_tied_parameters",
    "get_grad_scaler",
    "get_max_layer_size",
    "get_max_memory",
    "get_mixed_precision_context_manager",
    "get_module_children_bottom_up",
    "id_tensor_storage",
    "is_peft_model",
    "load_state_dict",
    "named_module_tensors",
    "retie_parameters",
]


class CustomDtype(enum.Enum):
    """Sizes that are not torch dtypes, for :func:`dtype_byte_size` (quantised weights)."""

    FP8 = "fp8"
    INT4 = "int4"
    INT2 = "int2"


_CUSTOM_SIZES = {CustomDtype.FP8: 1, CustomDtype.INT4: 1 / 2, CustomDtype.INT2: 1 / 4}


def dtype_byte_size(dtype: torch.dtype | CustomDtype) -> float:
    """Bytes per element of ``dtype`` (``torch.bool``: 1/8, as Accelerate counts it).

    Raises:
        ValueError: ``dtype`` has no bit width in its name.
    """
    if dtype == torch.bool:
        return 1 / 8
    if isinstance(dtype, CustomDtype):
        return _CUSTOM_SIZES[dtype]
    if str(dtype).startswith("torch.float8"):
        return 1
    bits = re.search(r"[^\d](\d+)$", str(dtype))
    if bits is None:
        raise ValueError(f"dtype={dtype!r} is not a dtype with a bit width (torch.float32, torch.int8, ...).")
    return int(bits.group(1)) // 8


def convert_file_size_to_int(size: int | str) -> int:
    """Bytes in ``size``: an int as is, or a string with a unit: "5GB" (10**9), "5GiB"
    (2**30), "MB", "MiB", "KB", "KiB"; a lower-case "b" ("5Gb") counts bits.

    Raises:
        ValueError: anything else.
    """
    error = ValueError(f"size={size!r} is not a size: use an int (bytes) or a string with a unit, like '5GB' or "
                       "'500MiB'.")
    if isinstance(size, int):
        if size < 0:
            raise error
        return size
    if not isinstance(size, str):
        raise error
    units = (("GIB", 2**30, False), ("MIB", 2**20, False), ("KIB", 2**10, False),
             ("GB", 10**9, True), ("MB", 10**6, True), ("KB", 10**3, True))
    for unit, factor, may_be_bits in units:
        if size.upper().endswith(unit):
            try:
                value = int(float(size[:-len(unit)]) * factor)
            except ValueError:
                raise error from None
            if value < 0:
                raise error
            return value // 8 if may_be_bits and size.endswith("b") else value
    raise error


def named_module_tensors(module: nn.Module, include_buffers: bool = True, recurse: bool = False,
                         remove_non_persistent: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """``module``'s parameters, then its buffers (persistent ones only with
    ``remove_non_persistent``), by name."""
    yield from module.named_parameters(recurse=recurse)
    if not include_buffers:
        return
    skip: set[str] = set()
    if remove_non_persistent:
        modules = module.named_modules() if recurse else [("", module)]
        skip = {f"{prefix}.{b}" if prefix else b for prefix, m in modules for b in m._non_persistent_buffers_set}
    for name, buffer in module.named_buffers(recurse=recurse):
        if name not in skip:
            yield name, buffer


def compute_module_sizes(model: nn.Module, dtype: str | torch.dtype | None = None,
                         special_dtypes: dict[str, str | torch.dtype] | None = None,
                         buffers_only: bool = False) -> dict[str, int]:
    """Bytes held by every submodule (key: its dotted name; ``""`` is the whole model),
    parameters and buffers, optionally as if cast to ``dtype`` (never larger than they are;
    integer and bool tensors keep their size) or to ``special_dtypes[name]``."""

    def as_dtype(d: str | torch.dtype) -> torch.dtype:
        return getattr(torch, d.replace("torch.", "")) if isinstance(d, str) else d

    target = dtype_byte_size(as_dtype(dtype)) if dtype is not None else None
    special = {k: dtype_byte_size(as_dtype(v)) for k, v in (special_dtypes or {}).items()}
    tensors = model.named_buffers(recurse=True) if buffers_only else named_module_tensors(model, recurse=True)
    sizes: defaultdict[str, int] = defaultdict(int)
    for name, tensor in tensors:
        own = dtype_byte_size(tensor.dtype)
        if name in special:
            per = special[name]
        elif target is None or str(tensor.dtype).startswith(("torch.uint", "torch.int", "torch.bool")):
            per = own
        else:
            per = min(target, own)
        size = tensor.numel() * per
        parts = name.split(".")
        for i in range(len(parts) + 1):
            sizes[".".join(parts[:i])] += size  # type: ignore[assignment]  # whole bytes except bool/int4 tails
    return sizes


def get_max_layer_size(modules: list[tuple[str, Any]], module_sizes: dict[str, int],
                       no_split_module_classes: list[str]) -> tuple[int, list[str]]:
    """The largest "layer" among ``modules`` (a module without children, a class named in
    ``no_split_module_classes``, or a parameter/buffer) and the names of those that size."""
    best, names = 0, []
    todo = list(modules)
    while todo:
        name, module = todo.pop(0)
        children = list(module.named_children()) if isinstance(module, nn.Module) else []
        if not children or type(module).__name__ in no_split_module_classes:
            size = module_sizes[name]
            if size > best:
                best, names = size, [name]
            elif size == best:
                names.append(name)
        else:
            todo = [(f"{name}.{n}", child) for n, child in children] + todo
    return best, names


def calculate_maximum_sizes(model: nn.Module) -> tuple[int, tuple[int, list[str]]]:
    """(the model's bytes, :func:`get_max_layer_size` of it), honouring a transformers
    model's ``_no_split_modules``."""
    sizes = compute_module_sizes(model)
    top: list[tuple[str, Any]] = [*model.named_parameters(recurse=False), *model.named_children(),
                                  *model.named_buffers(recurse=False)]
    return sizes[""], get_max_layer_size(top, sizes, list(getattr(model, "_no_split_modules", None) or []))


def get_module_children_bottom_up(model: nn.Module, return_fqns: bool = False) -> list[Any]:
    """Every submodule, children before their parents; the last one is ``model``
    (``return_fqns``: ``(dotted name, module)`` pairs)."""
    stack: list[tuple[str, nn.Module]] = [("", model)]
    ordered: list[tuple[str, nn.Module]] = []
    while stack:
        prefix, module = stack.pop()
        stack += [(f"{prefix}.{n}" if prefix else n, child) for n, child in module.named_children()]
        ordered.append((prefix, module))
    ordered.reverse()
    return ordered if return_fqns else [m for _, m in ordered]


def find_tied_parameters(model: nn.Module, **kwargs: Any) -> list[list[str]]:
    """Groups of parameter names that are one parameter (tied weights), each group sorted,
    the groups in the order of their first name's parameter.

    Example:
        >>> model.decoder.weight = model.encoder.weight
        >>> find_tied_parameters(model)
        [['decoder.weight', 'encoder.weight']]
    """
    first_name = {id(p): n for n, p in model.named_parameters()}
    groups: dict[str, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = first_name[id(param)]
        if name != first:
            groups.setdefault(first, set()).add(name)
    return [sorted([first, *others]) for first, others in groups.items()]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def retie_parameters(model: nn.Module, tied_params: list[list[str]]) -> None:
    """Make each group of ``tied_params`` (from :func:`find_tied_parameters`) one parameter
    again: every name gets the group's first parameter that is not on the meta device."""
    for group in tied_params:
        found = None
        for name in group:
            module, attr = _owner(model, name)
            param = getattr(module, attr)
            if param.device != torch.device("meta"):
                found = param
                break
        if found is not None:
            for name in group:
                module, attr = _owner(model, name)
                setattr(module, attr, found)


def check_tied_parameters_in_config(model: nn.Module) -> bool:
    """Whether a transformers model's config asks for tied weights (``tie_word_embeddings``
    with output embeddings, ``tie_encoder_decoder``, or a module with ``_tie_weights``);
    False for other models."""
    if "PreTrainedModel" not in [c.__name__ for c in inspect.getmro(type(model))]:
        return False
    config = getattr(model, "config", None)
    decoder = config.get_text_config(decoder=True) if config is not None and hasattr(config, "get_text_config") \
        else config
    get_out: Callable[[], Any] = getattr(model, "get_output_embeddings", lambda: None)
    word = bool(decoder is not None and getattr(decoder, "tie_word_embeddings", False) and get_out())
    enc_dec = bool(getattr(config, "is_encoder_decoder", False) and getattr(config, "tie_encoder_decoder", False))
    return word or enc_dec or any(hasattr(m, "_tie_weights") for m in model.modules())


def ensure_weights_retied(param_init_fn: Callable[[nn.Module], Any], model: nn.Module,
                          device: torch.device) -> Callable[[nn.Module], Any]:
    """``param_init_fn`` (FSDP's per-module initialiser), wrapped so that the parameters a
    transformers model names in ``_tied_weights_keys`` stay tied after it re-creates them:
    every use gets the first re-created one. Returned unchanged for a model without tied
    keys."""
    tied_names = getattr(model, "_tied_weights_keys", None)
    if not tied_names:
        return param_init_fn
    replacement: dict[int, nn.Parameter | None] = {}
    for name in tied_names:
        module, attr = _owner(model, name)
        replacement[id(getattr(module, attr))] = None

    def init_tied(module: nn.Module) -> Any:
        to_tie: defaultdict[int, list[str]] = defaultdict(list)
        for n, param in module.named_parameters(recurse=False):
            if id(param) in replacement:
                to_tie[id(param)].append(n)
        module = param_init_fn(module)
        for key, names in to_tie.items():
            for n in names:
                if replacement[key] is None:
                    replacement[key] = getattr(module, n)
                else:
                    setattr(module, n, replacement[key])
        return module

    return init_tied


def id_tensor_storage(tensor: torch.Tensor) -> tuple[torch.device, int, int]:
    """(device, storage address, storage bytes): equal for tensors that share storage (tied
    weights, views) while both are alive."""
    try:
        storage = tensor.untyped_storage()
        return tensor.device, storage.data_ptr(), storage.nbytes()
    except (NotImplementedError, RuntimeError):  # storage-less tensors (meta and the like)
        return tensor.device, 0, tensor.nelement() * tensor.element_size()


def extract_submodules_state_dict(state_dict: dict[str, torch.Tensor],
                                  submodule_names: list[str]) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` under the named submodules (``h.1`` takes ``h.1.*``,
    not ``h.10.*``)."""
    out: dict[str, torch.Tensor] = {}
    for prefix in submodule_names:
        out.update({k: v for k, v in state_dict.items() if k == prefix or k.startswith(prefix + ".")})
    return out


def load_state_dict(checkpoint_file: str, device_map: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (on the device ``device_map`` names when it
    names one: surge has no multi-device dispatch, so a map naming several devices loads
    on the CPU) or of a ``torch.save`` file (``weights_only``, on the CPU).

    Raises:
        OSError: a safetensors file without "pt"/"tf"/"flax" format metadata.
        ValueError: a safetensors file saved by another framework.
    """
    if not checkpoint_file.endswith(".safetensors"):
        return dict(torch.load(checkpoint_file, map_location=torch.device("cpu"), weights_only=True))
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(checkpoint_file, framework="pt") as f:
        metadata = f.metadata() or {"format": "pt"}
    if metadata.get("format") not in ("pt", "tf", "flax"):
        raise OSError(f"{checkpoint_file!r} has no valid format metadata ('pt'); save it with safetensors' "
                      "save_file(..., metadata={'format': 'pt'}) or save_pretrained.")
    if metadata["format"] != "pt":
        raise ValueError(f"{checkpoint_file!r} was saved by {metadata['format']}; load_state_dict reads PyTorch's "
                         "('pt') files. Convert it with that framework first.")
    devices = set((device_map or {}).values()) - {"disk"}
    device = devices.pop() if len(devices) == 1 else "cpu"
    return load_file(checkpoint_file, device=device)


def get_max_memory(max_memory: dict[int | str, int | str] | None = None) -> dict[int | str, int]:
    """Memory available per device: without ``max_memory``, each CUDA GPU's free memory
    (key: its index) and the free RAM (``"cpu"``); with it, its sizes in bytes
    (:func:`convert_file_size_to_int`), GPUs first, then ``"mps"``, ``"cpu"``, ``"disk"``.

    Raises:
        ValueError: a key that is not a GPU index, "mps", "cpu" or "disk".
    """
    import psutil

    if max_memory is None:
        found: dict[int | str, int] = {}
        for i in range(torch.cuda.device_count()):
            with contextlib.suppress(RuntimeError):
                found[i] = int(torch.cuda.mem_get_info(i)[0])
        found["cpu"] = int(psutil.virtual_memory().available)
        return found
    sizes = {k: convert_file_size_to_int(v) for k, v in max_memory.items()}
    gpus = sorted(k for k in sizes if isinstance(k, int))
    others = [k for k in ("mps", "cpu", "disk") if k in sizes]
    unknown = [k for k in sizes if k not in gpus and k not in others]
    if unknown:
        raise ValueError(f"max_memory has devices {unknown}; use GPU indices (0, 1, ...), 'mps', 'cpu' or 'disk'.")
    return {k: sizes[k] for k in gpus + others}


def get_grad_scaler(distributed_type: DistributedType | None = None, **kwargs: Any) -> Any:
    """A new fp16 gradient scaler: FSDP's ``ShardedGradScaler`` under FSDP, else
    ``torch.amp.GradScaler`` for CUDA (``"mps"`` on Apple's GPU); ``kwargs`` go to it."""
    from surge.topology import DistributedType

    if distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(**kwargs)
    mps = getattr(torch.backends, "mps", None)
    device = "mps" if not torch.cuda.is_available() and mps is not None and mps.is_available() else "cuda"
    return torch.amp.GradScaler(device, **kwargs)


def get_mixed_precision_context_manager(native_amp: bool = False,
                                        autocast_kwargs: AutocastKwargs | None = None) -> Any:
    """The autocast region of the current Accelerator's precision (``AcceleratorState``):
    fp16 on its device, bf16 for "bf16"/"fp8", ``torch.autocast`` with the device's default
    otherwise (DeepSpeed's bf16 included, as in Accelerate); a null context when
    ``native_amp`` is False."""
    if not native_amp:
        return contextlib.nullcontext()
    from surge.state import AcceleratorState
    from surge.topology import DistributedType

    state = AcceleratorState()
    options = autocast_kwargs.to_kwargs() if autocast_kwargs is not None else {}
    device_type = state.device.type
    if state.mixed_precision == "fp16":
        return torch.autocast(device_type=device_type, dtype=torch.float16, **options)
    if state.mixed_precision in ("bf16", "fp8") and state.distributed_type != DistributedType.DEEPSPEED:
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, **options)
    return torch.autocast(device_type=device_type, **options)


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` (inside DDP wrappers) is a PEFT ``PeftModel`` (False without peft)."""
    from surge.utils.imports import is_peft_available
    from surge.utils.other import extract_model_from_parallel

    if not is_peft_available():
        return False
    import importlib

    return isinstance(extract_model_from_parallel(model), importlib.import_module("peft").PeftModel)
