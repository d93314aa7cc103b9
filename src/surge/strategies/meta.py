"""Models built on the meta device (``surge.init_empty_weights``) and weights sent from
rank 0 into each process's shards.

[Note: a model built on the meta device]
A model too big for one process's memory is built with ``init_empty_weights()`` on every
process but rank 0, which loads the real weights (Accelerate's
``cpu_ram_efficient_loading``; DeepSpeed's ``zero3_init_flag``). Under FSDP2,
``prepare_model`` then:

1. agrees, in one collective, where the weights come from (:func:`weights_source`):
   the processes' own (no meta tensor anywhere and nothing asked), rank 0's (any process
   has meta tensors, or the plugin asks: ``sync_module_states`` /
   ``cpu_ram_efficient_loading`` / ``zero3_init_flag``), or the user's ``param_init_fn``
   (every process, rank 0 included, is on meta). Rank 0 on meta without an init function
   is one error, raised on every process;
2. sets rank 0's tensors aside (references, no copy) and moves the model to the meta
   device on every process (:func:`set_aside`), so ``fully_shard`` shards without
   first moving a whole model to the device;
3. shards, then gives each process empty storage for its shards only (``to_empty``) and
   fills them from rank 0's full state dict (``set_model_state_dict(full_state_dict=True,
   broadcast_from_rank0=True)``: one tensor at a time, so no process but rank 0 ever
   holds a whole model). Non-persistent buffers, which state dicts leave out, are
   broadcast after (:func:`materialise`).

Strategies that keep a whole model in every process (one process, DDP, ZeRO-1) refuse a
meta model with one error (:func:`refuse_meta`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn

Source = Literal["local", "rank0", "init"]


def meta_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters and buffers on the meta device."""
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_meta]


def refuse_meta(model: nn.Module, strategy: str) -> None:
    """Raise when ``model`` has meta tensors: ``strategy`` keeps a whole model in every process.

    Raises:
        ValueError: naming the tensors and the two ways out.
    """
    names = meta_names(model)
    if names:
        raise ValueError(
            f"the model has {len(names)} tensor(s) on the meta device ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}), as init_empty_weights() builds them, and the {strategy!r} strategy "
            "keeps a whole model in every process, so it needs real weights. Load them before prepare "
            "(model.load_state_dict(state, assign=True), or from_pretrained), or shard the model over 2 or more "
            "processes (FullyShardedDataParallelPlugin, or DeepSpeedPlugin(zero_stage=2 or 3)), where prepare fills a "
            "meta model from rank 0's weights.")


def weights_source(model: nn.Module, *, from_rank0: bool, init_fn: bool) -> Source:
    """Where the sharded model's weights come from (a collective; see the module note).

    Raises:
        ValueError: on every process, when rank 0's model has meta tensors and there is
            no ``param_init_fn``.
    """
    import torch.distributed as dist

    flags: list[Any] = [None] * dist.get_world_size()
    names = meta_names(model)
    dist.all_gather_object(flags, names[:3] if names else None)
    if flags[0]:
        if init_fn:
            return "init"
        raise ValueError(
            f"rank 0's model has tensors on the meta device ({', '.join(flags[0])}, ...): under sharding rank 0 "
            "supplies the weights the other processes receive. Build or load the model for real on rank 0 (the "
            "others may use surge.init_empty_weights()), or give FullyShardedDataParallelPlugin(param_init_fn=...) "
            "to initialise the shards on every process.")
    return "rank0" if from_rank0 or any(flags) else "local"


@dataclass
class SetAside:
    """Rank 0's weights while the model is sharded on the meta device."""

    source: Source
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """Rank 0's full state dict (references to its tensors); empty elsewhere."""
    buffers: list[str] = field(default_factory=list)
    """The non-persistent buffers (not in state dicts), by name, the same on every process."""
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    """Rank 0's non-persistent buffers."""


def set_aside(model: nn.Module, source: Source) -> SetAside:
    """Keep rank 0's tensors (no copy) and move ``model`` to the meta device, every process."""
    import torch.distributed as dist

    rank0 = dist.get_rank() == 0 and source == "rank0"
    state = model.state_dict()
    buffers = [name for name, _ in model.named_buffers() if name not in state]
    aside = SetAside(source, buffers=buffers)
    if rank0:
        aside.state = dict(state)
        aside.kept = {name: model.get_buffer(name) for name in buffers}
    del state
    model.to(torch.device("meta"))  # in place: tied parameters stay tied, the user's optimizer keeps its objects
    return aside


def materialise(model: nn.Module, aside: SetAside, *, device: torch.device, params_on_cpu: bool,
                init_fn: Any = None) -> None:
    """Give the sharded ``model`` storage for its shards and fill it (see the module note).
    A collective for weights from rank 0."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    # Offloaded shards live on the CPU; everything is filled there first (the state-dict
    # loader wants one device), then the buffers move to the device.
    model.to_empty(device=torch.device("cpu") if params_on_cpu else device)
    if aside.source == "init":
        for module in model.modules():
            init_fn(module)
    else:
        set_model_state_dict(model, cast(dict[str, Any], aside.state), options=StateDictOptions(full_state_dict=True,
                                                                          broadcast_from_rank0=True))
        aside.state.clear()  # rank 0's full tensors can go now (when the user holds no other reference)
    if params_on_cpu and device.type != "cpu":
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.to(device)
    if aside.source == "rank0":
        for name in aside.buffers:
            buffer = model.get_buffer(name)
            if dist.get_rank() == 0:
                buffer.copy_(aside.kept[name])
            dist.broadcast(buffer, src=0)
        aside.kept.clear()
