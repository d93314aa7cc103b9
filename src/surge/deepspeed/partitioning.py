"""DeepSpeed's ZeRO-3 module API, ``deepspeed.zero``, as ``surge.zero``: ``GatheredParameters``,
``Init``, ``register_external_parameter``.

[Note: ZeRO-3 parameters under surge]
Under DeepSpeed a ZeRO-3 parameter is a placeholder whose data lives in 1/N partitions;
under surge ZeRO-2/3 are FSDP2 (``fully_shard``), so after ``prepare`` /
``surge.initialize`` each parameter is a ``DTensor`` holding this process's shard. Three
kinds of parameter reach :class:`GatheredParameters`, and every process must pass the same
parameters in the same order (the block is a collective, as under DeepSpeed):

1. **Sharded** (a ``DTensor``): on entry the shards are gathered and the parameter object
   itself becomes the full tensor on every process (``torch.utils.swap_tensors`` with a
   plain tensor, so both the references a script holds and ``module.weight`` see it, and
   ``state_dict()`` inside the block is full). On exit, with ``modifier_rank``, that
   process's values are broadcast and written into every process's shard; without it,
   changes are dropped; the object is a ``DTensor`` again either way.
2. **Built under** :class:`Init` and not yet prepared: rank 0 holds the real tensor, the
   others a meta-device placeholder (no memory). On entry rank 0's values are broadcast
   into real tensors on the other processes; on exit ``modifier_rank``'s values reach rank 0
   (``prepare`` later fills every process from rank 0, see [Note: a model built on the
   meta device] in strategies/meta.py) and the others go back to meta. Without
   ``modifier_rank`` rank 0's values are restored.
3. **Whole** (one process, DDP, ZeRO-1, or built normally): nothing to gather; on exit,
   with ``modifier_rank``, its values are broadcast so the processes stay the same
   (DeepSpeed's stage 0-2 do nothing here; the broadcast only keeps copies equal).

A parameter object held from before ``prepare`` is not the sharded one: ``fully_shard``
registers new parameter objects, so take them from the prepared module.

:class:`Init` builds a model with its full weights on rank 0 only (the other processes
build on the meta device), so a model that fits one process's CPU memory is never held
N times; ``prepare`` shards it and fills each process's shards from rank 0's weights, so
the trained model equals one built normally with rank 0's seed.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import torch
from torch import nn

__all__ = [
    "GatheredParameters",
    "Init",
    "ZeroParamStatus",
    "ZeroParamType",
    "register_external_parameter",
    "unregister_external_parameter",
]

_MARK = "_surge_zero_init"  # set on every parameter built under Init, on every process
_DEPTH = [0]  # how many Init blocks are open (nested ones do nothing, as in DeepSpeed)


class ZeroParamType(enum.Enum):
    """DeepSpeed's parameter kinds (for scripts that import them)."""

    NORMAL = 1
    PARTITIONED = 2
    REMOTE = 3


class ZeroParamStatus(enum.Enum):
    """DeepSpeed's parameter states (for scripts that import them)."""

    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


def register_external_parameter(module: nn.Module, parameter: nn.Parameter) -> None:
    """DeepSpeed's way to tell ZeRO-3 that ``module`` uses a parameter of another module in
    its forward. Nothing to do under surge: FSDP2 gathers a parameter wherever it is used.

    Raises:
        RuntimeError: ``parameter`` is not an ``nn.Parameter`` (as DeepSpeed).
    """
    if not isinstance(parameter, nn.Parameter):
        raise RuntimeError("Parameter is not a torch.nn.Parameter")


def unregister_external_parameter(module: nn.Module, parameter: nn.Parameter) -> None:
    """The reverse of :func:`register_external_parameter`; nothing to do under surge.

    Raises:
        RuntimeError: ``parameter`` is not an ``nn.Parameter``.
    """
    if not isinstance(parameter, nn.Parameter):
        raise RuntimeError("Parameter is not a torch.nn.Parameter")


