"""Training checkpoints: models, optimizers, schedulers, the loss scaler, per-process
state (RNG) and caller state, saved and loaded together.

[Note: checkpoint layout]
A checkpoint is a directory. Two layouts, chosen by the strategy
(``Strategy.checkpoint_writer()``): full.py's ``FullWriter`` and sharded.py's
``ShardedWriter``; this module does what both share (staging, arrival, per-process
files, the manifest, background writing) and reads either back.

Full (one process, DDP: every process holds everything). Written by the main process
alone, with no collective, so ``if accelerator.is_main_process: save_state()`` works:

- ``model_<i>.safetensors``: each model's full weights;
- ``optimizer_<i>.pt``: each optimizer's state keyed by parameter name (the layout of
  ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``), so it loads
  into any strategy, sharded ones included.

FSDP with ``state_dict_type="FULL_STATE_DICT"`` writes the same files, gathered to the
main process first: a collective.

Sharded (ZeRO-1/2/3, FSDP SHARDED_STATE_DICT): a collective; every process must call it.

- ``model_optimizer/``: models' and optimizers' tensors through
  ``torch.distributed.checkpoint`` (DCP), keyed by parameter name; each shard is written
  by its owner and can be read back at another world size or strategy;
- ``optimizer_<i>.pt`` for optimizers that consolidate their own state (ZeRO-1), whole,
  keyed by parameter name.

Both: ``state.pt`` (schedulers, the loss scaler, caller state; main process),
``rank_<r>.pt`` (each process's own state: RNG), and ``surge_checkpoint.json`` (the
manifest, written last inside the checkpoint). Everything is read back with
safetensors, JSON or ``torch.load(weights_only=True)``: loading runs no code.

The directory is assembled under a temporary name next to its destination and renamed
into place only when complete (see checkpoint/atomic.py): a save killed midway leaves
the previous checkpoint as it was and nothing a loader would pick.

In the background (``async_save``) the state is first copied to CPU memory (DCP's
stager for the sharded tensors, :func:`_snapshot` for the rest) and the same files are
written by a thread; each process's ``rank_<r>.pt`` is written before the call returns.
Ordering without extra barriers: every process writes its own file before entering
DCP's save, whose final step gathers all results on the main process, so when the save
(or its future) completes there, every file is written and the main process renames
the directory into place; other processes wait for the manifest to appear.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from surge.checkpoint.atomic import TMP_PREFIX, atomic_write, replace_directory
from surge.checkpoint.full import FullWriter, load_models
from surge.checkpoint.keys import inner_optimizer, load_named_state, owner_index
from surge.checkpoint.sharded import ShardedWriter, load_tensors
from surge.process_group import barrier

MANIFEST = "surge_checkpoint.json"
STATE = "state.pt"
FORMAT = 1
ARRIVAL_TIMEOUT_S = 60.0
"""How long a sharded save waits for every process to arrive before failing."""


def check_all_arrived(topology: Any, key: str, timeout: float | None = None, calls: str = "save_state/load_state"
                      ) -> None:
    """Fail, instead of hanging, when not every process entered a collective save.

    Each process counts itself in the process group's store; the last to arrive marks
    the key done, and everyone waits for that mark (bounded by ``timeout``). Work a
    process does before calling it is finished before any process returns from it.
    After ``surge.advice.ARRIVAL_NOTE_S`` (5 s) the lowest-numbered process that arrived
    warns which processes did not (see [Note: run-time advice] in advice.py).

    Raises:
        RuntimeError: some process did not arrive within ``timeout`` seconds.
    """
    if not topology.is_distributed:
        return
    from torch.distributed.distributed_c10d import _get_default_store

    from surge.advice import wait_naming_missing

    timeout = ARRIVAL_TIMEOUT_S if timeout is None else timeout
    store = _get_default_store()
    store.set(f"{key}/rank{topology.rank}", "1")  # who arrived, named if some process does not
    if store.add(key, 1) == topology.world_size:
        store.set(f"{key}/all", "1")
    try:
        wait_naming_missing(store, key, topology, timeout, calls)  # names the missing after a few seconds
    except Exception:  # the store's timeout error (its type differs across torch versions)
        raise RuntimeError(
            f"this checkpoint is sharded, so saving and loading it is a collective: every process must call "
            f"{calls} (only {store.add(key, 0)} of {topology.world_size} did within {timeout:.0f} s). Call it on all "
            "processes, not inside `if accelerator.is_main_process:`."
        ) from None


class PendingSave:
    """A checkpoint being written in the background (``save_state(async_save=True)``).

    The state was copied to CPU memory before the save returned, so training may change
    the live tensors meanwhile. :meth:`wait` blocks until the checkpoint is in place
    (on every process: non-main processes wait until the main process has renamed it)
    and re-raises what went wrong in the background.
    """

    def __init__(self, directory: str, work: Any) -> None:
        self.directory = directory
        self._error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"surge-save-{os.path.basename(directory)}")
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> str:
        """Block until the checkpoint is complete; returns its directory.

        Raises:
            RuntimeError: the background save failed (its error is chained).
        """
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"the background save of checkpoint {self.directory!r} failed: "
                               f"{type(error).__name__}: {error}. The previous checkpoint is intact.") from error
        return self.directory


def _snapshot(tree: Any) -> Any:
    """A copy of ``tree`` whose tensors are fresh CPU copies: what a background write
    saves while training goes on changing the originals."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _snapshot(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_snapshot(v) for v in tree)
    return tree


