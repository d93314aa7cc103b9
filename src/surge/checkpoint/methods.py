"""The Accelerator's saving methods: ``save_model``, ``save``, ``save_state``,
``load_state``, ``register_for_checkpointing``, ``register_save_state_pre_hook``,
``register_load_state_pre_hook``, ``wait_for_checkpoint`` (mixed into
:class:`surge.Accelerator`; the files themselves are export.py's and training.py's, an
Accelerate checkpoint's reader accelerate_format.py's).

[Note: state hooks]
Accelerate's contract, kept: ``save_state`` calls each save hook as
``hook(models, weights, output_dir)`` before writing, where ``weights`` are the models'
full state dicts; an entry the hook removes from ``weights`` is not written (the hook
saved that model its own way). ``load_state`` calls ``hook(models, input_dir)`` before
reading; a model the hook removes from ``models`` is not loaded. The weights written and
the models loaded are matched by position (the i-th remaining entry is the i-th saved
model), as in Accelerate, so hook pairs written for Accelerate work unchanged.

surge's differences, each for a reason: the hooks get copies of the lists (Accelerate
passes its own list of models to save hooks, so a hook that removes one there loses the
model from every later save); ``output_dir`` is the directory being assembled, renamed to
the requested one only when complete (see [Note: write aside, then rename]), so what
the hook writes there is part of the checkpoint; other processes of an unsharded save
run their hooks once the main process has put the checkpoint in place; a collective
(sharded) save writes the models the main process's hooks kept. ``weights`` must keep
the dicts it was given (removing is fine, replacing is refused): surge writes the
models themselves, sharded where they are sharded.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from surge.checkpoint.atomic import atomic_write
from surge.checkpoint.training import PendingSave
from surge.config._validate import check_bool
from surge.state import ProcessQueries

if TYPE_CHECKING:
    from surge.accumulation import GradientState
    from surge.config.project import ProjectConfiguration
    from surge.data.loader import PreparedDataLoader
    from surge.optim import AcceleratedOptimizer, AcceleratedScheduler
    from surge.precision.base import Precision
    from surge.strategies.base import Strategy

_log = logging.getLogger("surge")


class CheckpointingMixin(ProcessQueries):
    """Needs the Accelerator's prepared objects, strategy, topology, precision,
    gradient state and project configuration (declared here, set by the Accelerator)."""

    strategy: Strategy
    precision: Precision
    gradient_state: GradientState
    project_configuration: ProjectConfiguration
    _models: list[nn.Module]
    _optimizers: list[AcceleratedOptimizer]
    _schedulers: list[AcceleratedScheduler]
    _dataloaders: list[PreparedDataLoader]
    _custom_objects: list[Any]
    _checkpoint_calls: int
    _checkpoint_group: Any
    _pending_save: PendingSave | None

    if TYPE_CHECKING:
        def unwrap_model(self, model: nn.Module, keep_fp32_wrapper: bool = True,
                         keep_torch_compile: bool = True) -> nn.Module: ...
        def get_state_dict(self, model: nn.Module, unwrap: bool = True) -> dict[str, torch.Tensor]: ...

    def save_model(
        self,
        model: nn.Module,
        save_directory: str | os.PathLike[str],
        max_shard_size: int | str = "10GB",
        safe_serialization: bool = True,
    ) -> None:
        """Export the model's weights to ``save_directory`` from the main process.

        Writes ``model.safetensors`` or, beyond ``max_shard_size``, numbered shards and
        ``model.safetensors.index.json`` (transformers' layout; ``from_pretrained``
        loads it, and ``config.json`` is written for transformers models). Writes are
        atomic (see checkpoint/atomic.py). Other processes return at once.
        """
        from surge.checkpoint.export import save_weights

        state_dict = self.get_state_dict(model)
        if self.is_main_process:
            inner = self.unwrap_model(model)
            generation_config = getattr(inner, "generation_config", None)
            can_generate = getattr(inner, "can_generate", None)
            if generation_config is not None and not (callable(can_generate) and can_generate()):
                generation_config = None
            save_weights(
                state_dict,
                save_directory,
                max_shard_size=max_shard_size,
                safe_serialization=safe_serialization,
                config=getattr(inner, "config", None),
                generation_config=generation_config,
            )

    def save(self, obj: Any, f: str | os.PathLike[str], safe_serialization: bool = False) -> None:
        """Save ``obj`` to ``f`` on the main process only, atomically.

        ``safe_serialization=True`` writes a dict of tensors with safetensors.
        """
        if not self.is_main_process:
            return
        if safe_serialization:
            from safetensors.torch import save_file

            atomic_write(f, lambda tmp: save_file(obj, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(f, lambda tmp: torch.save(obj, tmp))

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Include ``objects`` (anything with ``state_dict`` / ``load_state_dict``) in
        :meth:`save_state` / :meth:`load_state`, in this order. Their state dicts should
        hold tensors and plain values: checkpoints load with ``weights_only=True``."""
        for obj in objects:
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"register_for_checkpointing: {type(obj).__name__} has no state_dict() / "
                                "load_state_dict(); wrap it in an object that has both.")
        self._custom_objects.extend(objects)

    def _state_hooks(self, kind: str) -> OrderedDict[int, Callable[..., None]]:
        """The registered save or load hooks (made on first use: the Accelerator's own
        ``__init__`` does not know them)."""
        name = f"_{kind}_state_pre_hooks"
        hooks: OrderedDict[int, Callable[..., None]] | None = self.__dict__.get(name)
        if hooks is None:
            hooks = self.__dict__[name] = OrderedDict()
        return hooks

    def register_save_state_pre_hook(self, hook: Callable[..., None]) -> Any:
        """Call ``hook(models, weights, output_dir)`` at the start of every
        :meth:`save_state`; returns a ``torch.utils.hooks.RemovableHandle``
        (``handle.remove()`` unregisters it).

        ``models`` are the prepared models, ``weights`` their full state dicts (same
        order); remove an entry from ``weights`` to skip writing that model's weights
        (after saving it your own way into ``output_dir``). See [Note: state hooks].

        Example:
            >>> def save_hook(models, weights, output_dir):
            ...     models[0].config.save_pretrained(output_dir)
            >>> handle = accelerator.register_save_state_pre_hook(save_hook)
        """
        from torch.utils.hooks import RemovableHandle

        if not callable(hook):
            raise TypeError(f"register_save_state_pre_hook needs a callable hook(models, weights, output_dir), "
                            f"got {type(hook).__name__}.")
        hooks = self._state_hooks("save")
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        return handle

    def register_load_state_pre_hook(self, hook: Callable[..., None]) -> Any:
        """Call ``hook(models, input_dir)`` at the start of every :meth:`load_state`;
        returns a ``torch.utils.hooks.RemovableHandle``.

        Remove a model from ``models`` to skip loading its weights (after loading it
        your own way from ``input_dir``). See [Note: state hooks].
        """
        from torch.utils.hooks import RemovableHandle

        if not callable(hook):
            raise TypeError(f"register_load_state_pre_hook needs a callable hook(models, input_dir), "
                            f"got {type(hook).__name__}.")
        hooks = self._state_hooks("load")
        handle = RemovableHandle(hooks)
        hooks[handle.id] = hook
        return handle

    def _save_hooks_runner(self, collective: bool) -> Callable[[str], list[nn.Module] | None] | None:
        """What ``save_training_state`` calls where it assembles the files: runs the save
        hooks and returns the models whose weights to write (see [Note: state hooks])."""
        hooks = list(self._state_hooks("save").values())
        if not hooks:
            return None
        models = list(self._models)
        # Unsharded: taken now, before other processes defer their hooks. Sharded: a
        # gather, so only once every process has arrived (in ``run``): never a hang.
        eager = None if collective else [self.get_state_dict(m) for m in models]

        def run(directory: str) -> list[nn.Module]:
            weights = eager if eager is not None else [self.get_state_dict(m) for m in models]
            kept_weights = list(weights)
            for hook in hooks:
                hook(list(models), kept_weights, directory)
            positions = {id(w): i for i, w in enumerate(weights)}
            stranger = [type(w).__name__ for w in kept_weights if id(w) not in positions]
            if stranger:
                raise ValueError(f"a save_state pre-hook put {stranger} into `weights`: surge writes the models "
                                 "themselves, so a hook may only remove entries. Save other things into output_dir "
                                 "from the hook itself.")
            kept = [positions[id(w)] for w in kept_weights]
            if collective and self.topology.is_distributed:
                from surge.ops import broadcast_object_list

                kept = broadcast_object_list([kept])[0]  # every process writes the same models
            return [models[i] for i in kept]

        return run

    def save_state(self, output_dir: str | os.PathLike[str] | None = None, safe_serialization: bool = True,
                   *, async_save: bool = False, **kwargs: Any) -> str:
        """Save everything prepared (models, optimizers, schedulers, the loss scaler, the
        loaders' progress), the registered objects, step counters and every process's
        RNG state to ``output_dir`` (see [Note: checkpoint layout]); returns the directory.

        With ``ProjectConfiguration(automatic_checkpoint_naming=True)`` and no
        ``output_dir`` it writes ``project_dir/checkpoints/checkpoint_<n>`` and, with
        ``total_limit``, removes the oldest once the new one is complete.

        Unsharded strategies (one process, DDP) write from the main process without any
        collective, so ``if accelerator.is_main_process: accelerator.save_state()``
        works (other processes' RNG states are then not saved). Sharded ones (ZeRO,
        FSDP) need every process: called on some only, it fails rather than hangs.
        FSDP with ``state_dict_type="FULL_STATE_DICT"`` gathers the weights and writes
        the full layout; ZeRO and ``SHARDED_STATE_DICT`` write shards (DCP).

        ``async_save=True`` copies the state to CPU memory and writes it in the
        background while training goes on (sharded tensors through DCP's
        ``async_save``). The next ``save_state``/``load_state``, :meth:`end_training`
        and :meth:`wait_for_checkpoint` wait for it; the checkpoint appears (and
        ``total_limit`` prunes) only once it is complete. It costs one extra copy of the
        state in host memory while the write runs.
        """
        from surge.checkpoint.naming import checkpoints_root, number_of, prune
        from surge.utils.random import rng_state

        if not safe_serialization:
            warnings.warn("save_state(safe_serialization=False) is ignored: weights are always written with "
                          "safetensors.", stacklevel=2)
        if kwargs:
            raise TypeError(f"save_state got unexpected arguments {sorted(kwargs)}.")
        check_bool("save_state async_save", async_save)
        self.wait_for_checkpoint()
        pc = self.project_configuration
        automatic = output_dir is None
        if automatic:
            if not pc.automatic_checkpoint_naming:
                raise ValueError("save_state() needs output_dir, or ProjectConfiguration(project_dir=..., "
                                 "automatic_checkpoint_naming=True) to name checkpoints itself.")
            output_dir = os.path.join(checkpoints_root(pc.project_dir), f"checkpoint_{pc.iteration}")
        assert output_dir is not None
        gs = self.gradient_state
        if gs.cycle_step and self.topology.is_main_process:
            warnings.warn(f"save_state at micro-step {gs.cycle_step} of an accumulation cycle of {gs.num_steps}: the "
                          "gradients accumulated so far are not saved, so a run resumed from it differs. Save when "
                          "accelerator.sync_gradients is True (right after the optimizer step).", stacklevel=2)
        number = number_of(os.fspath(output_dir))
        extra = {
            "loaders": [dl.state_dict() for dl in self._dataloaders],
            "custom": [obj.state_dict() for obj in self._custom_objects],
            "gradient_step": self.gradient_state.step,
            "cycle_step": self.gradient_state.cycle_step,
            "iteration": (number + 1) if number is not None else pc.iteration,
        }
        limit = pc.total_limit if automatic else None
        root = checkpoints_root(pc.project_dir)
        result = self._write_checkpoint(
            output_dir, models=self._models, optimizers=self._optimizers, schedulers=self._schedulers, extra=extra,
            # Each process's own loader states too: an epoch's random draws start from its RNG.
            rank_state={"rng": rng_state(), "loaders": extra["loaders"] if self.topology.is_main_process
                        else [dl.state_dict() for dl in self._dataloaders]}, background=async_save,
            on_complete=(lambda: prune(root, limit)) if limit is not None else None,
            before_write=self._save_hooks_runner(self.strategy.checkpoint_writer().collective),
        )
        if automatic:
            pc.iteration += 1
        if isinstance(result, PendingSave):
            self._pending_save = result
            return result.directory
        return result

    def _write_checkpoint(self, directory: str | os.PathLike[str], *, models: list[Any], optimizers: list[Any],
                          schedulers: list[Any], extra: dict[str, Any], rank_state: dict[str, Any] | None = None,
                          background: bool = False, on_complete: Callable[[], object] | None = None,
                          caller: str = "save_state", index: int | None = None,
                          before_write: Callable[[str], list[nn.Module] | None] | None = None) -> str | PendingSave:
        """The one checkpoint write of ``save_state`` and the DeepSpeed engine's
        ``save_checkpoint``: the strategy chooses the layout, the precision adds its state.
        ``caller`` and ``index`` (that caller's own count of its calls, the same on every
        process that calls it; default: ``save_state``/``load_state``'s) tell the
        processes which save they meet in. Returns the directory, or a ``PendingSave``
        with ``background``."""
        from surge.checkpoint.training import save_training_state

        if index is None:
            self._checkpoint_calls += 1
            index = self._checkpoint_calls
        writer = self.strategy.checkpoint_writer()
        return save_training_state(
            directory, writer=writer, topology=self.topology, strategy_name=self.strategy.name, models=models,
            optimizers=optimizers, schedulers=schedulers, precision_state=self.precision.state_dict(), extra=extra,
            rank_state=rank_state, save_index=index, background=background,
            group=self._background_group() if background and writer.sharded else None, on_complete=on_complete,
            caller=caller, before_write=before_write,
        )

    def _read_checkpoint(self, directory: str, *, models: list[Any], optimizers: list[Any], schedulers: list[Any],
                         load_precision: bool = True, strict: bool = True, partial: bool = False,
                         caller: str = "load_state", index: int | None = None,
                         weighted: list[nn.Module] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The one checkpoint read of ``load_state`` and the engine's ``load_checkpoint``:
        under a sharded strategy every process must arrive (checked, never a hang; see
        :meth:`_write_checkpoint` for ``caller`` and ``index``). Returns the caller's
        saved state and this process's own."""
        from surge.checkpoint.training import check_all_arrived, load_training_state

        if index is None:
            self._checkpoint_calls += 1
            index = self._checkpoint_calls
        if self.strategy.sharded_checkpoint:
            check_all_arrived(self.topology, f"surge/{caller}/{os.path.abspath(directory)}/{index}", calls=caller)
        return load_training_state(
            directory, topology=self.topology, models=models, optimizers=optimizers, schedulers=schedulers,
            load_precision_state=self.precision.load_state_dict if load_precision else None, strict=strict,
            partial=partial, weighted=weighted,
        )

    def _background_group(self) -> Any:
        """A gloo process group of its own for background checkpoint writes, so their
        collectives never interleave with the training's (made once, by every process)."""
        if self._checkpoint_group is None and self.topology.is_distributed:
            import torch.distributed as dist

            from surge.process_group import group_timeout

            # new_group's own default is 30 minutes: the job's collective timeout applies here too
            self._checkpoint_group = dist.new_group(backend="gloo", timeout=group_timeout())
        return self._checkpoint_group

    def wait_for_checkpoint(self) -> str | None:
        """Block until a ``save_state(async_save=True)`` still being written is complete
        and return its directory (None when there is none).

        Raises:
            RuntimeError: the background save failed; the previous checkpoint is intact.
        """
        pending, self._pending_save = self._pending_save, None
        return pending.wait() if pending is not None else None

    def load_state(self, input_dir: str | os.PathLike[str] | None = None, *, missing_ok: bool = False,
                   **kwargs: Any) -> str | None:
        """Restore what :meth:`save_state` wrote into the prepared objects (same kinds and
        order), the registered objects, the loaders' progress, step counters and this
        process's RNG state; returns the directory loaded. ``input_dir=None`` loads the
        newest complete checkpoint under ``project_dir/checkpoints``; automatic
        numbering continues after it.

        Each prepared loader continues as in the live run: one interrupted mid-epoch by
        the checkpoint runs the rest of that epoch (same draws, without the batches
        already handed out); any other, including one whose iteration was abandoned
        (an evaluation loop that ``break``s), starts its next iteration from the
        beginning (``loader.epoch`` is the epoch that runs next).

        ``missing_ok=True`` makes it the resume one-liner of a restartable script: with
        no complete checkpoint yet it does nothing and returns None, so the same line
        starts a fresh run and resumes a restarted one (``surge launch --max_restarts``).

        Works across world sizes and strategies (e.g. DDP <-> ZeRO-3). Every process must
        call it.

        Raises:
            ValueError: no checkpoint (without ``missing_ok``), or an incomplete,
                corrupted or mismatching one (the file or count is named).
        """
        from surge.checkpoint.accelerate_format import is_accelerate_checkpoint
        from surge.checkpoint.naming import checkpoints_root, newest_complete, number_of

        if kwargs:
            raise TypeError(f"load_state got unexpected arguments {sorted(kwargs)}.")
        check_bool("load_state missing_ok", missing_ok)
        self.wait_for_checkpoint()
        pc = self.project_configuration
        if input_dir is None:
            root = checkpoints_root(pc.project_dir)
            input_dir = newest_complete(root)
            if input_dir is None:
                if missing_ok:
                    if self.topology.is_main_process:
                        _log.info("load_state: no complete checkpoint under %s yet; starting from the beginning", root)
                    return None
                raise ValueError(f"load_state() found no complete checkpoint under {root!r}; pass input_dir, or "
                                 "missing_ok=True to start from the beginning when there is none.")
        input_dir = os.fspath(input_dir)
        weighted = list(self._models)
        for hook in list(self._state_hooks("load").values()):
            hook(weighted, input_dir)  # see [Note: state hooks]
        if is_accelerate_checkpoint(input_dir):
            self._load_accelerate_checkpoint(input_dir, weighted)
        else:
            self._load_surge_checkpoint(input_dir, weighted)
        number = number_of(input_dir)
        if pc.automatic_checkpoint_naming and number is not None:
            pc.iteration = max(pc.iteration, number + 1)
        if self.topology.is_main_process:
            _log.info("load_state: resumed from %s", input_dir)
        return input_dir

    def _load_accelerate_checkpoint(self, input_dir: str, weighted: list[nn.Module]) -> None:
        """Load a folder written by HF Accelerate's ``save_state`` (see [Note: Accelerate
        checkpoints] in checkpoint/accelerate_format.py)."""
        from surge.checkpoint.accelerate_format import load_accelerate_checkpoint
        from surge.checkpoint.training import check_all_arrived

        self._checkpoint_calls += 1
        if self.strategy.sharded_checkpoint:
            check_all_arrived(self.topology, f"surge/load_state/{os.path.abspath(input_dir)}/"
                              f"{self._checkpoint_calls}", calls="load_state")
        step = load_accelerate_checkpoint(
            input_dir, process_index=self.process_index, weighted=weighted, models=self._models,
            optimizers=self._optimizers, schedulers=self._schedulers, dataloaders=self._dataloaders,
            custom_objects=self._custom_objects, load_precision_state=self.precision.load_state_dict)
        if step is not None:  # Accelerate's micro-step count in the epoch
            self.gradient_state.step = step
            self.gradient_state.cycle_step = step % self.gradient_state.num_steps
        if self.topology.is_main_process:
            _log.info("load_state: %s is an HF Accelerate checkpoint; loaders keep their position (use "
                      "skip_first_batches as under Accelerate)", input_dir)

    def _load_surge_checkpoint(self, input_dir: str, weighted: list[nn.Module]) -> None:
        from surge.utils.random import set_rng_state

        extra, rank_state = self._read_checkpoint(input_dir, models=self._models, optimizers=self._optimizers,
                                                  schedulers=self._schedulers, weighted=weighted)
        for kind, mine, saved in (("dataloaders", self._dataloaders, extra["loaders"]),
                                  ("objects registered for checkpointing", self._custom_objects, extra["custom"])):
            if len(mine) != len(saved):
                raise ValueError(f"checkpoint {input_dir!r} holds {len(saved)} {kind} but {len(mine)} are prepared "
                                 "here; prepare/register the same ones as the run that saved it.")
        own = rank_state.get("loaders")
        loader_states = own if own is not None and len(own) == len(extra["loaders"]) else extra["loaders"]
        for loader, state in zip(self._dataloaders, loader_states, strict=True):
            loader.load_state_dict(state)
        for obj, state in zip(self._custom_objects, extra["custom"], strict=True):
            obj.load_state_dict(state)
        self.gradient_state.step = int(extra["gradient_step"])
        self.gradient_state.cycle_step = int(extra.get("cycle_step", 0))  # older checkpoints lack it
        if "rng" in rank_state:
            set_rng_state(rank_state["rng"])
        elif self.num_processes > 1:
            warnings.warn(f"checkpoint {input_dir!r} has no RNG state for process {self.process_index} (it was "
                          "saved by the main process alone); its random streams continue unrestored.", stacklevel=3)
