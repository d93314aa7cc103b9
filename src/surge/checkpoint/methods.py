"""The Accelerator's saving methods: ``save_model``, ``save``, ``save_state``,
``load_state``, ``register_for_checkpointing``, ``wait_for_checkpoint`` (mixed into
:class:`surge.Accelerator`; the files themselves are export.py's and training.py's)."""

from __future__ import annotations

import logging
import os
import warnings
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
        def unwrap_model(self, model: nn.Module, keep_fp32_wrapper: bool = True) -> nn.Module: ...
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
                          caller: str = "save_state", index: int | None = None) -> str | PendingSave:
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
            caller=caller,
        )

    def _read_checkpoint(self, directory: str, *, models: list[Any], optimizers: list[Any], schedulers: list[Any],
                         load_precision: bool = True, strict: bool = True, partial: bool = False,
                         caller: str = "load_state", index: int | None = None
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
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
            partial=partial,
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
        from surge.checkpoint.naming import checkpoints_root, newest_complete, number_of
        from surge.utils.random import set_rng_state

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
        extra, rank_state = self._read_checkpoint(input_dir, models=self._models, optimizers=self._optimizers,
                                                  schedulers=self._schedulers)
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
                          "saved by the main process alone); its random streams continue unrestored.", stacklevel=2)
        number = number_of(input_dir)
        if pc.automatic_checkpoint_naming and number is not None:
            pc.iteration = max(pc.iteration, number + 1)
        if self.topology.is_main_process:
            _log.info("load_state: resumed from %s", input_dir)
        return input_dir
