"""How prepared DataLoaders shard, order and move batches (HF Accelerate's
``DataLoaderConfiguration``, same names and defaults)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from surge.config._validate import check_bool, check_int


@dataclass(frozen=True)
class DataLoaderConfiguration:
    """Settings for the DataLoaders ``accelerator.prepare`` shards.

    Example:
        >>> Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=False))
    """

    split_batches: bool = False
    """True: each loader batch is split across processes (the batch size is global, and
    must be a multiple of the number of processes). False: each process gets whole
    batches (the global batch is batch_size x num_processes)."""
    dispatch_batches: bool | None = None
    """True: only the main process iterates the loader; each batch is broadcast and every
    process keeps its slice. None: True for an ``IterableDataset`` when batches are placed
    on the device, False otherwise (Accelerate's default)."""
    even_batches: bool = True
    """Repeat samples from the start of the data so every process gets the same number of
    full batches (map-style datasets; iterable ones always are)."""
    use_seedable_sampler: bool = False
    """Replace a ``RandomSampler`` by ``SeedableRandomSampler``: epoch ``e`` shuffles with
    ``data_seed + e``, the same on every process. Pair it with ``set_seed``."""
    data_seed: int | None = None
    """The seed of ``use_seedable_sampler``; None uses ``torch.initial_seed()``."""
    non_blocking: bool = False
    """Copy batches to the device without waiting (pair it with ``pin_memory=True``)."""
    use_stateful_dataloader: bool = False
    """Accelerate's switch for torchdata's ``StatefulDataLoader`` (needs ``torchdata``).
    surge's prepared loaders always record their position in ``save_state`` and resume
    mid-epoch, so the flag only checks that torchdata is there."""

    def __post_init__(self) -> None:
        for name in ("split_batches", "even_batches", "use_seedable_sampler", "non_blocking",
                     "use_stateful_dataloader"):
            check_bool(f"DataLoaderConfiguration.{name}", getattr(self, name))
        if self.dispatch_batches is not None:
            check_bool("DataLoaderConfiguration.dispatch_batches", self.dispatch_batches)
        if self.data_seed is not None:
            check_int("DataLoaderConfiguration.data_seed", self.data_seed, minimum=0)
        if self.use_stateful_dataloader and importlib.util.find_spec("torchdata") is None:
            raise ImportError("DataLoaderConfiguration(use_stateful_dataloader=True) needs torchdata >= 0.8: pip "
                              "install 'torchdata>=0.8'. (Without it, surge's prepared loaders still save their "
                              "position in save_state and resume mid-epoch.)")


def settle_dataloader_config(config: DataLoaderConfiguration | None, split_batches: bool | None,
                             even_batches: bool | None) -> DataLoaderConfiguration:
    """The loader settings from ``Accelerator(dataloader_config=, split_batches=,
    even_batches=)``: a plain argument fills the configuration; one that contradicts a
    given configuration raises.

    Raises:
        TypeError: ``config`` is not a DataLoaderConfiguration.
        ValueError: a plain argument differs from the configuration's value.
    """
    import dataclasses

    if config is not None and not isinstance(config, DataLoaderConfiguration):
        raise TypeError(f"dataloader_config={config!r} must be a DataLoaderConfiguration.")
    settled = config if config is not None else DataLoaderConfiguration()
    for name, value in (("split_batches", split_batches), ("even_batches", even_batches)):
        if value is None:
            continue
        if config is not None and value != getattr(config, name):
            raise ValueError(f"Accelerator({name}={value!r}) contradicts dataloader_config.{name}="
                             f"{getattr(config, name)!r}; set it in one place (the DataLoaderConfiguration).")
        settled = dataclasses.replace(settled, **{name: value})
    return settled
