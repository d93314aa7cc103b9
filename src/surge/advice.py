"""Run-time advice: warnings for common mistakes in a training loop.

Each is a :class:`SurgeAdvice` warning (a ``UserWarning``), given at most once per
process, located at the user's ``file:line`` (the first frame of the stack outside surge
and torch; the message names it too) and naming the fix. ``Accelerator(warnings="off")`` (or
the config key ``warnings: off``) turns them all off; ``warnings.filterwarnings("ignore",
category=SurgeAdvice)`` does too. docs/guide.md, "Run-time warnings", lists them.

[Note: run-time advice]
The checks ride on calls surge already makes; none adds a collective or a hook to the
training step:

- ``Accelerator._backward`` counts backward passes (one integer add).
- The prepared optimizer's boundary ``step`` calls :meth:`Advice.on_step`: integer
  compares, and one parameter's ``device`` per prepared model (a model moved after
  ``prepare``). Gradients are looked at only when no ``accelerator.backward`` ran since
  the optimizer's last step, which correct code never does.
- A prepared model's *first* forward runs a one-shot forward pre-hook (removed before it
  does anything) that compares a fingerprint of the input batch across data-parallel
  processes through the process group's store, never a collective, so a first forward
  some process skips delays the main process by at most ``FINGERPRINT_WAIT_S`` and
  never hangs.
- A sharded ``save_state`` names the processes that have not arrived after
  ``ARRIVAL_NOTE_S`` seconds (checkpoint/training.py ``check_all_arrived``).

A condition that is the same on every process (the script's settings, how its loop
calls surge, where its model is) is reported by the main process only; the arrival note
by the lowest-numbered process that arrived.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
import weakref
from datetime import timedelta
from typing import Any, ClassVar

import torch

__all__ = ["ARRIVAL_NOTE_S", "FINGERPRINT_WAIT_S", "Advice", "SurgeAdvice", "call_site", "emit", "forget_given",
           "wait_naming_missing"]

ARRIVAL_NOTE_S = 5.0
"""Seconds a sharded save waits before naming the processes that have not arrived."""
FINGERPRINT_WAIT_S = 5.0
"""Seconds the main process waits for the other processes' first-batch fingerprints."""
SILENCE = 'Silence with Accelerator(warnings="off").'


class SurgeAdvice(UserWarning):
    """A run-time warning about a likely mistake in a training script (surge.advice)."""


_SKIP = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
         os.path.abspath(contextlib.__file__))


class _Switch:
    """Process-wide: which advice was given, and whether it is off (set by the last
    Accelerator built; ``warnings="off"``). Reset by :func:`forget_given`."""

    given: ClassVar[set[str]] = set()
    off = False


def forget_given() -> None:
    """Forget which advice was given (so each can be given again) and turn advice on.
    For tests and notebooks."""
    _Switch.given.clear()
    _Switch.off = False


def call_site() -> tuple[str, int]:
    """The file and line of the innermost frame outside surge and torch (the user's call)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not os.path.abspath(name).startswith(_SKIP) and not name.startswith("<frozen"):
            return name, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>", 0


def emit(key: str, text: str, site: tuple[str, int] | None = None, *, once: bool = True) -> bool:
    """Warn ``text`` as :class:`SurgeAdvice` at the user's line (``site``, else the
    caller's :func:`call_site`), once per process for ``key``. Returns whether it warned."""
    if _Switch.off or (once and key in _Switch.given):
        return False
    _Switch.given.add(key)
    filename, line = site if site is not None else call_site()
    # The location is in the text as well, for handlers that keep only the message (logging).
    warnings.warn_explicit(f"{text} [{filename}:{line}] {SILENCE}", SurgeAdvice, filename, line)
    return True


