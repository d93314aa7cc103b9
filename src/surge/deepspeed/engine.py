"""DeepSpeed's engine API on an Accelerator: ``surge.initialize`` and ``Engine``.

A script written for ``deepspeed.initialize`` runs with ``import surge`` and
``surge.initialize`` in its place: the same JSON config, the same
``engine(batch)`` / ``engine.backward(loss)`` / ``engine.step()`` loop, the same
``save_checkpoint`` / ``load_checkpoint``. Underneath, everything is an
:class:`~surge.Accelerator` with a ``DeepSpeedPlugin`` (FSDP2, no DeepSpeed needed).

[Note: the engine's micro-step]
Each ``backward`` (or the several before one ``step()``, see below) is one micro-step of
the accumulation cycle (the Accelerator's ``accumulate``): inside a cycle gradients are accumulated without being
synchronised; on the cycle's last micro-step (every ``gradient_accumulation_steps``,
and on a prepared loader's last batch) they are, and the following ``step()`` clips
(``gradient_clipping``), steps the optimizer, advances the scheduler (unless fp16
skipped the step) and zeroes the gradients. ``step()`` anywhere else only counts.
``backward`` is the Accelerator's (its non-finite guard included); ``scale_wrt_gas=False``
only leaves the loss undivided by the accumulation steps.

[Note: several backward calls in one micro-step]
DeepSpeed counts micro-steps in ``step()``, not in ``backward``: calling ``backward``
several times before one ``step()`` (a GAN's two losses, a loss per head) adds each
call's gradients, each loss divided by the accumulation steps, and synchronises them when
the micro-step is a boundary. The first ``backward`` of a micro-step counts it here (the
Accelerator's ``accumulate``); the others keep its decision. Under ZeRO-0/1 (DDP) a
boundary backward that no forward through the engine prepared (a second
``backward(retain_graph=True)`` on one forward's graph, or a loss computed with
``engine.module(...)``) would not be reduced by DDP, which arms its reduction in the
forward: the engine then averages the gradients itself after that backward, as DeepSpeed's
ZeRO-0 always does (every trainable parameter, missing gradients as zeros; averaging
gradients already averaged leaves them unchanged). ZeRO-2/3 (FSDP2) reduce in backward
hooks and need nothing more. ``set_gradient_accumulation_boundary(b)`` replaces the
counting, as in DeepSpeed: every backward is a boundary (synchronised) when ``b`` is True,
and none is when False.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from surge.accelerator import Accelerator

from surge.deepspeed.ds_config import load_json, parse_deepspeed_config, resolve_batch_sizes
from surge.deepspeed.engine_api import DeepSpeedOptimizer, EngineAPI

_CLIENT_STATE = "client_state"
_log = logging.getLogger("surge.deepspeed")


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DeepSpeed's ``--deepspeed`` and ``--deepspeed_config`` flags to ``parser``
    (``surge.initialize(args=...)`` reads the config path from them)."""
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed-compatible configuration (surge)")
    group.add_argument("--deepspeed", default=False, action="store_true",
                       help="Run through surge.initialize (accepted for DeepSpeed compatibility).")
    group.add_argument("--deepspeed_config", default=None, type=str, help="A DeepSpeed JSON configuration file.")
    # DeepSpeed's deprecated spellings, still in older scripts' command lines.
    group.add_argument("--deepscale", default=False, action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--deepscale_config", default=None, type=str, help=argparse.SUPPRESS)
    return parser


def _deepspeed_loader(dataset: Any, micro: int, collate_fn: Any, drop_last: bool, accelerator: Any) -> Any:
    """DeepSpeed's ``DeepSpeedDataLoader`` for ``training_data``: a ``DistributedSampler``
    over the data-parallel processes (shuffled from seed 0; DeepSpeed never calls its
    ``set_epoch``, so every epoch has the same order unless the script calls
    ``loader.data_sampler.set_epoch``) and batches of ``train_micro_batch_size_per_gpu``
    (``dataloader_drop_last``), left on the CPU for the script to move, as DeepSpeed's."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    sampler: DistributedSampler[Any] = DistributedSampler(dataset, num_replicas=accelerator.num_processes,
                                                          rank=accelerator.process_index)
    loader = DataLoader(dataset, batch_size=micro, sampler=sampler, collate_fn=collate_fn, drop_last=drop_last)
    loader.data_sampler = sampler  # DeepSpeedDataLoader's name
    return loader


def _config_source(args: Any, config: Any, config_params: Any) -> Any:
    if config is not None and config_params is not None:
        raise ValueError("pass the DeepSpeed config as config= or config_params=, not both.")
    config = config if config is not None else config_params
    from_args = getattr(args, "deepspeed_config", None) if args is not None else None
    if from_args is None and args is not None:
        from_args = getattr(args, "deepscale_config", None)  # DeepSpeed's deprecated name, still read
    if config is not None and from_args is not None:
        raise ValueError(f"the DeepSpeed config is given twice: config=... and args.deepspeed_config={from_args!r}; "
                         "keep one.")
    config = config if config is not None else from_args
    if config is None:
        raise ValueError("surge.initialize needs a DeepSpeed config: config= (a dict or JSON path) or "
                         "args.deepspeed_config (see surge.add_config_arguments).")
    if not isinstance(config, (dict, str, os.PathLike)):
        raise TypeError(f"config={config!r} must be a dict or a path to a JSON file.")
    return config


def initialize(
    args: Any = None,
    model: nn.Module | None = None,
    optimizer: Any = None,
    model_parameters: Any = None,
    training_data: Any = None,
    lr_scheduler: Any = None,
    mpu: Any = None,
    dist_init_required: bool | None = None,
    collate_fn: Any = None,
    config: dict[str, Any] | str | os.PathLike[str] | None = None,
    config_params: dict[str, Any] | None = None,
    distributed_port: int | None = None,
    mesh_param: Any = None,
) -> tuple[Engine, Any, Any, Any]:
    """Build a training engine the way ``deepspeed.initialize`` does.

    Args:
        args: An argparse namespace; its ``deepspeed_config`` is the config when
            ``config`` is not given.
        model: The ``torch.nn.Module`` to train.
        optimizer: An optimizer built on ``model``'s parameters, or a callable taking
            the parameters; None builds the config's ``optimizer`` section.
        model_parameters: The parameters (or param groups) for the config's optimizer;
            default: every parameter of ``model`` that requires grad.
        training_data: A dataset; a sharded, shuffled DataLoader of
            ``train_micro_batch_size_per_gpu`` is built from it.
        lr_scheduler: A scheduler built on ``optimizer``, or a callable taking the
            optimizer; None builds the config's ``scheduler`` section (if any).
        collate_fn: The DataLoader's collate function.
        config / config_params: The DeepSpeed config: a dict or a JSON file path.
        dist_init_required / distributed_port: accepted for compatibility; the process
            group comes from the launcher (``surge launch``, torchrun, ...).

    Returns:
        ``(engine, optimizer, dataloader, lr_scheduler)``; the last three are None when
        there is nothing to build.

    An ``optimizer`` (or ``lr_scheduler``) passed here is used even when the config has
    an ``optimizer`` (``scheduler``) section, which is then ignored with a warning: as in
    DeepSpeed, where the client's object "overrides any optimizer definition in the
    DeepSpeed json config". A config ``scheduler`` section with a passed optimizer is
    built on that optimizer.

    Raises:
        ValueError: a bad config (unknown keys, stage, offload, batch sizes, optimizer
            or scheduler type: each named).
    """
    from surge.accelerator import Accelerator
    from surge.config.plugins import DeepSpeedPlugin
    from surge.deepspeed.optimizers import build_optimizer, optimizer_class
    from surge.deepspeed.schedulers import build_scheduler, scheduler_class
    from surge.topology import Topology

    if mpu is not None or mesh_param is not None:
        raise ValueError("surge.initialize(mpu=... / mesh_param=...): model parallelism through DeepSpeed's mpu or "
                         "mesh is not supported; surge shards data-parallel (ZeRO/FSDP). Drop the argument.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"surge.initialize needs model= a torch.nn.Module; got {type(model).__name__}.")
    data = load_json(_config_source(args, config, config_params))
    settings = parse_deepspeed_config(data)  # every config error before any side effect
    opt_section, sched_section = data.get("optimizer"), data.get("scheduler")
    ignored = []
    if opt_section is not None and optimizer is not None:
        ignored.append(("optimizer", opt_section))  # DeepSpeed: the client optimizer overrides the config's
        opt_section = None
    if sched_section is not None and lr_scheduler is not None:
        ignored.append(("scheduler", sched_section))
        sched_section = None
    if opt_section is not None:
        optimizer_class(opt_section)
    if sched_section is not None:
        scheduler_class(sched_section)
    world = Topology.detect().world_size
    micro, train, accumulation = (settings.train_micro_batch_size_per_gpu, settings.train_batch_size,
                                  settings.gradient_accumulation_steps)
    if micro is not None or train is not None:
        train, micro, accumulation = resolve_batch_sizes(train, micro, accumulation, world)
    elif training_data is not None:
        raise ValueError("surge.initialize(training_data=...) needs train_micro_batch_size_per_gpu or "
                         "train_batch_size in the DeepSpeed config (not \"auto\": there is no DataLoader to read it "
                         "from).")
    from surge.deepspeed.monitor import SECTIONS

    # The engine applies the optimizer, scheduler and monitor sections itself (the Accelerator
    # under it would call the monitor sections unapplied).
    engine_config = {k: v for k, v in data.items() if k not in ("optimizer", "scheduler", *SECTIONS)}
    # DeepSpeed's engine advances its scheduler once per optimizer step, on any number of processes.
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=engine_config),
                              gradient_accumulation_steps=accumulation, scheduler_steps="once")
    if ignored and accelerator.is_main_process:
        for name, section in ignored:
            kind = section.get("type") if isinstance(section, dict) else section
            given = "optimizer" if name == "optimizer" else "lr_scheduler"
            warnings.warn(f"surge.initialize: the {given} passed is used and the config's {name} section ({kind!r}) "
                          f"is ignored, as DeepSpeed does (a client {given} overrides the config's); drop the section "
                          "to silence this.", stacklevel=2)
    client_optimizer = optimizer is not None
    if opt_section is not None:
        params = model_parameters if model_parameters is not None else [p for p in model.parameters()
                                                                          if p.requires_grad]
        optimizer = build_optimizer(opt_section, params)
    elif optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            raise TypeError(f"optimizer={optimizer!r} must be a torch.optim.Optimizer or a callable taking the "
                            "parameters.")
        optimizer = optimizer(model_parameters if model_parameters is not None else model.parameters())
    if sched_section is not None and optimizer is not None:
        lr_scheduler = build_scheduler(sched_section, optimizer)
    elif lr_scheduler is not None and not hasattr(lr_scheduler, "step") and callable(lr_scheduler):
        lr_scheduler = lr_scheduler(optimizer)
    loader = None
    if training_data is not None and micro is not None:  # (micro is known: checked above)
        loader = _deepspeed_loader(training_data, micro, collate_fn, settings.drop_last, accelerator)
    prepared = accelerator.prepare(*(x for x in (model, optimizer, lr_scheduler) if x is not None))
    prepared = list(prepared) if isinstance(prepared, tuple) else [prepared]
    model = prepared.pop(0)
    optimizer = prepared.pop(0) if optimizer is not None else None
    lr_scheduler = prepared.pop(0) if lr_scheduler is not None else None
    if optimizer is not None:
        # The prepared optimizer, with the names DeepSpeed's optimizers add (a subclass
        # without state of its own: the object the Accelerator holds stays the same).
        optimizer.__class__ = DeepSpeedOptimizer
        optimizer.measure_grad_norm = True  # get_global_grad_norm() after every step, as DeepSpeed's ZeRO
    engine = Engine(accelerator, model, optimizer, lr_scheduler, loader, train_batch_size=train,
                    micro_batch_size=micro, zero_stage=settings.zero_stage, config=data,
                    client_optimizer=client_optimizer)
    return engine, optimizer, loader, lr_scheduler


class Engine(EngineAPI):
    """A model prepared for training with DeepSpeed's engine methods (see the module
    docstring and [Note: the engine's micro-step]); its accessors are in engine_api.py, and
    attributes it does not have are the model's. Build it with :func:`initialize`."""

    _wrapped: nn.Module

    def __init__(self, accelerator: Accelerator, model: nn.Module, optimizer: Any, lr_scheduler: Any,
                 dataloader: Any, *, train_batch_size: int | None, micro_batch_size: int | None, zero_stage: int,
                 config: dict[str, Any], client_optimizer: bool = False) -> None:
        from surge.deepspeed.monitor import Monitor

        super().__init__()
        self.module = accelerator.unwrap_model(model, keep_torch_compile=False)
        # The wrapper that runs the forward (DDP, or the FSDP module itself); not a
        # submodule, so the engine's parameters and state dict are the model's.
        object.__setattr__(self, "_wrapped", model)
        self.accelerator = accelerator
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.training_dataloader = dataloader
        self.config = config
        self._train_batch_size = train_batch_size
        self._micro_batch_size = micro_batch_size
        self._zero_stage = zero_stage
        self._client_optimizer = client_optimizer
        self.monitor = Monitor(config, accelerator.is_main_process)
        """DeepSpeed's ``engine.monitor`` (see monitor.py): ``enabled``, ``write_events``."""
        self.global_steps = 0
        """Optimizer steps taken (boundaries), skipped fp16 steps included, as in DeepSpeed."""
        self.global_samples = 0
        self.micro_steps = 0
        self.skipped_steps = 0
        self._backward_this_micro_step = False
        self._forwards_since_backward = 0
        self._inside_no_sync = False
        self._boundary: bool | None = None  # set_gradient_accumulation_boundary's value
        self._losses: torch.Tensor | None = None  # the cycle's divided losses, for the monitor
        # This engine's own counts of its checkpoint calls: every process makes the same
        # calls, whatever else (a main-process-only save_state) its Accelerator did.
        self._saves = self._loads = 0

    # -- the training step ------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._inside_no_sync and torch.is_grad_enabled():
            self._forwards_since_backward += 1  # DDP arms its reduction for the next backward
        return self._wrapped(*args, **kwargs)

    def train(self, mode: bool = True) -> Engine:
        super().train(mode)
        self._wrapped.train(mode)
        return self

    def is_gradient_accumulation_boundary(self) -> bool:
        """True when this micro-step ends an accumulation cycle (asked before or after
        its ``backward``); the value given to :meth:`set_gradient_accumulation_boundary`
        while one is set."""
        if self._boundary is not None:
            return self._boundary
        gs = self.accelerator.gradient_state
        if self._backward_this_micro_step:
            return gs.sync_gradients
        return gs.cycle_step + 1 >= gs.num_steps or gs.end_of_dataloader

    def set_gradient_accumulation_boundary(self, is_boundary: bool | None) -> None:
        """Decide the boundary by hand, as in DeepSpeed: set it before each forward/backward
        (False inside the cycle, True for its last backward), then call ``step()`` once.
        None returns to counting micro-steps."""
        if is_boundary is not None and not isinstance(is_boundary, bool):
            raise TypeError(f"set_gradient_accumulation_boundary({is_boundary!r}) takes True, False or None.")
        self._boundary = is_boundary

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """DeepSpeed's ``no_sync``: inside the block, ``backward`` accumulates gradients
        locally, undivided by the accumulation steps and without counting a micro-step;
        ``step()`` inside it is an error (as in DeepSpeed). Unlike DeepSpeed, it also
        works under ZeRO-2/3 (FSDP2 accumulates unsharded gradients)."""
        if self._inside_no_sync:
            raise RuntimeError("engine.no_sync() is already active; it cannot be entered again (DeepSpeed does not "
                               "support re-entering it either).")
        self._inside_no_sync = True
        try:
            with self.accelerator.no_sync(self._wrapped):
                yield
        finally:
            self._inside_no_sync = False

    def backward(self, loss: torch.Tensor, release_loss: bool = False, retain_graph: bool = False,
                 scale_wrt_gas: bool = True) -> torch.Tensor:
        """Backpropagate one micro-batch's ``loss``, divided by the accumulation steps
        (``scale_wrt_gas``), fp16-scaled when configured. Returns the loss as divided, as
        DeepSpeed does. Several calls before one ``step()`` add their gradients (see
        [Note: several backward calls in one micro-step])."""
        gs = self.accelerator.gradient_state
        if self._inside_no_sync:  # DeepSpeed: no reduction, no division, no micro-step counted
            self.accelerator._backward(loss, average=False, retain_graph=retain_graph)
            self._forwards_since_backward = 0
            self._observe(loss, boundary=False)
            return loss
        if self._boundary is not None:  # decided by hand
            gs._set_sync_gradients(self._boundary)
            with contextlib.nullcontext() if self._boundary else self.accelerator.no_sync(self._wrapped):
                self.accelerator._backward(loss, average=scale_wrt_gas, retain_graph=retain_graph)
        elif not self._backward_this_micro_step:
            with self.accelerator.accumulate(self._wrapped):
                self.accelerator._backward(loss, average=scale_wrt_gas, retain_graph=retain_graph)
        else:
            # The micro-step was counted by its first backward: keep its decision.
            with contextlib.nullcontext() if gs.sync_gradients else self.accelerator.no_sync(self._wrapped):
                self.accelerator._backward(loss, average=scale_wrt_gas, retain_graph=retain_graph)
        if gs.sync_gradients and self._forwards_since_backward == 0 and self._replicated:
            self._average_gradients()
        self._backward_this_micro_step = True
        self._forwards_since_backward = 0
        if scale_wrt_gas and self.gradient_accumulation_steps() > 1:
            loss = loss.float() / self.gradient_accumulation_steps()
        self._observe(loss, boundary=gs.sync_gradients)
        return loss

    @property
    def _replicated(self) -> bool:
        """Several processes holding whole gradients (ZeRO-0/1: DDP, which reduces only
        backwards its forward armed)."""
        return self.accelerator.num_processes > 1 and self.accelerator.plan.strategy.shard_degree < 2

    def _average_gradients(self) -> None:
        """Average every trainable parameter's gradient over the processes (missing ones as
        zeros, as DeepSpeed's ZeRO-0 reduction): one all-reduce per dtype. See [Note:
        several backward calls in one micro-step]."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            assert p.grad is not None
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        with torch.no_grad():
            for grads in by_dtype.values():
                flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
                for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                    g.copy_(part.view_as(g))

    def _observe(self, loss: torch.Tensor, boundary: bool) -> None:
        """DeepSpeed's loss record: the micro-batch losses of the cycle (as divided) add up;
        at a boundary backward the main process writes them (one host sync, only with a
        monitor section)."""
        if not self.monitor.enabled:
            return
        mean = loss.detach().mean()
        self._losses = mean if self._losses is None else self._losses + mean
        if boundary and self.accelerator.is_main_process:
            self.monitor.write_events([("Train/Samples/train_loss", self._losses.item(), self.global_samples)])

    def step(self, lr_kwargs: dict[str, Any] | None = None) -> None:
        """At an accumulation boundary: clip, step the optimizer, advance the scheduler,
        zero the gradients. Elsewhere: count the micro-step."""
        if self._inside_no_sync:
            raise RuntimeError("engine.step() was called inside engine.no_sync(); call it after the block (DeepSpeed "
                               "forbids it too).")
        if self._backward_this_micro_step and self.accelerator.gradient_state.sync_gradients:
            optimizer = self._need_optimizer("step")
            optimizer.step()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step(**(lr_kwargs or {}))  # not after a skipped fp16 step (see optim.py)
            optimizer.zero_grad()
            self.skipped_steps += int(optimizer.step_was_skipped)
            self._report_progress()
            self._losses = None
            self.global_steps += 1
            if self._train_batch_size is not None:
                self.global_samples += self._train_batch_size
            if self.monitor.enabled and self.accelerator.is_main_process:
                events = [("Train/Samples/lr", self.get_lr()[0], self.global_samples)]
                if self.fp16_enabled():
                    events.append(("Train/Samples/loss_scale", optimizer.cur_scale, self.global_samples))
                self.monitor.write_events(events)
        self.micro_steps += 1
        self._backward_this_micro_step = False

    def _report_progress(self) -> None:
        every = self.steps_per_print()
        if every and (self.global_steps + 1) % every == 0 and self.accelerator.is_main_process:
            _log.info("step=%d, skipped=%d, lr=%s, mom=%s", self.global_steps + 1, self.skipped_steps,
                      self.get_lr(), self.get_mom())

    def _need_optimizer(self, what: str) -> Any:
        if self.optimizer is None:
            raise RuntimeError(f"engine.{what}() needs an optimizer: pass optimizer= to surge.initialize or add an "
                               "optimizer section to the config.")
        return self.optimizer

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, save_dir: str | os.PathLike[str], tag: Any = None,
                        client_state: dict[str, Any] | None = None, save_latest: bool = True,
                        exclude_frozen_parameters: bool = False) -> bool:
        """Save model, optimizer, scheduler, loss scaler, counters and ``client_state``
        to ``save_dir/tag`` (tag default ``global_step<N>``) and, with ``save_latest``,
        name it in ``save_dir/latest``. Every process must call it; the checkpoint
        appears only once complete (see checkpoint/training.py)."""
        from surge.checkpoint.atomic import write_text

        tag = _check_tag(f"global_step{self.global_steps}" if tag is None else tag)
        save_dir = os.fspath(save_dir)
        self._check_same_target(save_dir, tag)
        extra = {_CLIENT_STATE: dict(client_state or {}), "engine": self._counters()}
        self._saves += 1
        self.accelerator._write_checkpoint(
            os.path.join(save_dir, tag), models=[self._wrapped],
            optimizers=[self.optimizer] if self.optimizer is not None else [],
            schedulers=[self.lr_scheduler] if self.lr_scheduler is not None else [], extra=extra,
            caller="save_checkpoint", index=self._saves)
        if save_latest and self.accelerator.is_main_process:
            write_text(os.path.join(save_dir, "latest"), tag)
        self.accelerator.wait_for_everyone()
        return True

    def _check_same_target(self, save_dir: str, tag: str) -> None:
        """Every process must save into the same ``save_dir/tag``: compared before anything
        is written (one small gather), so every process gets the error at once instead of a
        checkpoint that waits for processes writing elsewhere.

        Raises:
            ValueError: the directories or the tags differ; the message lists each rank's.
        """
        if self.accelerator.num_processes == 1:
            return
        from surge.ops import gather_object

        everyone = gather_object([(os.path.abspath(save_dir), os.path.realpath(save_dir), tag)])
        problems = []
        if len({real for _, real, _ in everyone}) > 1:
            paths = ", ".join(f"rank {rank}: {path!r}" for rank, (path, _, _) in enumerate(everyone))
            problems.append(
                f"engine.save_checkpoint was given a different save_dir on different processes ({paths}). Pass the "
                "same directory on every process (DeepSpeed requires it too: every process writes its part of one "
                "checkpoint there); a path built from the rank, the time or a per-process temporary directory is the "
                "usual cause.")
        if len({t for _, _, t in everyone}) > 1:
            tags = ", ".join(f"rank {rank}: {t!r}" for rank, (_, _, t) in enumerate(everyone))
            problems.append(f"engine.save_checkpoint was given a different tag on different processes ({tags}); "
                            "every process must pass the same tag.")
        if problems:
            raise ValueError(" ".join(problems))

    def load_checkpoint(self, load_dir: str | os.PathLike[str], tag: Any = None, load_module_strict: bool = True,
                        load_optimizer_states: bool = True, load_lr_scheduler_states: bool = True,
                        load_module_only: bool = False) -> tuple[str | None, dict[str, Any] | None]:
        """Load ``load_dir/tag`` (tag default: the name in ``load_dir/latest``) into
        the model, optimizer, scheduler and loss scaler, and restore the counters.
        Every process must call it.

        Returns:
            ``(checkpoint_path, client_state)``, or ``(None, None)`` (with a warning)
            when ``tag`` is None and there is no ``latest`` file.
        """
        load_dir = os.fspath(load_dir)
        self._loads += 1  # counted on every call, so processes agree whatever each one finds
        if tag is None:
            latest = os.path.join(load_dir, "latest")
            if not os.path.isfile(latest):
                warnings.warn(f"no checkpoint to load: {latest!r} does not exist (pass tag= to load a named one).",
                              stacklevel=2)
                return None, None
            with open(latest) as f:
                tag = f.read().strip()
        path = os.path.join(load_dir, _check_tag(tag))
        # -- a checkpoint DeepSpeed itself wrote (checkpoint/deepspeed_resume.py) --
        from surge.checkpoint.deepspeed_files import is_deepspeed_checkpoint

        if is_deepspeed_checkpoint(path):
            from surge.checkpoint.deepspeed_resume import load_deepspeed_checkpoint

            client, counters = load_deepspeed_checkpoint(
                path, model=self._wrapped, optimizer=self.optimizer, scheduler=self.lr_scheduler,
                precision=self.accelerator.precision, strict=load_module_strict,
                load_optimizer_states=load_optimizer_states, load_lr_scheduler_states=load_lr_scheduler_states,
                load_module_only=load_module_only, train_batch_size=self._train_batch_size)
            for key, value in counters.items():
                setattr(self, key, value)
            self.accelerator.wait_for_everyone()
            return path, client
        # -- surge's own checkpoints --
        with_optimizer = load_optimizer_states and not load_module_only and self.optimizer is not None
        with_scheduler = load_lr_scheduler_states and not load_module_only and self.lr_scheduler is not None
        extra, _ = self.accelerator._read_checkpoint(
            path, models=[self._wrapped], optimizers=[self.optimizer] if with_optimizer else [],
            schedulers=[self.lr_scheduler] if with_scheduler else [], load_precision=not load_module_only,
            strict=load_module_strict, partial=not (with_optimizer and with_scheduler),
            caller="load_checkpoint", index=self._loads,
        )
        if not load_module_only:
            for key, value in extra.get("engine", {}).items():
                setattr(self, key, value)
        return path, extra.get(_CLIENT_STATE, {})

    def _counters(self) -> dict[str, int]:
        return {"global_steps": self.global_steps, "global_samples": self.global_samples,
                "micro_steps": self.micro_steps, "skipped_steps": self.skipped_steps}

    def save_16bit_model(self, save_dir: str | os.PathLike[str], save_filename: str = "pytorch_model.bin",
                         exclude_frozen_parameters: bool = False) -> bool:
        """Write the full model's weights, gathered from the shards, in the run's 16-bit
        type (fp16/bf16; fp32 without mixed precision) to ``save_dir/save_filename``
        from the main process: a ``.safetensors`` name writes safetensors, otherwise a
        ``torch.save`` of plain tensors (loadable with ``weights_only=True``). Every
        process must call it (the gather is collective)."""
        from surge.checkpoint.atomic import atomic_write

        state = self.accelerator.get_state_dict(self._wrapped)
        if exclude_frozen_parameters:
            frozen = {name for name, p in self.module.named_parameters() if not p.requires_grad}
            state = {k: v for k, v in state.items() if k not in frozen}
        if self.accelerator.is_main_process:
            dtype = self.accelerator.precision.export_dtype
            state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                     for k, v in state.items()}
            path = os.path.join(os.fspath(save_dir), save_filename)
            if save_filename.endswith(".safetensors"):
                from safetensors.torch import save_file

                atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
            else:
                atomic_write(path, lambda tmp: torch.save(state, tmp))
        self.accelerator.wait_for_everyone()
        return True

    def save_fp16_model(self, save_dir: str | os.PathLike[str], save_filename: str = "pytorch_model.bin") -> bool:
        """DeepSpeed's former name of :meth:`save_16bit_model`."""
        return self.save_16bit_model(save_dir, save_filename)


def _check_tag(tag: Any) -> str:
    name = str(tag)
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"checkpoint tag {name!r} must be a plain directory name (no path separators, not hidden).")
    return name
