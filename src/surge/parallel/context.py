"""Context parallelism inside the Accelerator: torch's ring attention (``ParallelismConfig(cp_size=N)``).

[Note: context parallelism in the Accelerator]
The ``cp`` processes of a group (neighbours in the mesh: dp_replicate, dp_shard, cp, sp,
tp) read the same batches: the prepared DataLoader is sharded over the data-parallel
dims only. Inside ``accelerator.maybe_context_parallel(buffers=..., buffer_seq_dims=...)``
torch's ``context_parallel`` cuts every buffer along its sequence dimension (head-tail
load-balanced when the length divides by ``2 x cp``: rank r keeps chunks r and 2cp-1-r)
and turns ``F.scaled_dot_product_attention`` into ring attention over the cp group: each
rank keeps its queries while keys and values travel round the ring (``cp_comm_strategy``
"allgather" or "alltoall"), the partial results merged by their log-sum-exp.

* Each rank's loss is the mean over the tokens it holds; gradients average over
  ``dp x cp`` processes (DDP over every process, or FSDP2 sharding over ``dp_shard x cp``),
  which is the gradient of the global token mean when every rank counts the same number
  of tokens (sequences without ignored label positions), as in Accelerate.
* ``prepare(model)`` drops the attention masks of ``*self_attn`` modules and asks for
  causal attention (ring attention expresses full causal attention only); models whose
  layers use a stricter mask (sliding window, chunked) are refused, as Accelerate does.
* On CUDA torch runs its flash / memory-efficient / cuDNN kernels round the ring. On CPU
  torch's context parallelism has no rule for SDPA's CPU kernel
  (``_scaled_dot_product_flash_attention_for_cpu``), so for the length of the region surge
  registers one: torch's own ring (``_templated_ring_attention`` and its backward) around
  that kernel. This is what lets a CPU run, and CI, check the wiring against one process.

What surge adds to Accelerate: buffers whose sequence does not split over ``cp_size``
raise a ValueError naming the length (torch fails inside the ring with a shape error),
and a transformers model called inside the region without ``position_ids`` or with
``labels`` but no ``shift_labels`` gets a :class:`surge.advice.SurgeAdvice` (its rotary
positions, or its shifted labels, would be computed on the shard and be wrong).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from surge.config.parallelism import ParallelismConfig

_CPU_FORWARD = "_scaled_dot_product_flash_attention_for_cpu"
_active = [0]  # regions entered and not left (this process)
_PREPARED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # models whose hooks are in place


def check_buffers(buffers: Any, buffer_seq_dims: Any, cp_size: int) -> tuple[list[torch.Tensor], list[int]]:
    """The buffers and their sequence dims as lists, checked (pure).

    Raises:
        ValueError: no buffers, a different number of dims, a dim out of range, sequence
            lengths that differ or do not divide by ``cp_size``, or two buffers sharing memory
            (torch writes each shard into its buffer in place, so one would overwrite the other).
        TypeError: a buffer that is not a tensor, or a parameter.
    """
    buffers = list(buffers or [])
    dims = list(buffer_seq_dims or [])
    if not buffers:
        raise ValueError("maybe_context_parallel under cp_size > 1 needs the tensors to split along the sequence: "
                         "pass buffers=[input_ids, shift_labels, position_ids, ...] and buffer_seq_dims=[1, 1, 1, "
                         "...].")
    if len(dims) != len(buffers):
        raise ValueError(f"maybe_context_parallel got {len(buffers)} buffers but {len(dims)} buffer_seq_dims; give "
                         "one sequence dimension per buffer.")
    lengths: list[int] = []
    storages: dict[int, int] = {}
    for i, (buffer, dim) in enumerate(zip(buffers, dims, strict=True)):
        if not isinstance(buffer, torch.Tensor) or isinstance(buffer, nn.Parameter):
            raise TypeError(f"buffers[{i}] is a {type(buffer).__name__}; context parallelism splits plain tensors "
                            "(inputs, labels, positions), never parameters.")
        if not -buffer.dim() <= dim < buffer.dim():
            raise ValueError(f"buffer_seq_dims[{i}]={dim} is out of range for buffers[{i}] of shape "
                             f"{tuple(buffer.shape)}.")
        dims[i] = dim % buffer.dim()  # torch reads a positive dim as "after the batch dim"
        lengths.append(int(buffer.shape[dim]))
        pointer = buffer.untyped_storage().data_ptr()
        if pointer in storages and buffer.numel():
            raise ValueError(f"buffers[{storages[pointer]}] and buffers[{i}] share memory (views of one tensor); each "
                             "is cut and written back in place, so one would overwrite the other. Pass a .clone() of "
                             "one of them.")
        storages[pointer] = i
    if len(set(lengths)) > 1:
        raise ValueError(f"the buffers' sequence lengths differ ({lengths}); every buffer must hold the same "
                         "sequences.")
    if lengths[0] % cp_size:
        raise ValueError(f"sequence length {lengths[0]} does not split over cp_size={cp_size}; pad the sequences to "
                         f"a multiple of {2 * cp_size} (2 x cp_size, which also balances the causal work).")
    return buffers, dims


def region_active() -> bool:
    """True inside a context-parallel region of this process."""
    return _active[0] > 0


@contextlib.contextmanager
def region(pc: ParallelismConfig, buffers: Any, buffer_seq_dims: Any, no_restore_buffers: Any) -> Iterator[None]:
    """Ring attention over this rank's cp group, the buffers split along their sequence
    dims (in place; restored at exit except ``no_restore_buffers``). A collective region:
    every rank of the cp group enters it with the same shapes."""
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    if pc.device_mesh is None:
        raise RuntimeError("the device mesh is not built yet; the Accelerator builds it at construction.")
    if region_active():
        raise RuntimeError("maybe_context_parallel is already active: torch's context parallelism cannot be nested "
                           "(leaving the inner block would end ring attention for the outer one). Enter it once per "
                           "step.")
    buffers, dims = check_buffers(buffers, buffer_seq_dims, pc.size("cp"))
    handler = pc.cp_handler
    set_rotate_method(handler.cp_comm_strategy if handler is not None else "allgather")
    mesh = pc.device_mesh["cp"]
    keep = set(no_restore_buffers or ())
    with context_parallel(mesh, buffers=buffers, buffer_seq_dims=dims, no_restore_buffers=keep):
        if mesh.device_type == "cpu":
            _register_cpu_ring()  # torch's exit restores the handler table without it
        _active[0] += 1
        try:
            yield
        finally:
            _active[0] -= 1


def _register_cpu_ring() -> None:
    from torch.distributed.tensor import DTensor

    aten = torch.ops.aten
    handlers = DTensor._op_dispatcher._custom_op_handlers
    handlers[getattr(aten, _CPU_FORWARD).default] = _cpu_ring_forward
    handlers[getattr(aten, _CPU_FORWARD + "_backward").default] = _cpu_ring_backward


def _local_call(op_call: Any, args: Any, kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """The cp mesh and the op's arguments as local tensors, by schema name."""
    from torch.distributed.tensor import DTensor, Shard

    info = DTensor._op_dispatcher.unwrap_to_op_info(op_call, args, kwargs)
    names = [a.name for a in op_call._schema.arguments]
    for name, arg in zip(names, args, strict=False):
        if isinstance(arg, DTensor) and (arg.device_mesh.ndim != 1 or tuple(arg.placements) != (Shard(2),)):
            raise ValueError(f"ring attention on CPU takes {name} split along the sequence (Shard(2)) over the cp "
                             f"mesh; got {tuple(arg.placements)} over a {arg.device_mesh.ndim}-D mesh. Keep attention "
                             "inputs as local tensors inside maybe_context_parallel.")
    named = dict(zip(names, info.local_args, strict=False))
    named.update(info.local_kwargs)
    if named.get("attn_mask") is not None:
        raise ValueError("context parallelism runs causal attention without a mask; drop attn_mask (transformers "
                         "models prepared by surge drop it themselves).")
    return info.compute_mesh, named


