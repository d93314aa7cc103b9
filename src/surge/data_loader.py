"""HF Accelerate's ``accelerate.data_loader`` names: shard a DataLoader without an
Accelerator, skip the first batches of one, and the seedable sampler.

Example:
    >>> from surge.data_loader import prepare_data_loader, skip_first_batches
    >>> loader = prepare_data_loader(DataLoader(dataset, batch_size=8, shuffle=True))
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from surge.accumulation import GradientState
from surge.data.loader import PreparedDataLoader, SkipFirstBatches, shard_dataloader
from surge.data.sampler import SeedableRandomSampler

__all__ = ["PreparedDataLoader", "SeedableRandomSampler", "SkipFirstBatches", "prepare_data_loader",
           "skip_first_batches"]


def prepare_data_loader(
    dataloader: DataLoader[Any],
    device: torch.device | None = None,
    num_processes: int | None = None,
    process_index: int | None = None,
    split_batches: bool = False,
    put_on_device: bool = False,
    rng_types: list[str] | None = None,
    dispatch_batches: bool | None = None,
    even_batches: bool = True,
    slice_fn_for_dispatch: Any = None,
    use_seedable_sampler: bool = False,
    data_seed: int | None = None,
    non_blocking: bool = False,
    use_stateful_dataloader: bool = False,
    torch_device_mesh: Any = None,
) -> PreparedDataLoader:
    """``dataloader`` sharded for process ``process_index`` of ``num_processes`` (both
    default to this process's place in the launched job), as Accelerate's function of
    the same name shards it (see [Note: the loader's randomness is Accelerate's] in
    surge/data/loader.py). Batches go to ``device`` only with ``put_on_device=True``.
    ``rng_types`` (None: nothing) names what each iteration synchronizes from rank 0:
    "generator" and/or "torch"; ``Accelerator.prepare`` uses ["generator"].

    Raises:
        ValueError: ``dispatch_batches=True`` without ``put_on_device=True``; unsupported
            arguments (``slice_fn_for_dispatch``, ``torch_device_mesh``); a batch size
            ``split_batches`` cannot divide.
    """
    from surge.config.dataloader import DataLoaderConfiguration

    if not isinstance(dataloader, DataLoader):
        raise TypeError(f"prepare_data_loader expects a torch DataLoader; got {type(dataloader).__name__}.")
    if dispatch_batches and not put_on_device:
        raise ValueError("prepare_data_loader(dispatch_batches=True) needs put_on_device=True (dispatched batches "
                         "are broadcast from the device).")
    for name, value in (("slice_fn_for_dispatch", slice_fn_for_dispatch), ("torch_device_mesh", torch_device_mesh)):
        if value is not None:
            raise ValueError(f"prepare_data_loader({name}=...) is not supported by surge; leave it None.")
    DataLoaderConfiguration(split_batches=split_batches, dispatch_batches=dispatch_batches, even_batches=even_batches,
                            use_seedable_sampler=use_seedable_sampler, data_seed=data_seed, non_blocking=non_blocking,
                            use_stateful_dataloader=use_stateful_dataloader)  # validates every value
    if num_processes is None or process_index is None or (put_on_device and device is None):
        from surge.state import PartialState

        state = PartialState()
        num_processes = state.num_processes if num_processes is None else num_processes
        process_index = state.process_index if process_index is None else process_index
        device = state.device if device is None else device
    return shard_dataloader(
        dataloader, num_shards=num_processes, shard_index=process_index,
        device=torch.device(device) if put_on_device and device is not None else None,
        gradient_state=GradientState(1), split_batches=split_batches, even_batches=even_batches,
        dispatch_batches=dispatch_batches, use_seedable_sampler=use_seedable_sampler, data_seed=data_seed,
        non_blocking=non_blocking, rng_types=tuple(rng_types or ()),
    )


def skip_first_batches(dataloader: Any, num_batches: int = 0) -> SkipFirstBatches:
    """Iterate ``dataloader`` once without its first ``num_batches`` batches (see
    :class:`~surge.data.loader.SkipFirstBatches`); a prepared loader's skipped samples
    are not even loaded."""
    return SkipFirstBatches(dataloader, num_batches)