class _Gathered(torch.Tensor):
    """What a sharded parameter becomes inside :class:`GatheredParameters`: a plain tensor
    (operations return ``torch.Tensor``) with ``DTensor``'s slots, which
    ``torch.utils.swap_tensors`` needs to exchange the two objects' contents."""

    __slots__ = ("_local_tensor", "_spec")
    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _rank() -> int:
    dist = _dist()
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0


def _broadcast(tensor: torch.Tensor, src: int) -> None:
    """Broadcast ``tensor`` from ``src`` over the job (through this process's GPU under nccl)."""
    dist = _dist()
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(staged, src=src)
        tensor.copy_(staged)
    else:
        dist.broadcast(tensor, src=src)


def _is_sharded(param: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(param, DTensor)


def _swap(param: torch.Tensor, replacement: torch.Tensor) -> None:
    """Exchange the contents of ``param`` and ``replacement`` (the objects keep their identity)."""
    try:
        torch.utils.swap_tensors(param, replacement)  # type: ignore[no-untyped-call]
    except RuntimeError as error:
        raise RuntimeError(
            f"GatheredParameters cannot replace a parameter of shape {tuple(param.shape)} by its full tensor: "
            f"{error}. Something else holds it (a weak reference, or an autograd graph still alive: call it outside "
            "forward/backward).") from error


def _mesh_device(mesh: Any) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


class GatheredParameters:
    """Inside the block, the given parameters hold their full values on every process;
    on exit, ``modifier_rank``'s values (if given) are kept everywhere, else changes are
    dropped (DeepSpeed's ``deepspeed.zero.GatheredParameters``). See [Note: ZeRO-3
    parameters under surge] for the three kinds of parameter.

    Every process must enter the block with the same parameters in the same order.

    Args:
        params: A parameter or an iterable of them (other objects are ignored, as DeepSpeed).
        modifier_rank: The process whose changes are kept; None: changes are dropped.
        fwd_module: DeepSpeed registers the parameters as external to it; not needed here.
        enabled: False: the block does nothing.

    Example:
        >>> with surge.zero.GatheredParameters(model.embed.weight, modifier_rank=0):
        ...     if surge.comm.get_rank() == 0:
        ...         model.embed.weight[pad_id].zero_()
    """

    def __init__(self, params: Any, modifier_rank: int | None = None, fwd_module: nn.Module | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.modifier_rank = modifier_rank
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, Iterable):
            params = list(params)
        else:
            params = []
        seen: set[int] = set()
        self.params: list[torch.Tensor] = []
        for p in params:
            if isinstance(p, torch.Tensor) and id(p) not in seen:
                seen.add(id(p))
                self.params.append(p)
        self._undo: list[Any] = []

    def __enter__(self) -> None:
        if not self.enabled or not self.params:
            return
        dist = _dist()
        if not (dist.is_available() and dist.is_initialized()):
            return  # one process, never sharded: the parameters are whole already
        sharded = [p for p in self.params if _is_sharded(p)]
        built = [p for p in self.params if not _is_sharded(p) and getattr(p, _MARK, False)]
        whole = [p for p in self.params if not _is_sharded(p) and not getattr(p, _MARK, False)]
        try:
            with torch.no_grad():
                for p in sharded:
                    self._undo.append(self._gather_sharded(p))
                for p in built:
                    self._undo.append(self._gather_built(p))
        except BaseException:
            self._restore()  # put back what was gathered before the failure
            raise
        if whole and self.modifier_rank is not None:
            self._undo.append(self._keep_whole(whole))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._restore()
            return
        with torch.no_grad():
            while self._undo:
                self._undo.pop(0)(True)

    def _restore(self) -> None:
        """Put every parameter back as it was (no modifier's values, no collective for whole ones)."""
        with torch.no_grad():
            while self._undo:
                self._undo.pop(0)(False)

    # -- the three kinds -------------------------------------------------------------------------

    def _gather_sharded(self, p: Any) -> Any:
        from torch.distributed.tensor import DTensor, distribute_tensor

        mesh, placements = p.device_mesh, p.placements
        local = p.to_local()
        if local.device.type != mesh.device_type:  # shards offloaded to the CPU, collectives on the GPU
            source = DTensor.from_local(local.to(_mesh_device(mesh)), mesh, placements, run_check=False,
                                        shape=p.shape, stride=p.stride())
        else:
            source = p
        full = source.full_tensor().to(local.device)
        gathered: Any = torch.Tensor._make_subclass(_Gathered, full, p.requires_grad)
        vars(gathered).update(vars(p))
        gathered._is_param = True  # isinstance(p, nn.Parameter) holds inside the block
        # FSDP2 re-reads a parameter after load_state_dict (FSDPParam.reset_sharded_param); a meta
        # local tensor makes it leave the full tensor alone, so loading inside the block works.
        gathered._local_tensor, gathered._spec = torch.empty(0, device="meta"), p._spec
        _swap(p, gathered)  # p is the full tensor now; `gathered` holds the DTensor

        def finish(write: bool) -> None:
            if write and self.modifier_rank is not None:
                _broadcast(p.data, self.modifier_rank)
                try:  # every process holds the values now: each slices its own shard, no communication
                    shard = distribute_tensor(p.data, mesh, placements, src_data_rank=None).to_local()
                except TypeError:  # torch < 2.7: scattered from rank 0, the same values
                    shard = distribute_tensor(p.data, mesh, placements).to_local()
                gathered.to_local().copy_(shard)
            vars(gathered).update({k: v for k, v in vars(p).items() if k != "_is_param"})
            _swap(p, gathered)

        return finish

    def _gather_built(self, p: Any) -> Any:
        rank = _rank()
        device = torch.device("cuda", torch.cuda.current_device()) if _dist().get_backend() == "nccl" \
            else torch.device("cpu")
        placeholder = p.is_meta
        if placeholder:
            real = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad)
            vars(real).update(vars(p))
            _swap(p, real)  # p is real now; `real` holds the meta placeholder
        _broadcast(p.data, 0)
        kept = p.data.clone() if rank == 0 and self.modifier_rank is None else None

        def finish(write: bool) -> None:
            if kept is not None:
                p.data.copy_(kept)  # no modifier: rank 0's values are restored
            elif write and self.modifier_rank not in (None, 0):
                _broadcast(p.data, self.modifier_rank)  # rank 0 keeps the modifier's values
            if placeholder:
                _swap(p, real)

        return finish

    def _keep_whole(self, params: list[torch.Tensor]) -> Any:
        def finish(write: bool) -> None:
            dist = _dist()
            if not write or dist.get_world_size() == 1 or self.modifier_rank is None:
                return
            # A process holding meta tensors (init_empty_weights) has nothing to receive into:
            # then nobody broadcasts, agreed in one collective so no process waits alone.
            meta = torch.tensor([int(any(p.is_meta for p in params))])
            if dist.get_backend() == "nccl":
                meta = meta.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(meta)
            if int(meta.item()) == 0:
                for p in params:
                    _broadcast(p.data, self.modifier_rank)

        return finish