def _shard_out(mesh: Any, tensors: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
    from torch.distributed.tensor import DTensor, Shard

    return tuple(DTensor.from_local(t, mesh, [Shard(2)], run_check=False) for t in tensors)


def _cpu_ring_forward(op_call: Any, args: Any, kwargs: Any) -> tuple[Any, ...]:
    """DTensor handler: SDPA's CPU kernel round the cp ring (output and log-sum-exp)."""
    from torch.distributed.tensor.experimental._context_parallel._attention import _templated_ring_attention

    mesh, a = _local_call(op_call, args, kwargs)
    out, lse = _templated_ring_attention(
        mesh.get_group(), 2, getattr(torch.ops.aten, _CPU_FORWARD).default, a["query"], a["key"], a["value"],
        is_causal=bool(a.get("is_causal", False)), dropout_p=a.get("dropout_p", 0.0), scale=a.get("scale"))[:2]
    return _shard_out(mesh, (out, lse))


def _cpu_ring_backward(op_call: Any, args: Any, kwargs: Any) -> tuple[Any, ...]:
    """DTensor handler: the backward of :func:`_cpu_ring_forward` (query, key, value grads)."""
    from torch.distributed.tensor.experimental._context_parallel._attention import (
        _templated_ring_attention_backward,
    )

    mesh, a = _local_call(op_call, args, kwargs)
    grads = _templated_ring_attention_backward(
        mesh.get_group(), 2, getattr(torch.ops.aten, _CPU_FORWARD + "_backward").default, grad_out=a["grad_out"],
        grad_out_name="grad_out", query=a["query"], key=a["key"], value=a["value"], out=a["out"],
        logsumexp=a["logsumexp"], is_causal=bool(a["is_causal"]), dropout_p=a["dropout_p"], scale=a.get("scale"))
    return _shard_out(mesh, tuple(grads[:3]))


def _stricter_masks(model: nn.Module) -> set[str]:
    """Attention layer types of ``model`` other than full causal (sliding window, chunked)."""
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return {t for t in layer_types if t != "full_attention"}
    return {"sliding_attention"} if getattr(config, "sliding_window", None) else set()


def _causal_without_mask(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    if "attention_mask" in kwargs:
        kwargs["attention_mask"] = None
        kwargs["is_causal"] = True
    return args, kwargs


def _check_call(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
    if not region_active() or (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
        return  # the main process speaks for all: the call is the same on every process
    from surge.advice import emit  # it finds the user's line only when it warns

    if "input_ids" in kwargs and kwargs.get("position_ids") is None:
        emit("cp-position-ids", "the model is called inside maybe_context_parallel without position_ids: each rank "
             "numbers its shard of the sequence from 0, so rotary positions are wrong. Add position_ids (torch.arange "
             "of the sequence length) to the batch and to the buffers.")
    if kwargs.get("labels") is not None and kwargs.get("shift_labels") is None:
        emit("cp-shift-labels", "the model is called inside maybe_context_parallel with labels but no shift_labels: "
             "the labels are shifted within each rank's shard, pairing tokens with the wrong targets. Shift them over "
             "the whole sequence first (batch['shift_labels']) and add them to the buffers.")


def prepare_model(model: nn.Module) -> nn.Module:
    """Make ``model`` attend causally without masks under context parallelism (in place):
    a pre-hook on every ``*self_attn`` module, and a check of each call's inputs.

    Raises:
        ValueError: the model's attention layers use a stricter mask than full causal.
    """
    stricter = _stricter_masks(model)
    if stricter:
        raise ValueError(f"context parallelism cannot express attention layers of type {sorted(stricter)} (model "
                         f"{type(model).__name__}): ring attention is full causal, so their masks would be dropped. "
                         "Use a full-attention model, or sequence parallelism (sp_size) instead of cp_size.")
    if model in _PREPARED:
        return model
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            module.register_forward_pre_hook(_causal_without_mask, with_kwargs=True, prepend=True)
    model.register_forward_pre_hook(_check_call, with_kwargs=True)
    _PREPARED.add(model)
    return model
