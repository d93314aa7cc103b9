"""Optimizer offload (DeepSpeed's ``offload_optimizer``): the fp32 master copy of each
parameter shard and all optimizer state live in CPU memory, and the step runs there.

[Note: optimizer offload]
The user's optimizer keeps its param groups, which keep pointing at the device
parameters (the local shards under ZeRO-2/3). Everything that reads gradients through
the groups (the fp16 loss scaler's unscale, clipping, ``zero_grad``) therefore works on
the device gradients as usual. Only while the optimizer itself runs (``step``,
``state_dict``, ``load_state_dict``) do the groups hold the CPU masters instead, so its
state is created, saved and loaded for the masters, on the CPU. One step:

1. each device gradient is copied into the master's CPU gradient buffer (pinned memory
   on CUDA, so the copies run asynchronously; one stream sync before the CPU reads);
2. the optimizer steps the fp32 masters on the CPU;
3. the masters are copied back into the device parameters (cast to their dtype).

Parameters changed from outside (``load_state_dict`` on the model, a checkpoint load)
are noticed through the version counters of the parameter and its local shard, which
every in-place write bumps:
such a parameter's master is refreshed from it before the next step.

Device memory then holds the parameters and gradients only: the optimizer state (8
bytes per parameter for Adam, sharded under ZeRO) never touches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from surge.optim import ForwardingOptimizer


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this process holds (a DTensor's local shard)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _version(param: torch.Tensor) -> tuple[int, int]:
    return param._version, _local(param)._version


class OffloadedOptimizer(ForwardingOptimizer):
    """Runs ``optimizer`` on CPU fp32 masters of its (device) parameters; see the note above.

    Args:
        optimizer: The user's optimizer, its groups holding the device parameters. Its
            state must be empty (it is created for the masters).
        pin_memory: Page-locked CPU buffers (on CUDA: asynchronous copies).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, pin_memory: bool = False) -> None:
        # No super().__init__: ``optimizer`` owns groups and state; this object swaps
        # what its groups point at around the calls that create or read state.
        if optimizer.state:
            raise ValueError("the optimizer already has state; prepare it before its first step when offloading "
                             "it (its state is created on the CPU).")
        self.optimizer = optimizer
        self._pin = pin_memory
        self._masters: list[list[torch.Tensor]] = []
        for group in optimizer.param_groups:
            masters = []
            for p in group["params"]:
                local = _local(p.detach())
                master = torch.empty(local.shape, dtype=torch.float32, device="cpu", pin_memory=pin_memory)
                master.copy_(local)
                masters.append(master)
            self._masters.append(masters)
        self._versions = self._current_versions()

    def _current_versions(self) -> list[list[tuple[int, int]]]:
        # A DTensor counts writes made through it; its local shard those made to it.
        return [[_version(p) for p in group["params"]] for group in self.optimizer.param_groups]

    # -- the optimizer's own face (param_groups, defaults, state: the wrapped one's;
    # its state is keyed by the CPU masters) ----------------------------------------

    @property
    def masters(self) -> list[list[torch.Tensor]]:
        """The fp32 CPU master of each parameter, group by group."""
        return self._masters

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise ValueError("add_param_group after prepare is not supported with offload_optimizer; add every group "
                         "before prepare.")

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @contextmanager
    def _groups_on_masters(self) -> Iterator[list[list[torch.Tensor]]]:
        groups = self.optimizer.param_groups
        device_params = [group["params"] for group in groups]
        for group, masters in zip(groups, self._masters, strict=True):
            group["params"] = masters
        try:
            yield device_params
        finally:
            # load_state_dict replaces the group dicts: restore by position.
            for group, params in zip(self.optimizer.param_groups, device_params, strict=True):
                group["params"] = params

    def _device_params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state dict. The state of a sharded (DTensor) parameter is
        given as DTensors laid out like the parameter, so ``torch.distributed.checkpoint``
        saves each shard once and can reshard it on load."""
        with self._groups_on_masters():
            state = self.optimizer.state_dict()
        params = self._device_params()
        for index, entry in state["state"].items():
            p = params[index]
            if hasattr(p, "device_mesh"):
                state["state"][index] = {k: self._as_dtensor(v, p) for k, v in entry.items()}
        return state

    @staticmethod
    def _as_dtensor(value: Any, param: Any) -> Any:
        from torch.distributed.tensor import DTensor

        if not isinstance(value, torch.Tensor) or value.shape != param.to_local().shape or value.dim() == 0:
            return value
        return DTensor.from_local(value, param.device_mesh, param.placements, run_check=False,
                                  shape=param.shape, stride=param.stride())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        state_dict["state"] = {k: {n: _local(v) if isinstance(v, torch.Tensor) else v for n, v in entry.items()}
                               for k, entry in state_dict["state"].items()}
        with self._groups_on_masters():
            self.optimizer.load_state_dict(state_dict)  # casts the state to the masters (CPU, fp32)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            raise ValueError("optimizer.step(closure) is not supported with offload_optimizer: the closure's "
                             "gradients would land on the device after the copy to the CPU. Call backward, then "
                             "step() without a closure.")
        device_params = [group["params"] for group in self.optimizer.param_groups]
        asynchronous = False
        for params, masters, versions in zip(device_params, self._masters, self._versions, strict=True):
            for p, master, version in zip(params, masters, versions, strict=True):
                if _version(p) != version:  # written from outside since our last step
                    master.copy_(_local(p.detach()))
                if p.grad is None:
                    master.grad = None
                    continue
                grad = _local(p.grad)
                if master.grad is None:
                    master.grad = torch.empty(master.shape, dtype=torch.float32, device="cpu", pin_memory=self._pin)
                master.grad.copy_(grad, non_blocking=self._pin)
                asynchronous = asynchronous or grad.device.type == "cuda"
        if asynchronous:
            torch.cuda.current_stream().synchronize()  # the CPU reads the gradients next
        with self._groups_on_masters():
            result = self.optimizer.step()
        for params, masters in zip(device_params, self._masters, strict=True):
            for p, master in zip(params, masters, strict=True):
                if master.grad is not None:
                    _local(p).copy_(master, non_blocking=self._pin)
        self._versions = self._current_versions()
        return result

    def __repr__(self) -> str:
        return f"OffloadedOptimizer({self.optimizer!r})"