def save_training_state(
    directory: str | os.PathLike[str],
    *,
    writer: FullWriter | ShardedWriter,
    topology: Any,
    strategy_name: str,
    models: list[nn.Module],
    optimizers: list[Any],
    schedulers: list[Any],
    precision_state: dict[str, Any],
    extra: dict[str, Any] | None = None,
    rank_state: dict[str, Any] | None = None,
    save_index: int = 0,
    background: bool = False,
    group: Any = None,
    on_complete: Any = None,
    caller: str = "save_state",
    before_write: Callable[[str], list[nn.Module] | None] | None = None,
) -> str | PendingSave:
    """Write a checkpoint to ``directory`` in ``writer``'s layout (see [Note: checkpoint
    layout]).

    A collective writer (sharded, or full with gathering): every process must call it
    (checked: it fails, never hangs, when some do not). Otherwise the main process
    writes everything and other processes, if they call it too, add their
    ``rank_state`` once it is in place (``save_index`` tells them which save that is).
    An existing checkpoint at ``directory`` is replaced only after the new one is
    complete; ``on_complete`` then runs on the main process.

    ``background=True`` copies the state to CPU memory, starts the writing in a thread
    (sharded tensors through DCP's ``async_save`` on ``group``, a gloo process group
    other than the training one) and returns a :class:`PendingSave`; otherwise the
    directory once it is complete. ``caller`` names the public call in errors and keeps
    its arrival counts apart from other callers'.

    ``before_write(path)`` (the save-state pre-hooks, [Note: state hooks] in
    checkpoint/methods.py) runs where files are being assembled, before anything is
    written: on the main process, and on every process of a collective save; other
    processes of a full save run it once the checkpoint is in place. It returns the
    models whose weights to write (None: all), the same on every process that writes.
    """
    directory = os.path.abspath(os.fspath(directory))
    main = topology.is_main_process
    collective = writer.collective
    if not (collective or main):
        if background:
            return PendingSave(directory, lambda: _add_rank_state_when_ready(directory, topology, rank_state,
                                                                             save_index, before_write))
        _add_rank_state_when_ready(directory, topology, rank_state, save_index, before_write)
        return directory
    staging = os.path.join(os.path.dirname(directory), f"{TMP_PREFIX}{os.path.basename(directory)}")
    if main:
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # what an earlier killed save left
        os.mkdir(staging)
    if collective:
        # Returns once every process arrived, the main process after making the staging
        # directory: nobody writes into it before it exists.
        check_all_arrived(topology, f"surge/{caller}/{directory}/{save_index}", calls=caller)
    weighted = before_write(staging) if before_write is not None else None
    weighted = models if weighted is None else weighted
    torch.save(rank_state or {}, os.path.join(staging, f"rank_{topology.rank}.pt"))
    optimizers = [inner_optimizer(o) for o in optimizers]
    writes, files, future = writer.write_tensors(
        staging, topology=topology, models=models, weighted=weighted, optimizers=optimizers,
        copy=_snapshot if background else (lambda tree: tree), background=background, group=group)
    if not main:
        if not background:
            barrier(topology)  # the checkpoint is in place before anyone reads it
            return directory

        def wait_until_in_place() -> None:
            if future is not None:
                future.result()
            _wait_for_manifest(directory, save_index, topology)

        return PendingSave(directory, wait_until_in_place)
    from surge import __version__

    files += [name for name, _, _ in writes]
    state = {"schedulers": [s.state_dict() for s in schedulers], "precision": precision_state, "extra": extra or {}}
    writes.append((STATE, torch.save, _snapshot(state) if background else state))
    files.append(STATE)
    manifest = {"format": FORMAT, "surge_version": __version__, "world_size": topology.world_size,
                "strategy": strategy_name, "sharded": writer.sharded, "models": len(weighted),
                "optimizers": len(optimizers), "schedulers": len(schedulers), "save_index": save_index,
                "files": files}

    def finish() -> None:
        for name, saver, value in writes:
            saver(value, os.path.join(staging, name))
        if future is not None:
            future.result()  # on the main process: every process's shards are written
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        replace_directory(staging, directory)
        if on_complete is not None:
            on_complete()

    if background:
        return PendingSave(directory, finish)
    finish()  # a synchronous DCP save has returned on the main process once every shard is written
    if collective:
        barrier(topology)  # the checkpoint is in place before anyone reads it
    return directory