def _bf16_capable(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU with native bf16 (Ampere or newer)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def _fingerprint(batch: Any) -> str | None:
    """A cheap summary of the first tensor in ``batch`` (shape and two sums over at most
    4096 elements: one host-device sync); None when there is no tensor to summarise."""
    from surge._tree import tree_leaves

    leaves = tree_leaves(batch, lambda x: isinstance(x, torch.Tensor))
    tensors = [t for t in leaves if isinstance(t, torch.Tensor) and t.numel() > 1]
    if not tensors:
        return None
    head = tensors[0].detach().reshape(-1)[:4096].double()
    weights = torch.arange(1, head.numel() + 1, dtype=torch.float64, device=head.device)
    sums = torch.stack([head.sum(), (head * weights).sum()]).tolist()
    return f"{tuple(tensors[0].shape)}:{sums[0]!r}:{sums[1]!r}"


class Advice:
    """The run-time checks of one Accelerator (see [Note: run-time advice]). Built by
    :meth:`start`, which returns None when advice is off.

    Args:
        accelerator: The Accelerator whose loop is watched.
    """

    _exchanges = 0  # first-batch fingerprint exchanges so far in this process (names the store keys)

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.main = bool(accelerator.topology.is_main_process)
        self.backwards = 0
        """``accelerator.backward`` calls so far (the DeepSpeed engine's included)."""
        self._marks: dict[int, int] = {}  # id(optimizer) -> self.backwards at its last boundary step
        self._short: dict[int, int] = {}  # id(optimizer) -> consecutive steps with too few backwards
        # One parameter per model, where prepare put it: (its module, weakly: free_memory must free
        # it; its name; its device). Looked up by name at each check, since .to() may replace the
        # Parameter object (e.g. to "meta").
        self._placed: list[tuple[weakref.ref[torch.nn.Module], str, torch.device]] = []
        self._hooks: dict[int, Any] = {}  # id(model) -> its first-forward hook, until one check ran
        self._first_forward_seen = False

    @classmethod
    def start(cls, accelerator: Any, setting: str) -> Advice | None:
        """Start the checks for ``accelerator`` (its ``gradient_state.advice``; None when
        ``setting`` is "off", which also turns advice off for the process) and give the
        construction-time advice."""
        _Switch.off = setting == "off"
        accelerator.gradient_state.advice = None if _Switch.off else cls(accelerator)
        advice: Advice | None = accelerator.gradient_state.advice
        if advice is None:
            return None
        device = torch.device(accelerator.topology.device)
        # The same on every process (one script, one kind of GPU): the main process says it.
        if advice.main and accelerator.mixed_precision == "no" and _bf16_capable(device):
            emit("bf16", f"mixed_precision='no' on {torch.cuda.get_device_name(device)}, a GPU with native bf16: "
                         "training runs in fp32, often 2x or more slower, with twice the activation memory of bf16. "
                         "Fix: Accelerator(mixed_precision=\"bf16\") (or `mixed_precision: bf16` in the config "
                         "file).")
        return advice

    # -- models ---------------------------------------------------------------------------

    @staticmethod
    def watch(gradient_state: Any, model: torch.nn.Module) -> None:
        """:meth:`watch_model` on the Accelerator's advice, when on."""
        if gradient_state.advice is not None:
            gradient_state.advice.watch_model(model)

    def watch_model(self, model: torch.nn.Module) -> None:
        """Remember where ``prepare`` placed ``model`` and, on several data-parallel
        processes, check the batch of its first forward once."""
        owner = next((m for m in model.modules() if any(p is not None for p in m._parameters.values())), None)
        if owner is not None:
            name, first = next((n, p) for n, p in owner._parameters.items() if p is not None)
            self._placed.append((weakref.ref(owner), name, first.device))
        acc = self.accelerator
        if acc.topology.world_size > 1 and acc.plan.dynamo is None and not self._first_forward_seen:
            self._hooks[id(model)] = model.register_forward_pre_hook(self._first_forward, with_kwargs=True)

    def _first_forward(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        # The same decisions on every process (one script), so the store keys stay aligned.
        if not (module.training and torch.is_grad_enabled()):
            handle = self._hooks.pop(id(module), None)
            if handle is not None:
                handle.remove()  # evaluation: this model is not checked
            return
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._first_forward_seen = True  # one check per Accelerator
        if not self.accelerator.gradient_state.in_dataloader:  # else a prepared loader's batch: sharded already
            self._compare_batches((args, kwargs), call_site())

    def _compare_batches(self, batch: Any, site: tuple[str, int]) -> None:
        """Compare ``batch`` across the main process's data-parallel peers through the
        store; the main process warns when every peer has the same one."""
        from torch.distributed.distributed_c10d import _get_default_store

        topology, pc = self.accelerator.topology, self.accelerator.plan.parallelism
        group = pc.non_data_parallel_size if pc is not None else 1  # tensor/sequence parallel ranks share batches
        peers = list(range(0, topology.world_size, group))
        Advice._exchanges += 1
        if len(peers) < 2 or topology.rank not in peers:
            return
        mark = _fingerprint(batch)
        store = _get_default_store()
        prefix = f"surge/advice/batch/{Advice._exchanges}"
        store.set(f"{prefix}/{topology.rank}", mark or "")
        if not self.main or mark is None:
            return
        keys = [f"{prefix}/{rank}" for rank in peers[1:]]
        try:
            store.wait(keys, timedelta(seconds=FINGERPRINT_WAIT_S))
        except Exception:  # a peer skipped this forward (the store's timeout error type varies)
            return
        if all(store.get(key).decode() == mark for key in keys):
            emit("same-batch", f"the first batch of this prepared model is the same on all {len(peers)} "
                               "data-parallel processes and comes from no prepared DataLoader: every process trains "
                               "on all the data (the epoch is not split, and each sample counts "
                               f"{len(peers)} times per step). Fix: pass the DataLoader to accelerator.prepare, "
                               "which shards it.", site)

    # -- the optimizer step -----------------------------------------------------------------

    def on_step(self, optimizer: Any) -> None:
        """Called by a prepared optimizer at each boundary ``step`` (before stepping)."""
        key = id(optimizer)
        since = self.backwards - self._marks.get(key, 0)
        self._marks[key] = self.backwards
        gs = self.accelerator.gradient_state
        if self.main:  # how the loop calls surge is the same on every process
            if since == 0 and (gs.num_steps > 1 or self.accelerator.precision.has_loss_scaler):
                self._gradients_without_backward(optimizer)
            if gs.num_steps > 1 and gs.step == 0:
                self._outside_accumulate(key, since, gs.num_steps)
            for owner, name, device in self._placed:
                module = owner()
                param = module._parameters.get(name) if module is not None else None
                if param is not None and param.device != device:
                    self._moved(param.device, device)

    def _gradients_without_backward(self, optimizer: Any) -> None:
        if not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            return
        acc = self.accelerator
        why = []
        if acc.precision.has_loss_scaler:
            why.append(f"mixed_precision={acc.mixed_precision!r} scales the loss there (gradients made without it "
                       "are divided by the loss scale anyway, so the step is that many times too small, 65536x at "
                       "first, or torch's GradScaler refuses the step)")
        if acc.gradient_state.num_steps > 1:
            why.append(f"gradient_accumulation_steps={acc.gradient_state.num_steps} divides the loss there (without "
                       "it the accumulated gradient is that many times too large)")
        emit("backward", "optimizer.step() found gradients, but accelerator.backward was not called since the last "
                         "step: " + "; ".join(why) + ". Fix: replace loss.backward() with accelerator.backward(loss).")

    def _outside_accumulate(self, key: int, since: int, num_steps: int) -> None:
        # Never inside accumulate() (gradient_state.step is 0) and fewer backward passes than
        # a cycle holds, twice in a row (once is a cycle cut short by the end of the data).
        if since >= num_steps:
            self._short[key] = 0
            return
        self._short[key] = self._short.get(key, 0) + 1
        if self._short[key] >= 2:
            emit("accumulate", f"gradient_accumulation_steps={num_steps}, but optimizer.step() ran after {since} "
                               "accelerator.backward call(s) and never inside `with accelerator.accumulate(model):`, "
                               "so the optimizer steps on every micro-batch: nothing is accumulated, and each loss is "
                               f"still divided by {num_steps}. Fix: put the step in "
                               "`with accelerator.accumulate(model):` (or drop gradient_accumulation_steps).")

    def _moved(self, now: torch.device, placed: torch.device) -> None:
        emit("moved", f"a prepared model's parameters are on {now}, but accelerator.prepare placed them on {placed} "
                      f"(accelerator.device is {self.accelerator.device}): the model was moved after prepare "
                      "(model.to(...) / .cuda() / .cpu()). Batches from prepared DataLoaders still arrive on "
                      f"{self.accelerator.device}, and DDP / sharding are set up for {placed}. Fix: remove the move, "
                      "or move the model before accelerator.prepare.")


def _ranks(ranks: list[int], shown: int = 16) -> str:
    """``[0, 1, 2]``, or the first ``shown`` and how many in all."""
    if len(ranks) <= shown:
        return str(ranks)
    return f"[{', '.join(map(str, ranks[:shown]))}, ...] ({len(ranks)} in all)"


def wait_naming_missing(store: Any, key: str, topology: Any, timeout: float, calls: str) -> None:
    """Wait up to ``timeout`` seconds for ``{key}/all`` (every process counted in
    ``key``); after ``ARRIVAL_NOTE_S`` the lowest-numbered process that arrived warns
    which processes have not. Each process must have set ``{key}/rank{r}`` first.

    Raises:
        The store's timeout error when not every process arrived within ``timeout``.
    """
    first = min(ARRIVAL_NOTE_S, timeout)
    try:
        store.wait([f"{key}/all"], timedelta(seconds=first))
        return
    except Exception:  # the store's timeout error (its type differs across torch versions)
        if first >= timeout:
            raise
    # Only the lowest-numbered process that arrived speaks: the others stop at the first
    # lower one they find (usually process 0), so the store sees about 2 x world_size checks.
    if not any(store.check([f"{key}/rank{r}"]) for r in range(topology.rank)):
        arrived = [r for r in range(topology.world_size) if r == topology.rank or store.check([f"{key}/rank{r}"])]
        missing = [r for r in range(topology.world_size) if r not in set(arrived)]
        if missing:
            emit(f"arrival/{key}", f"{calls} is a collective here (the checkpoint is sharded): after {first:g} s, "
                                   f"processes {_ranks(arrived)} called it and {_ranks(missing)} did not. Called "
                                   "under `if accelerator.is_main_process:`? Every process must call it. Still "
                                   f"waiting (gives up after {timeout:g} s).")
    store.wait([f"{key}/all"], timedelta(seconds=timeout - first))
