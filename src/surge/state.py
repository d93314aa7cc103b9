"""Process-level state: ``PartialState`` and the rank queries it shares with the
Accelerator.

There is no hidden singleton: every ``PartialState`` and every ``Accelerator``
computes its own :class:`~surge.topology.Topology`; the one process-wide resource is
PyTorch's default process group (process_group.py), which is created once, checked for
consistency by later callers, and can be torn down with :func:`destroy_process_group`.
``Topology``, ``DistributedType`` and the process-group functions are re-exported here
under their Accelerate-style module path (``surge.state``).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch

from surge.accumulation import GradientState
from surge.config.kwargs import as_timeout
from surge.config.resolve import resolve_timeout
from surge.process_group import (
    barrier,
    destroy_process_group,
    ensure_process_group,
    group_timeout,
    process_group_active,
    register_exit_cleanup,
)
from surge.topology import DistributedType, Topology

__all__ = [
    "AcceleratorState",
    "DistributedType",
    "GradientState",
    "PartialState",
    "ProcessQueries",
    "Topology",
    "destroy_process_group",
    "ensure_process_group",
    "group_timeout",
    "is_initialized",
    "process_group_active",
    "register_exit_cleanup",
    "split_for_rank",
]

F = TypeVar("F", bound=Callable[..., Any])


# --- helpers shared by PartialState and Accelerator ------------------------------------


class ProcessQueries:
    """Rank queries and rank-aware helpers, built on ``self.topology``."""

    topology: Topology

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self._device

    @functools.cached_property
    def _device(self) -> torch.device:
        return torch.device(self.topology.device)

    @property
    def num_processes(self) -> int:
        return self.topology.world_size

    @property
    def process_index(self) -> int:
        return self.topology.rank

    @property
    def local_process_index(self) -> int:
        return self.topology.local_rank

    @property
    def num_machines(self) -> int:
        return self.topology.num_nodes

    @property
    def is_main_process(self) -> bool:
        return self.topology.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        return self.topology.is_local_main_process

    @property
    def is_last_process(self) -> bool:
        return self.topology.is_last_process

    @property
    def use_distributed(self) -> bool:
        return self.topology.is_distributed

    @property
    def backend(self) -> str | None:
        return self.topology.backend

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this line (a barrier; no-op for one process)."""
        barrier(self.topology)

    @contextlib.contextmanager
    def _first(self, go_first: bool) -> Iterator[None]:
        if not go_first:
            self.wait_for_everyone()
        yield
        if go_first:
            self.wait_for_everyone()

    def main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Run the block on the main process first, then on the others (e.g. dataset
        preprocessing that writes a cache the others then read)."""
        return self._first(self.is_main_process)

    def local_main_process_first(self) -> contextlib.AbstractContextManager[None]:
        """Like :meth:`main_process_first`, once per machine."""
        return self._first(self.is_local_main_process)

    def _only_if(self, flag_name: str, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(self, flag_name):
                return fn(*args, **kwargs)
            return None

        return wrapper  # type: ignore[return-value]

    def on_main_process(self, function: F) -> F:
        """Decorator: run ``function`` on the main process only (others get None)."""
        return self._only_if("is_main_process", function)

    def on_local_main_process(self, function: F) -> F:
        """Decorator: run ``function`` on each machine's first process only."""
        return self._only_if("is_local_main_process", function)

    def on_last_process(self, function: F) -> F:
        """Decorator: run ``function`` on the last process only."""
        return self._only_if("is_last_process", function)

    def on_process(self, function: F | None = None, process_index: int | None = None) -> Any:
        """Decorator: run ``function`` on the process with ``process_index`` only."""
        if function is None:
            return functools.partial(self.on_process, process_index=process_index)
        if process_index is None:
            raise TypeError("on_process needs process_index=<rank>.")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.process_index == process_index:
                return function(*args, **kwargs)
            return None

        return wrapper

    def on_local_process(self, function: F | None = None, local_process_index: int | None = None) -> Any:
        """Decorator: run ``function`` on the process with ``local_process_index`` on each
        machine only (others get None)."""
        if function is None:
            return functools.partial(self.on_local_process, local_process_index=local_process_index)
        if local_process_index is None:
            raise TypeError("on_local_process needs local_process_index=<local rank>.")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.local_process_index == local_process_index:
                return function(*args, **kwargs)
            return None

        return wrapper

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the main process only."""
        if self.is_main_process:
            print(*args, **kwargs)

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """Yield this process's contiguous share of ``inputs`` (a list, tuple, tensor or a
        dict of those, split along the first dimension).

        Shares differ by at most one item, earlier ranks getting the extra ones. With
        ``apply_padding=True`` shorter shares are padded with their last item so every
        rank gets the same count (useful before ``gather``; drop the padding afterwards).

        Example:
            >>> with state.split_between_processes(["a", "b", "c"]) as prompts:
            ...     results = [generate(p) for p in prompts]
        """
        yield split_for_rank(inputs, self.num_processes, self.process_index, apply_padding)


def split_for_rank(inputs: Any, num_shards: int, index: int, apply_padding: bool = False) -> Any:
    """The ``index``-th of ``num_shards`` contiguous shares of ``inputs``. Pure."""
    if num_shards == 1:
        return inputs
    if isinstance(inputs, Mapping):
        lengths = {k: len(v) for k, v in inputs.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"split_between_processes needs dict values of one length; got lengths {lengths}.")
        split = {k: split_for_rank(v, num_shards, index, apply_padding) for k, v in inputs.items()}
        return type(inputs)(split)  # type: ignore[call-arg]  # a dict subclass built from a dict
    if not isinstance(inputs, (Sequence, torch.Tensor)) or isinstance(inputs, (str, bytes)):
        raise TypeError(
            f"split_between_processes cannot split a {type(inputs).__name__}; pass a list, tuple, tensor or a "
            "dict of those."
        )
    items: Any = inputs  # a sequence or a tensor: sliced, concatenated or repeated alike below
    n = len(items)
    per, extra = divmod(n, num_shards)
    start = index * per + min(index, extra)
    size = per + (1 if index < extra else 0)
    share = items[start : start + size]
    missing = (per + (1 if extra else 0)) - size
    if apply_padding and missing and n:
        # Pad with this share's last item (or the input's last item for an empty share).
        filler = items[start + size - 1 : start + size] if size else items[n - 1 : n]
        if isinstance(share, torch.Tensor):
            share = torch.cat([share] + [filler] * missing)
        elif isinstance(share, (list, tuple)):
            share = share + filler * missing
        else:
            share = list(share) + list(filler) * missing
    return share


class PartialState(ProcessQueries):
    """Process-level state without an Accelerator: topology, device, process group.

    Creating one starts the default process group when the job has several processes
    (and reuses a running one). Instances are cheap and independent; several may exist.

    Args:
        cpu: Use the CPU even when GPUs are visible.
        timeout: How long a collective may wait (timedelta or seconds); default 10 minutes.
        backend: "nccl", "gloo" or "mpi"; None picks by device.

    Example:
        >>> state = surge.PartialState()
        >>> with state.split_between_processes(prompts) as mine: ...
    """

    def __init__(
        self,
        cpu: bool = False,
        *,
        timeout: timedelta | float | None = None,
        backend: str | None = None,
        init_method: str | None = None,
    ) -> None:
        if not isinstance(cpu, bool):
            raise TypeError(f"cpu={cpu!r} must be True or False.")
        self.timeout = None if timeout is None else as_timeout("timeout", timeout)
        self.topology = Topology.detect(cpu=cpu, backend=backend)
        if self.topology.is_distributed:  # one process has no group, and reads no config file for one
            ensure_process_group(self.topology, timeout=resolve_timeout(self.timeout), asked=self.timeout is not None,
                                 init_method=init_method)

    @property
    def distributed_type(self) -> DistributedType:
        return self.topology.distributed_type

    @property
    def initialized(self) -> bool:
        """Always True (Accelerate's flag for its singleton having been set up)."""
        return True

    @property
    def fork_launched(self) -> bool:
        """False: surge's launchers start processes afresh (Accelerate's flag for a fork launch)."""
        return False

    @property
    def debug(self) -> bool:
        """False: surge has no debug mode that changes collectives."""
        return False

    @staticmethod
    def _reset_state(reset_partial_state: bool = False) -> None:
        """Forget the most recent Accelerator (see :class:`AcceleratorState`); there is no
        other process-wide state to reset (see [Note: several Accelerators])."""
        _LATEST.clear()

    def destroy_process_group(self) -> None:
        """Tear down the default process group (see :func:`destroy_process_group`)."""
        destroy_process_group()

    def __repr__(self) -> str:
        t = self.topology
        return (
            f"PartialState(distributed_type={self.distributed_type.value}, num_processes={t.world_size}, "
            f"process_index={t.rank}, local_process_index={t.local_rank}, device={t.device!r}, backend={t.backend!r})"
        )



# The most recent Accelerator, for AcceleratorState() built without one; nothing in surge
# reads it (see [Note: several Accelerators] in accelerator.py).
_LATEST: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def remember_accelerator(accelerator: Any) -> None:
    """Record ``accelerator`` as the most recent one (its constructor calls this last)."""
    _LATEST["latest"] = accelerator


def is_initialized() -> bool:
    """Whether an Accelerator exists in this process (``AcceleratorState()`` then reads the
    most recent one): Accelerate's ``AcceleratorState`` is set up. False after
    ``AcceleratorState._reset_state()``."""
    return _LATEST.get("latest") is not None


class AcceleratorState(PartialState):
    """HF Accelerate's ``AcceleratorState``: the job and the Accelerator's settings.

    surge has no process-wide Accelerator state (see [Note: several Accelerators] in
    accelerator.py), so this is a view. ``accelerator.state`` reads that Accelerator.
    ``AcceleratorState()`` built by a script reads the most recent Accelerator still alive
    in this process; with none, it answers from the launch environment as a
    :class:`PartialState` does (starting or reusing the process group), with
    ``mixed_precision`` and the plugins as given (else the config file's precision, else "no").

    Raises:
        ValueError: ``mixed_precision`` or ``cpu`` contradicts the Accelerator it reads.
        UnsupportedError: ``megatron_lm_plugin`` / ``torch_tp_plugin`` (not supported).
    """

    def __init__(
        self,
        mixed_precision: str | None = None,
        cpu: bool = False,
        dynamo_plugin: Any = None,
        deepspeed_plugin: Any = None,
        fsdp_plugin: Any = None,
        torch_tp_plugin: Any = None,
        megatron_lm_plugin: Any = None,
        parallelism_config: Any = None,
        _from_accelerator: Any = None,
        **kwargs: Any,
    ) -> None:
        from surge.unsupported import unsupported

        for name, value, what in (("megatron_lm_plugin", megatron_lm_plugin, "Megatron-LM"),
                                  ("torch_tp_plugin", torch_tp_plugin, "tensor parallelism")):
            if value is not None:
                unsupported(f"AcceleratorState({name}=...)", what)
        accelerator = _from_accelerator if _from_accelerator is not None else _LATEST.get("latest")
        self._accelerator = accelerator
        if accelerator is None:
            super().__init__(cpu=cpu)
            if mixed_precision is None:
                from surge.config.file import active_values

                mixed_precision = active_values()[0].get("mixed_precision") or "no"
            self._mixed_precision = str(mixed_precision)
            self._plugins = {"deepspeed": deepspeed_plugin, "fsdp": fsdp_plugin, "dynamo": dynamo_plugin}
            return
        self.topology = accelerator.topology
        self.timeout = None
        if mixed_precision is not None and mixed_precision != accelerator.mixed_precision:
            raise ValueError(f"AcceleratorState(mixed_precision={mixed_precision!r}) contradicts the running "
                             f"Accelerator's {accelerator.mixed_precision!r}; pass it to Accelerator() instead.")
        if cpu and accelerator.device.type != "cpu":
            raise ValueError(f"AcceleratorState(cpu=True) contradicts the running Accelerator on "
                             f"{accelerator.device}; pass cpu=True to Accelerator() instead.")
        self._mixed_precision = accelerator.mixed_precision
        self._plugins = {"deepspeed": accelerator.deepspeed_plugin, "fsdp": accelerator.fsdp_plugin,
                         "dynamo": accelerator.dynamo_plugin}

    @property
    def distributed_type(self) -> DistributedType:
        if self._accelerator is not None:
            return self._accelerator.distributed_type  # type: ignore[no-any-return]
        if self._plugins["deepspeed"] is not None:
            return DistributedType.DEEPSPEED
        return DistributedType.FSDP if self._plugins["fsdp"] is not None else self.topology.distributed_type

    @property
    def mixed_precision(self) -> str:
        return self._mixed_precision

    @property
    def deepspeed_plugin(self) -> Any:
        return self._plugins["deepspeed"]

    @property
    def fsdp_plugin(self) -> Any:
        return self._plugins["fsdp"]

    @property
    def dynamo_plugin(self) -> Any:
        return self._plugins["dynamo"]

    @property
    def parallelism_config(self) -> Any:
        """The running Accelerator's ``ParallelismConfig`` (None without one)."""
        return self._accelerator.parallelism_config if self._accelerator is not None else None

    @property
    def device_mesh(self) -> Any:
        """The running Accelerator's ``DeviceMesh`` (``accelerator.torch_device_mesh``)."""
        return self._accelerator.torch_device_mesh if self._accelerator is not None else None

    @property
    def is_fsdp2(self) -> bool:
        """True under FSDP: surge's FSDP is FSDP2 (``fully_shard``)."""
        return self.distributed_type == DistributedType.FSDP

    @property
    def initialized(self) -> bool:
        """True when this state reads an Accelerator."""
        return self._accelerator is not None

    megatron_lm_plugin = None
    torch_tp_plugin = None
    use_ipex = False

    def __repr__(self) -> str:
        return (f"AcceleratorState(distributed_type={self.distributed_type.value}, num_processes={self.num_processes}, "
                f"process_index={self.process_index}, device={self.device}, mixed_precision={self.mixed_precision!r})")