def _wait_for_manifest(directory: str, save_index: int, topology: Any) -> bool:
    """Poll until the main process has put save ``save_index`` in place at ``directory``."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S * 10
    path = os.path.join(directory, MANIFEST)
    while True:
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            if json.load(f).get("save_index") == save_index:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def _add_rank_state_when_ready(directory: str, topology: Any, rank_state: dict[str, Any] | None,
                               save_index: int, before_write: Callable[[str], object] | None = None) -> None:
    """A non-main process's part of a full save: once the main process has put this
    save in place, run its hooks there and add this process's own state (no collective)."""
    if not _wait_for_manifest(directory, save_index, topology):
        warnings.warn(f"process {topology.rank} gave up waiting for checkpoint {directory!r}; its RNG state is "
                      "not in it (a resume will not restore this process's random streams).", stacklevel=3)
        return
    if before_write is not None:
        before_write(directory)
    atomic_write(os.path.join(directory, f"rank_{topology.rank}.pt"), lambda tmp: torch.save(rank_state or {}, tmp))


def is_complete(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds a finished checkpoint (its manifest is there)."""
    return os.path.isfile(os.path.join(os.fspath(directory), MANIFEST))


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete checkpoint.

    Raises:
        ValueError: ``directory`` is not a complete surge checkpoint (named).
    """
    path = os.path.join(os.fspath(directory), MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(directory)!r} is not a complete surge checkpoint: {MANIFEST} is missing "
                         "(the save did not finish, or this is not a checkpoint directory).") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint manifest {path!r} is corrupted: {exc.msg}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"checkpoint manifest {path!r} is not a surge checkpoint of format {FORMAT}.")
    return manifest


def load_file(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with a clear error naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint file {path!r} is missing.") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()
        raise ValueError(f"checkpoint file {path!r} is corrupted or truncated ({type(exc).__name__}: "
                         f"{detail[0] if detail else 'no detail'}).") from None


def load_training_state(
    directory: str | os.PathLike[str],
    *,
    topology: Any,
    models: list[nn.Module],
    optimizers: list[Any],
    schedulers: list[Any],
    load_precision_state: Any = None,
    strict: bool = True,
    partial: bool = False,
    weighted: list[nn.Module] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_training_state` into the given objects,
    whatever the strategy and world size it was saved with. Every process calls it.

    ``strict=False`` tolerates model keys missing on either side; ``partial=True``
    loads only the optimizers/schedulers given (the first ones saved), e.g. weights only.
    ``weighted`` (default: ``models``) are the models whose weights are loaded, in the
    order they were saved (what load-state pre-hooks left; see [Note: state hooks] in
    checkpoint/methods.py); ``models`` name the optimizers' parameters.

    Returns:
        ``(extra, rank_state)``: the caller's state, and this process's own state (empty
        when the checkpoint has none for this rank).

    Raises:
        ValueError: an incomplete or corrupted checkpoint, or one holding a different
            number of models/optimizers/schedulers (the file or count is named).
    """
    directory = os.fspath(directory)
    manifest = read_manifest(directory)
    counts = {"models": len(models if weighted is None else weighted), "optimizers": len(optimizers),
              "schedulers": len(schedulers)}
    for key, count in counts.items():
        if (manifest.get(key) != count) if not partial or key == "models" else (manifest.get(key, 0) < count):
            raise ValueError(f"checkpoint {directory!r} holds {manifest.get(key)} {key} but {count} were prepared; "
                             "prepare the same objects as the run that saved it.")
    optimizers = [inner_optimizer(o) for o in optimizers]
    if manifest["sharded"]:
        load_tensors(directory, models, optimizers, strict, weighted=weighted)
    else:
        load_models(directory, models if weighted is None else weighted, strict)
    for i, opt in enumerate(optimizers):
        path = os.path.join(directory, f"optimizer_{i}.pt")
        if os.path.exists(path) or not manifest["sharded"]:
            load_named_state(opt, models[owner_index(models, opt)], load_file(path))
    rest = load_file(os.path.join(directory, STATE))
    for scheduler, sd in zip(schedulers, rest["schedulers"], strict=False):  # partial loads take the first
        scheduler.load_state_dict(sd)
    if load_precision_state is not None:
        load_precision_state(rest["precision"])
    rank_path = os.path.join(directory, f"rank_{topology.rank}.pt")
    rank_state = load_file(rank_path) if os.path.exists(rank_path) else {}
    return rest["extra"], rank_state


