"""A checkpoint's model weights as one safetensors model, offline (``surge merge-weights``).

Reads what :func:`surge.checkpoint.training.save_training_state` wrote (sharded DCP
files or the full layout), a DeepSpeed-style directory with a ``latest`` file (as
``Engine.save_checkpoint`` writes), any DCP checkpoint directory, or a checkpoint written
by DeepSpeed itself (its fp32 master weights, as its ``zero_to_fp32.py`` gives them; see
checkpoint/deepspeed_files.py), in one process and with no process group: the shards of
every rank are read and stitched together. The result is written by :func:`surge.checkpoint.export.save_weights`
(sharded files plus an index when large, staged and renamed into place).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from surge.checkpoint.deepspeed_files import is_deepspeed_checkpoint
from surge.checkpoint.full import load_safetensors
from surge.checkpoint.sharded import TENSORS, single_process_is_fine
from surge.checkpoint.training import MANIFEST, read_manifest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DCP_METADATA = ".metadata"


def resolve_checkpoint(path: str | os.PathLike[str]) -> str:
    """The checkpoint directory ``path`` names: itself, or the tag in its ``latest`` file.

    Raises:
        ValueError: ``path`` is not a directory, or holds no checkpoint (named).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r} is not a directory; give the directory save_state or "
                         "save_checkpoint wrote.")
    if (os.path.isfile(os.path.join(path, MANIFEST)) or os.path.isfile(os.path.join(path, _DCP_METADATA))
            or is_deepspeed_checkpoint(path)):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            tag = f.read().strip()
        if tag and os.path.isdir(os.path.join(path, tag)):
            return os.path.join(path, tag)
        raise ValueError(f"{latest!r} names {tag!r}, which is not a directory in {path!r}.")
    raise ValueError(f"{path!r} is not a checkpoint: it has no {MANIFEST} (a surge checkpoint), no {_DCP_METADATA} "
                     "(a torch.distributed.checkpoint directory), no mp_rank_00_model_states.pt (DeepSpeed's) and no "
                     "'latest' file. An unfinished save leaves "
                     "only a '.surge-tmp-*' directory, which cannot be merged.")


