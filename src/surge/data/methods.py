"""The Accelerator's DataLoader methods and settings (a mixin, to keep accelerator.py small)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from surge import ops
from surge._tree import tree_leaves, tree_map
from surge.data.loader import PreparedDataLoader, SkipFirstBatches, shard_dataloader

if TYPE_CHECKING:
    from surge.accumulation import GradientState
    from surge.config.accelerator_config import AcceleratorConfig
    from surge.config.dataloader import DataLoaderConfiguration
    from surge.config.parallelism import ParallelismConfig


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _in_context_parallel_region() -> bool:
    from surge.parallel.context import region_active

    return region_active()


def _trim_first_dim(data: Any, size: int, keep: int) -> Any:
    """Cut tensors (and a top-level list) whose first dimension is ``size`` to ``keep``."""
    if isinstance(data, list) and len(data) == size:
        return data[:keep]
    return tree_map(lambda t: t[:keep] if t.dim() and t.shape[0] == size else t, data, _is_tensor)


class DataLoadingMixin:
    """``prepare_data_loader``, ``skip_first_batches``, the loader settings and the
    collectives on batches (``gather``, ``gather_for_metrics``, ``pad_across_processes``), with
    HF Accelerate's names (see [Note: the loader's randomness is Accelerate's] in
    data/loader.py)."""

    config: AcceleratorConfig
    gradient_state: GradientState
    _dataloaders: list[PreparedDataLoader]

    if TYPE_CHECKING:
        @property
        def device(self) -> torch.device: ...
        @property
        def num_processes(self) -> int: ...
        @property
        def process_index(self) -> int: ...
        def _fill_deepspeed_batch_sizes(self, loader: DataLoader[Any]) -> None: ...

    _sp_slice: int | None = None
    """Under sequence parallelism: the sequence length of this rank's slice of the last batch."""

    def _cut_at(self, length: int) -> None:
        self._sp_slice = length

    def _parallelism(self) -> ParallelismConfig | None:
        plan = getattr(self, "plan", None)
        return plan.parallelism if plan is not None else None

    def _data_shards(self) -> tuple[int, int]:
        """(shards, this process's shard): one per data-parallel index. The processes of a
        tensor- or sequence-parallel group (the mesh's innermost dims) read the same batches."""
        pc = self._parallelism()
        if pc is None or pc.non_data_parallel_size == 1:
            return self.num_processes, self.process_index
        return pc.data_parallel_size, self.process_index // pc.non_data_parallel_size

    @property
    def dataloader_config(self) -> DataLoaderConfiguration:
        """The prepared loaders' settings (``Accelerator(dataloader_config=...)``)."""
        return self.config.dataloader

    @property
    def dispatch_batches(self) -> bool | None:
        return self.config.dataloader.dispatch_batches

    @property
    def use_seedable_sampler(self) -> bool:
        return self.config.dataloader.use_seedable_sampler

    @property
    def non_blocking(self) -> bool:
        return self.config.dataloader.non_blocking

    @property
    def use_stateful_dataloader(self) -> bool:
        return self.config.dataloader.use_stateful_dataloader

    def prepare_data_loader(self, data_loader: DataLoader[Any], device_placement: bool | None = None,
                            slice_fn_for_dispatch: Any = None) -> PreparedDataLoader:
        """Shard a DataLoader across processes and move its batches to :attr:`device`,
        with :attr:`dataloader_config`'s settings (``prepare`` calls it).

        Raises:
            TypeError: not a DataLoader.
            ValueError: a setting the loader cannot honour (named, with the fix).
        """
        if isinstance(data_loader, PreparedDataLoader):
            if data_loader not in self._dataloaders:
                self._dataloaders.append(data_loader)
            return data_loader
        if not isinstance(data_loader, DataLoader):
            raise TypeError(f"prepare_data_loader expects a torch DataLoader; got {type(data_loader).__name__}.")
        if slice_fn_for_dispatch is not None:
            raise ValueError("prepare_data_loader(slice_fn_for_dispatch=...) is not supported: dispatched batches are "
                             "sliced along their first dimension. Leave it unset.")
        place = self.config.device_placement if device_placement is None else device_placement
        self._fill_deepspeed_batch_sizes(data_loader)
        dl = self.config.dataloader
        prepared = shard_dataloader(
            data_loader, num_shards=self._data_shards()[0], shard_index=self._data_shards()[1],
            device=self.device if place else None, gradient_state=self.gradient_state,
            split_batches=dl.split_batches, even_batches=dl.even_batches, dispatch_batches=dl.dispatch_batches,
            use_seedable_sampler=dl.use_seedable_sampler, data_seed=dl.data_seed, non_blocking=dl.non_blocking,
        )
        pc = self._parallelism()
        if pc is not None and pc.sp_enabled:
            from surge.parallel.wiring import SequenceShards

            # Every rank of an sp group read the same batch; each keeps its part of the sequences.
            sp_rank = int(pc.device_mesh.get_local_rank("sp")) if pc.device_mesh is not None else 0
            prepared.batch_transform = SequenceShards(sp_rank, pc.size("sp"), pc.sp_handler, on_cut=self._cut_at)
        self._dataloaders.append(prepared)
        return prepared

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> SkipFirstBatches:
        """Iterate ``dataloader``'s current epoch without its first ``num_batches`` batches
        (to resume mid-epoch). With a prepared map-style loader the skipped samples are
        not loaded, the draws are the epoch's own, and the loader's epoch advances as
        after a full iteration."""
        return SkipFirstBatches(dataloader, num_batches)

    # -- collectives ----------------------------------------------------------------------

    def gather(self, tensor: Any) -> Any:
        """Concatenate tensors from all processes along dim 0 (see :func:`surge.ops.gather`)."""
        return ops.gather(tensor)

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """Gather values computed on a prepared loader's batches without the samples
        repeated to even out the last batches, so a metric sees every sample once.

        Two patterns are exact: call it on each batch inside the loop (the repeats of
        the batch just yielded are dropped), or collect this process's values for the
        whole loop and call it once after the loop (the repeats at the end of the
        epoch are dropped). The second also works with ``even_batches=False``, where a
        per-batch call would leave the process with fewer batches out of the collective.
        Only values whose first dimension matches the batch (or the epoch's sample
        count) are trimmed. Tensors are gathered with :meth:`gather`, anything else (or
        ``use_gather_object=True``) with ``gather_object``. Under sequence parallelism,
        tensors whose second dimension is this rank's slice of the last batch's sequences
        are first joined into whole sequences across the sp group (every sp rank must call it).
        Inside ``maybe_context_parallel`` every cp rank's values are kept (each holds its own
        part of the sequences, as in Accelerate); outside it, the first rank of each cp group.
        """
        return self._gather_for_metrics(input_data, use_gather_object, every_cp_rank=_in_context_parallel_region())

    def _gather_for_metrics(self, input_data: Any, use_gather_object: bool = False, *,
                            every_cp_rank: bool = False) -> Any:
        """:meth:`gather_for_metrics`; ``every_cp_rank``: keep each cp rank's values (they
        were computed on its part of the sequences: transformers' Trainer evaluates inside
        ``maybe_context_parallel`` and gathers after it)."""
        gs = self.gradient_state
        if gs.batch_real_count is not None:
            size, keep = gs.batch_size, gs.batch_real_count
        else:
            size, keep = gs.epoch_samples, gs.epoch_samples - gs.epoch_padding
        if size is not None and keep < size:
            input_data = _trim_first_dim(input_data, size, keep)
        pc = self._parallelism()
        if pc is not None and pc.sp_enabled and self._sp_slice is not None:
            from surge.parallel.wiring import join_sequence_slices

            # Per-token values hold this rank's slice of each sequence: whole sequences first.
            input_data = join_sequence_slices(input_data, self._sp_slice, pc)
        shared = pc.non_data_parallel_size if pc is not None else 1
        if pc is not None and pc.cp_enabled and every_cp_rank:
            shared = pc.size("tp")  # inside maybe_context_parallel each cp rank holds its own part (as Accelerate)
        if self.process_index % shared:
            # A tensor- / sequence-parallel group reads one batch: only its first process's values count.
            input_data = input_data[:0] if isinstance(input_data, list) else tree_map(
                lambda t: t.reshape(1)[:0] if t.dim() == 0 else t[:0], input_data, _is_tensor)
        if use_gather_object or not tree_leaves(input_data, _is_tensor):
            return ops.gather_object(input_data)
        return ops.gather(input_data)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad tensors along ``dim`` to the largest size on any process."""
        return ops.pad_across_processes(tensor, dim=dim, pad_index=pad_index, pad_first=pad_first)
