"""Ulysses sequence parallelism inside the Accelerator (``ParallelismConfig(sp_size=N)``).

[Note: sequence parallelism in the Accelerator]
The ``sp`` processes of a group (neighbours in the mesh: dp_replicate, dp_shard, cp, sp,
tp) train on the same batches, each on a contiguous ``1/sp`` of every sequence:

* the prepared DataLoader is sharded over the data-parallel dims only, so the group
  reads one batch; :class:`SequenceShards` then cuts this rank's part of it (labels
  shifted over the whole sequence first and handed out as ``shift_labels``, global
  ``position_ids`` added), as DeepSpeed's ``UlyssesSPDataLoaderAdapter`` hands them out;
* ``prepare(model)`` makes the transformers model attend under Ulysses on the group
  (:func:`surge.parallel.apply_ulysses`: all-to-all over attention heads);
* gradients average over ``dp x sp`` processes, as DeepSpeed averages over its
  sequence-data-parallel group: DDP over every process, or FSDP2 sharding over
  ``dp_shard x sp``. The loss that makes this the gradient of the global token mean is
  :func:`surge.parallel.sequence_parallel_loss` (value: the global mean; gradient: ``sp``
  times this rank's share), which is also what Accelerate's ALST recipe computes
  (per-shard losses all-gathered with autograd and weighted by their token counts).

What differs from Accelerate + DeepSpeed: their adapter gathers ``sp`` different batches
(one per rank, the loader being sharded over every process) and runs them one after
another; here the group reads each batch once. The number of steps per epoch and the
samples per step are the same; which samples share a step differs (see docs/migrating.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from surge.config.parallelism import DeepSpeedSequenceParallelConfig, ParallelismConfig


def sp_group(pc: ParallelismConfig) -> Any:
    """The process group of this rank's sp dimension (the mesh must be built)."""
    if pc.device_mesh is None:
        raise RuntimeError("the device mesh is not built yet; the Accelerator builds it at construction.")
    return pc.device_mesh["sp"].get_group()


def prepare_model(model: nn.Module, pc: ParallelismConfig) -> nn.Module:
    """Make ``model`` attend under Ulysses over this rank's sp group (in place).

    Raises:
        TypeError: not a transformers model (no ``config``), as Accelerate.
        ValueError: attention heads not divisible by ``sp_size`` (with ``tp_size``: the
            heads each tensor-parallel rank holds), or no attention modules found.
    """
    from surge.parallel.ulysses import apply_ulysses

    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"ParallelismConfig(sp_size={pc.sp_size}): Ulysses sequence parallelism works on "
                        f"transformers models (with a .config); {type(model).__name__} has none. Use "
                        "surge.parallel.UlyssesAttention in your own attention instead, with sp_size=1 here.")
    tp, sp = pc.size("tp"), pc.size("sp")
    for what, heads in (("attention heads (num_attention_heads)", getattr(config, "num_attention_heads", None)),
                        ("key/value heads (num_key_value_heads)", getattr(config, "num_key_value_heads", None))):
        if tp > 1 and heads is not None and int(heads) % (tp * sp):
            raise ValueError(f"the model's {heads} {what} do not split over tp_size={tp} x sp_size={sp}: each "
                             f"tensor-parallel rank holds heads / {tp}, which Ulysses splits over {sp} ranks; choose "
                             f"sizes whose product divides {heads}.")
    return apply_ulysses(model, sp_group(pc))


class SequenceShards:
    """The batch transform of a prepared loader under sp: this rank's sequence shard.

    Called on each batch after it reached the device. Dict batches only (as DeepSpeed's
    adapter): a tuple or tensor batch cannot say which entry is the sequence.
    """

    def __init__(self, sp_rank: int, sp_size: int, handler: DeepSpeedSequenceParallelConfig | None,
                 on_cut: Callable[[int], None] | None = None) -> None:
        self.sp_rank, self.sp_size = sp_rank, sp_size
        self.on_cut = on_cut  # told the slice length of each batch (gather_for_metrics joins slices)
        self.fixed_length = None if handler is None or handler.sp_seq_length_is_variable else handler.sp_seq_length

    def __call__(self, batch: Any) -> Any:
        from surge.parallel.ulysses import shard_sequence_for_rank

        if not isinstance(batch, Mapping):
            raise TypeError(f"with sp_size={self.sp_size} the prepared DataLoader splits each batch along the "
                            f"sequence, which needs dict batches (input_ids, labels, ...); got "
                            f"{type(batch).__name__}. Return a dict from the collate_fn.")
        if self.fixed_length is not None:
            ref = batch.get("input_ids", batch.get("labels"))
            if ref is not None and ref.shape[1] != self.fixed_length:
                raise ValueError(f"a batch has sequence length {ref.shape[1]}, but sp_seq_length={self.fixed_length} "
                                 "with sp_seq_length_is_variable=False; pad batches to that length or set "
                                 "sp_seq_length_is_variable=True.")
        cut = shard_sequence_for_rank(batch, self.sp_rank, self.sp_size)
        ref = cut.get("input_ids", cut.get("shift_labels"))
        if self.on_cut is not None and ref is not None:
            self.on_cut(int(ref.shape[1]))
        return cut


def join_sequence_slices(data: Any, slice_length: int, pc: ParallelismConfig) -> Any:
    """``data`` with every tensor whose dim 1 is ``slice_length`` (a per-token value of this
    rank's slice) all-gathered over the sp group and joined into whole sequences, in slice
    order; other values unchanged. A collective on the sp group."""
    import torch
    import torch.distributed as dist

    from surge._tree import tree_map

    group = sp_group(pc)

    def join(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 2 or t.shape[1] != slice_length:
            return t
        parts = [torch.empty_like(t) for _ in range(pc.size("sp"))]
        dist.all_gather(parts, t.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    return tree_map(join, data, lambda x: isinstance(x, torch.Tensor))