def read_dcp_tensors(directory: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor whose key starts with ``prefix`` in the DCP checkpoint at
    ``directory``, whole, on the CPU, keys without the prefix. Needs no process group.

    Raises:
        ValueError: unreadable or corrupted files, or no tensor under ``prefix``.
    """
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load

    reader = FileSystemReader(directory)
    try:
        metadata = reader.read_metadata()
    except Exception as exc:  # a missing or truncated .metadata is a pickle/OS error inside DCP
        raise ValueError(f"checkpoint {directory!r} could not be read: its {_DCP_METADATA} file is missing or "
                         f"corrupted ({type(exc).__name__}).") from None
    wanted = {
        key: torch.empty(md.size, dtype=md.properties.dtype)
        for key, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata) and key.startswith(prefix)
    }
    if not wanted:
        raise ValueError(f"checkpoint {directory!r} holds no tensors under {prefix.rstrip('.')!r}.")
    if not prefix:
        # A nested state dict saved whole ({"model": {...}}, as Accelerate's
        # save_fsdp_model writes): its one top-level key is not part of the names.
        paths = metadata.planner_data or {}
        tops = {paths.get(key, (key,))[0] if len(paths.get(key, ())) > 1 else None
                for key in metadata.state_dict_metadata}
        if len(tops) == 1 and None not in tops:
            prefix = f"{tops.pop()}."
    try:
        with single_process_is_fine():
            load(wanted, storage_reader=reader, no_dist=True)
    except Exception as exc:  # DCP wraps reader errors in its own exception types
        detail = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise ValueError(f"checkpoint {directory!r} could not be read: "
                         f"{detail[-1] if detail else type(exc).__name__}.") from None
    return {key[len(prefix):]: tensor for key, tensor in wanted.items()}


def model_weights(checkpoint: str | os.PathLike[str], model_index: int = 0) -> dict[str, torch.Tensor]:
    """Model ``model_index``'s full weights from a checkpoint (see module doc).

    Raises:
        ValueError: no such checkpoint or model, or unreadable files (named).
    """
    directory = resolve_checkpoint(checkpoint)
    if is_deepspeed_checkpoint(directory):
        from surge.checkpoint import deepspeed_files

        if model_index != 0:
            raise ValueError(f"model index {model_index} is out of range: DeepSpeed checkpoint {directory!r} holds one "
                             "model (index 0).")
        return deepspeed_files.model_weights(deepspeed_files.open_checkpoint(directory))
    if not os.path.isfile(os.path.join(directory, MANIFEST)):
        return read_dcp_tensors(directory)  # a DCP directory from elsewhere: all of its tensors
    manifest = read_manifest(directory)
    count = manifest.get("models", 0)
    if not 0 <= model_index < count:
        raise ValueError(f"model index {model_index} is out of range: checkpoint {directory!r} holds {count} "
                         f"model(s) (indices 0..{max(count - 1, 0)}).")
    if manifest["sharded"]:
        return read_dcp_tensors(os.path.join(directory, TENSORS), prefix=f"model_{model_index}.")
    return load_safetensors(os.path.join(directory, f"model_{model_index}.safetensors"))


def merge_weights(
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    model_index: int = 0,
    max_shard_size: int | str = "10GB",
    dtype: str | None = None,
    safe_serialization: bool = True,
) -> list[str]:
    """Write model ``model_index`` of ``checkpoint`` to ``output_dir`` as a full model
    (``model.safetensors``, or shards plus ``model.safetensors.index.json``); returns the
    file names. ``dtype`` ("float32", "bfloat16", "float16") converts floating-point
    tensors; None keeps the saved dtypes.

    Raises:
        ValueError: a bad checkpoint, model index, dtype or output directory.
    """
    from surge.checkpoint.export import save_weights

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)} (or none to keep the "
                         "saved dtypes).")
    source = os.path.realpath(resolve_checkpoint(checkpoint))
    target = os.path.realpath(os.fspath(output_dir))
    if target == source or target.startswith(source + os.sep):
        raise ValueError(f"output directory {os.fspath(output_dir)!r} is inside the checkpoint {source!r}; write the "
                         "merged model somewhere else.")
    state: dict[str, Any] = model_weights(source, model_index)
    if dtype is not None:
        to = DTYPES[dtype]
        state = {k: v.to(to) if v.is_floating_point() else v for k, v in state.items()}
    return save_weights(state, output_dir, max_shard_size=max_shard_size, safe_serialization=safe_serialization)


def merge_fsdp_weights(checkpoint_dir: str | os.PathLike[str], output_path: str | os.PathLike[str],
                       safe_serialization: bool = True, remove_checkpoint_dir: bool = False) -> None:
    """HF Accelerate's ``merge_fsdp_weights``: the model in a sharded checkpoint written as
    one full model, ``output_path/model.safetensors`` (``pytorch_model.bin`` with
    ``safe_serialization=False``; shards plus an index past 10GB). ``checkpoint_dir`` is a
    ``torch.distributed.checkpoint`` directory (``save_fsdp_model``'s
    ``pytorch_model_fsdp_0``, Accelerate's too) or a surge checkpoint (its first model).
    In a distributed run the main process merges and the others wait. With
    ``remove_checkpoint_dir=True`` the checkpoint is deleted once the model is written.

    Raises:
        ValueError: no checkpoint there (naming the subdirectory to give, when it is one
            level down), unreadable files, or an output inside the checkpoint.
    """
    import shutil

    import torch.distributed as dist

    directory = os.fspath(checkpoint_dir)
    inner = [name for name in ("pytorch_model_fsdp_0", "optimizer_0") if os.path.isdir(os.path.join(directory, name))]
    if os.path.isdir(directory) and inner and not os.path.isfile(os.path.join(directory, _DCP_METADATA)):
        raise ValueError(f"{directory!r} holds the checkpoint director{'ies' if len(inner) > 1 else 'y'} "
                         f"{', '.join(inner)} rather than being one; pass "
                         f"{os.path.join(directory, 'pytorch_model_fsdp_0')!r} for the model.")
    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        merge_weights(directory, output_path, safe_serialization=safe_serialization)
        if remove_checkpoint_dir:
            shutil.rmtree(directory)
    if distributed:
        dist.barrier()