def _config_stage(config: Any) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a dict or a JSON path); None when not said."""
    if config is None:
        return None
    if isinstance(config, (str, os.PathLike)):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        return None
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    return stage if isinstance(stage, int) else None


class Init:
    """Build a model without its full weights on every process (DeepSpeed's
    ``deepspeed.zero.Init``): inside the block, rank 0 builds modules as usual and the
    other processes build them on the meta device (no memory for the parameters). Then
    ``prepare`` / ``surge.initialize`` under ZeRO-2/3 shards the model and fills every
    process's shards from rank 0's weights; :class:`GatheredParameters` reads or changes
    the weights before that (loading a checkpoint on rank 0, say).

    Starts the process group when none runs (as DeepSpeed). Does nothing for one process,
    with ``enabled=False``, inside another ``Init``, or with a config whose ZeRO stage is
    below 3 (the model is then built normally, which every strategy takes). When the
    processes' random generators were equal at entry (the same seed), the others take rank
    0's state at exit, as if they had built the model too.

    Differences from DeepSpeed: the parameters keep the dtype they are built in (surge
    trains fp32 parameters under the config's fp16/bf16 mixed precision; ``dtype`` is not
    applied and warns), where they live is the config's ``offload_param`` at ``prepare``
    (``remote_device`` / ``pin_memory`` are accepted), and ``module=`` (an existing model)
    needs nothing: ``prepare`` shards it. A module moved to a device inside or after the
    block fails on the meta processes: leave the placement to ``prepare``.

    Raises:
        ValueError: ``data_parallel_group`` is not the whole job, or quantized weights are
            asked for (surge does not quantize ZeRO-3 weights).

    Example:
        >>> with surge.zero.Init(config_dict_or_path=ds_config):
        ...     model = MyLargeModel()
        >>> engine, optimizer, _, _ = surge.initialize(model=model, config=ds_config)
    """

    def __init__(self, module: nn.Module | None = None, data_parallel_group: Any = None,
                 mem_efficient_linear: bool = True, remote_device: Any = None, pin_memory: bool = False,
                 config_dict_or_path: Any = None, config: Any = None, enabled: bool = True,
                 dtype: torch.dtype | None = None, mpu: Any = None, zero_param_parallel_group: Any = None,
                 zero_quantized_weights: bool = False, zero_quantized_nontrainable_weights: bool = False,
                 sequence_data_parallel_group: Any = None, param_swapper: Any = None) -> None:
        if config is not None:
            config_dict_or_path = config  # DeepSpeed's deprecated name
        if zero_quantized_weights or zero_quantized_nontrainable_weights:
            raise ValueError("zero.Init(zero_quantized_weights / zero_quantized_nontrainable_weights=True): surge does "
                             "not quantize ZeRO-3 weights; leave them False.")
        stage = _config_stage(config_dict_or_path)
        self.module = module
        self.enabled = bool(enabled) and (stage is None or stage >= 3) and module is None
        self.dtype = dtype
        self._stack = contextlib.ExitStack()
        self._rng: list[torch.Tensor] | None = None
        self._outer = False
        if not self.enabled:
            return
        from surge.deepspeed.communication import init_distributed

        dist = _dist()
        if not dist.is_initialized():
            init_distributed(verbose=False)
        group = data_parallel_group if data_parallel_group is not None else sequence_data_parallel_group
        if group is not None and dist.get_world_size(group) != dist.get_world_size():
            raise ValueError(f"zero.Init(data_parallel_group=<{dist.get_world_size(group)} processes>): surge shards "
                             f"over the whole job ({dist.get_world_size()} processes); leave the group unset.")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if dtype is not None and dtype != torch.float32 and self.rank == 0:
            warnings.warn(f"zero.Init(dtype={dtype}) is not applied: surge keeps the parameters in the dtype they are "
                          "built in and trains with the config's fp16/bf16 as mixed precision.", stacklevel=2)

    def __enter__(self) -> None:
        _DEPTH[0] += 1
        self._outer = _DEPTH[0] == 1
        if not (self.enabled and self._outer and self.world_size > 1):
            return
        from surge.big_modeling import init_on_device

        self._rng = _equal_rng_states()
        if self.rank != 0:
            self._stack.enter_context(init_on_device(torch.device("meta")))
        self._stack.enter_context(_marked())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _DEPTH[0] -= 1
        self._stack.close()
        if self._rng is not None and exc_type is None:
            _take_rank0_rng(self._rng)
        self._rng = None


@contextlib.contextmanager
def _marked() -> Iterator[None]:
    """Mark every parameter registered inside the block as built under :class:`Init`."""
    register = nn.Module.register_parameter

    def register_marked(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        registered = module._parameters.get(name)
        if registered is not None:
            setattr(registered, _MARK, True)

    nn.Module.register_parameter = register_marked  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _rng_states() -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        states.append(torch.cuda.get_rng_state())
    return states


def _equal_rng_states() -> list[torch.Tensor] | None:
    """This process's generator states when every process has the same (one collective)."""
    dist = _dist()
    states = _rng_states()
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [s.tolist() for s in states])
    return states if all(other == everyone[0] for other in everyone) else None


def _take_rank0_rng(states: list[torch.Tensor]) -> None:
    """Give every process rank 0's generator states (one collective)."""
    dist = _dist()
    message: list[Any] = [_rng_states() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(message, src=0)
    torch.set_rng_state(message[0][0])
    if len(message[0]) > 1 and len(states) > 1:
        torch.cuda.set_rng_state(message[0][1])
