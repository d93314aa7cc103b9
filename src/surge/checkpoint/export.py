"""Exporting model weights the way transformers and safetensors read them.

One file (``model.safetensors``) when it fits ``max_shard_size``, otherwise
``model-00001-of-0000N.safetensors`` shards plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": ...}, "weight_map": {name: file}}``), the layout
``transformers.PreTrainedModel.from_pretrained`` loads. ``safe_serialization=False``
writes the ``pytorch_model*.bin`` equivalents with ``torch.save``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from surge.checkpoint.atomic import publish_directory, publish_files, staging_dir

_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: int | str, name: str = "max_shard_size") -> int:
    """``"10GB"`` -> 10_000_000_000 bytes (GB = 10^9, GiB = 2^30, as transformers reads it).

    Raises:
        TypeError: not an int or a string.
        ValueError: an unreadable string or a size < 1 byte.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name}={value!r} must be a number of bytes or a string such as '5GB' or '500MiB'.")
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", value.upper())
        if m is None:
            raise ValueError(
                f"{name}={value!r} is not a size; use a number of bytes or a string such as '5GB', '500MB' or '2GiB'."
            )
        size = int(float(m.group(1)) * _UNITS[m.group(2) or "B"])
    if size < 1:
        raise ValueError(f"{name}={value!r} must be at least 1 byte.")
    return size


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr())


def prepare_for_export(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Detach, make contiguous, move to CPU and drop tied duplicates.

    Tensors that are the same view of the same storage (tied weights such as an
    embedding and an LM head) are kept once, under their first name; safetensors
    refuses shared storage and transformers re-ties such weights on load. Returns the
    tensors to write and ``{dropped name: kept name}``.
    """
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[Any, ...], list[tuple[str, torch.Tensor]]] = {}
    tied: dict[str, str] = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(value).__name__}; only tensors can be exported.")
        tensor = value.detach()
        key = _storage_key(tensor)
        twin = next(
            (
                kept
                for kept, other in seen.get(key, [])
                if other.shape == tensor.shape and other.stride() == tensor.stride()
                and other.storage_offset() == tensor.storage_offset() and other.dtype == tensor.dtype
            ),
            None,
        )
        if twin is not None:
            tied[name] = twin
            continue
        shares_storage = key in seen
        seen.setdefault(key, []).append((name, tensor))
        cpu = tensor.to("cpu").contiguous()
        # Another view of an already written storage is copied out so files never overlap.
        out[name] = cpu.clone() if shares_storage else cpu
    return out, tied


def _shard(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _names(safe: bool, count: int) -> tuple[list[str], str]:
    stem, ext = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    if count == 1:
        return [f"{stem}.{ext}"], f"{stem}.{ext}.index.json"
    return [f"{stem}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)], f"{stem}.{ext}.index.json"


_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


def save_weights(
    state_dict: dict[str, torch.Tensor],
    save_directory: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "10GB",
    safe_serialization: bool = True,
    config: Any = None,
    generation_config: Any = None,
) -> list[str]:
    """Write ``state_dict`` into ``save_directory`` (see module doc); returns the file names.

    Files are staged in a temporary directory and renamed into place, the index last;
    weight files of an earlier export in the same directory that the new one does not
    use are removed only after the new ones are in place (see [Note: write aside, then
    rename] in atomic.py). ``config`` and ``generation_config``, when they have
    ``to_json_file`` (transformers configs), are written as ``config.json`` and
    ``generation_config.json`` so the directory loads with ``from_pretrained``.

    Raises:
        NotADirectoryError: ``save_directory`` is an existing file.
    """
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise NotADirectoryError(f"save_directory={save_directory!r} is a file; give a directory path.")
    limit = parse_size(max_shard_size)
    tensors, _tied = prepare_for_export(state_dict)
    shards = _shard(tensors, limit)
    files, index_name = _names(safe_serialization, len(shards))
    written = list(files)
    fresh = not os.path.exists(save_directory)
    # A new directory is staged beside it and renamed into place whole: readers see
    # all of it or nothing. Into an existing directory (which may hold a tokenizer and
    # other files) the files are renamed in one by one, the index last.
    parent = os.path.dirname(os.path.abspath(save_directory)) if fresh else save_directory
    with staging_dir(parent) as staging:
        for file, shard in zip(files, shards, strict=True):
            path = os.path.join(staging, file)
            if safe_serialization:
                from safetensors.torch import save_file

                save_file(shard, path, metadata={"format": "pt"})
            else:
                torch.save(shard, path)
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                "weight_map": {name: file for file, shard in zip(files, shards, strict=True) for name in shard},
            }
            with open(os.path.join(staging, index_name), "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
            written.append(index_name)
        for name, extra in (("config.json", config), ("generation_config.json", generation_config)):
            if extra is not None and hasattr(extra, "to_json_file"):
                extra.to_json_file(os.path.join(staging, name))
                written.append(name)
        if fresh:
            publish_directory(staging, save_directory)
            return written
        publish_files(staging, save_directory, written)
    for stale in os.listdir(save_directory):
        if _WEIGHT_FILE.match(stale) and stale not in written:
            os.remove(os.path.join(save_directory, stale))
    return written
