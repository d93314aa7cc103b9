"""The Accelerator: the one object a training script holds.

It validates its settings, finds where this process sits (``Topology``), asks the strategy registry how to
run, and then delegates: models to the strategy, optimizers and schedulers to their wrappers in optim.py,
dataloaders to data/, collectives to ops.py. It never branches on which strategy it holds
(see [Note: strategies are asked, not inspected] in strategies/base.py).

[Note: several Accelerators]
There is no process-wide Accelerator state. Each instance has its own config,
topology, strategy and gradient state, so notebooks and tests may create several
with different settings. All settings are validated before anything with side
effects happens; a constructor that raises leaves nothing behind. The only shared
resource is PyTorch's default process group, which the first instance starts and
later ones reuse after checking it matches.

This module is also DeepSpeed's ``deepspeed.accelerator`` under surge's name: ``get_accelerator`` /
``set_accelerator`` (the device abstraction, from surge/deepspeed/device_abstraction.py: only torch).
"""

from __future__ import annotations

import contextlib
import os
import warnings as pywarnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from surge.accumulation import AccumulateContext, GradientState
from surge.advice import Advice, emit
from surge.checkpoint.methods import CheckpointingMixin
from surge.config.dataloader import DataLoaderConfiguration
from surge.config.kwargs import GradientAccumulationPlugin
from surge.config.parallelism import ParallelismConfig
from surge.config.plugins import DeepSpeedPlugin, FullyShardedDataParallelPlugin, TorchDynamoPlugin
from surge.config.project import ProjectConfiguration
from surge.config.resolve import BatchSizes, fill_batch_sizes, resolve_plan
from surge.data.loader import PreparedDataLoader
from surge.data.methods import DataLoadingMixin
from surge.deepspeed.device_abstraction import get_accelerator, set_accelerator
from surge.extras import ExtrasMixin
from surge.guard import NonFiniteGuard
from surge.optim import AcceleratedOptimizer, AcceleratedScheduler
from surge.precision import select_precision
from surge.process_group import ensure_process_group
from surge.state import ProcessQueries, remember_accelerator
from surge.strategies.registry import select_strategy
from surge.topology import DistributedType
from surge.tracking.methods import TrackingMixin

__all__ = ["Accelerator", "get_accelerator", "set_accelerator"]  # the last two: deepspeed.accelerator's names

_LR_SCHEDULER_TYPES = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class Accelerator(CheckpointingMixin, TrackingMixin, DataLoadingMixin, ExtrasMixin, ProcessQueries):
    """Runs one training script on any topology: CPU, one GPU, many GPUs, many machines.

    Args:
        device_placement: Move prepared models and batches to :attr:`device`.
        split_batches: Split each loader batch across processes (the batch size is the
            global one) instead of giving each process whole batches (default False).
        mixed_precision: "no", "fp16", "bf16" or "fp8".
        gradient_accumulation_steps: Micro-batches per optimizer step (>= 1).
        cpu: Use the CPU even when GPUs are visible.

        These three, when not given (None), come from the config file that ``surge
        launch`` hands over (or the default config file written by ``surge config``),
        else default to "no", 1 and False. An explicit argument that differs from the
        config file wins and is reported with a warning.
        project_dir: Where the run keeps checkpoints and logs.
        project_config: A :class:`~surge.utils.ProjectConfiguration` (alternative to
            ``project_dir``).
        even_batches: Repeat samples from the start so every process sees the same
            number of batches (prevents hangs at the end of an epoch; default True).
        dataloader_config: A :class:`~surge.DataLoaderConfiguration` (split_batches,
            even_batches, dispatch_batches, use_seedable_sampler, data_seed,
            non_blocking); a plain ``split_batches`` / ``even_batches`` that contradicts
            it raises.
        step_scheduler_with_optimizer: Prepared schedulers advance only when the
            optimizer really stepped (False: on every call).
        scheduler_steps: "num_processes" (default, HF Accelerate's rule: a scheduler
            advances once per process at each optimizer step, once with ``split_batches``)
            or "once" (once per optimizer step on any number of processes); see
            [Note: the scheduler rule] in optim.py and docs/migrating.md.
        kwargs_handlers: ``DistributedDataParallelKwargs`` / ``InitProcessGroupKwargs`` /
            ``AutocastKwargs`` / ``GradScalerKwargs``.
        deepspeed_plugin: ZeRO sharding: a ``DeepSpeedPlugin`` or a dict such as
            ``{"zero_stage": 3}``; runs on FSDP2 (no DeepSpeed needed).
        fsdp_plugin: A ``FullyShardedDataParallelPlugin`` (FULL_SHARD / SHARD_GRAD_OP / HYBRID_SHARD / NO_SHARD).
        dynamo_backend: ``torch.compile`` the prepared models with this backend
            ("inductor", "aot_eager", ...; "no" or None: eager, unless the config file
            says otherwise). Compiled in place after wrapping (each block under FSDP).
        dynamo_plugin: A ``TorchDynamoPlugin`` (backend, mode, fullgraph, dynamic).
        nonfinite: At each optimizer step, what a NaN/inf loss or gradient does:
            "ignore" (default), "skip" the step (counted and logged) or "raise" with the
            step number (see guard.py; fp16 keeps its loss scaler instead).
        gradient_accumulation_plugin: A ``GradientAccumulationPlugin`` (num_steps, sync_each_batch,
            sync_with_dataloader, adjust_scheduler); pass it or gradient_accumulation_steps.
        accumulation_divisor: "cycle" (default: a last accumulation cycle cut short by the end
            of the data is the true mean of its micro-batches) or "num_steps" (HF Accelerate's
            numbers: every loss divided by gradient_accumulation_steps); see [Note: the short
            cycle] in accumulation.py.
        parallelism_config: A :class:`~surge.ParallelismConfig` (Accelerate's mesh sizes;
            their product must be the number of processes). ``dp_replicate_size x
            dp_shard_size`` is FSDP2's hybrid mesh under an FSDP plugin; ``tp_size > 1``
            (with an FSDP plugin, or alone) is tensor parallel; ``sp_size > 1`` is Ulysses sequence
            parallel; cp above 1 raises. None: the config file's ``parallelism_config_*_size`` keys.
        strategy: "auto": ``prepare`` chooses the lightest strategy whose model states fit
            (DDP, ZeRO-1/2/3, activation checkpointing, offload) from the model, precision,
            optimizer, processes and free memory, and prints it (strategies/auto.py). None:
            the plugins and config file decide.
        memory_budget_gb: GB each process may use, for ``strategy="auto"`` (None: free memory).
        log_with: Experiment trackers: "jsonl", "tensorboard", "wandb", "mlflow", "all"
            (every installed one), a list of names and ``GeneralTracker`` objects, or None.
            They start at :meth:`init_trackers`, on the main process only.
        warnings: "on" (default) or "off": run-time warnings for common mistakes (docs/guide.md).

    Example:
        >>> accelerator = Accelerator()
        >>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        >>> for batch in loader:
        ...     loss = model(batch).mean()
        ...     accelerator.backward(loss)
        ...     optimizer.step()
        ...     optimizer.zero_grad()
    """

    def __init__(
        self,
        device_placement: bool = True,
        split_batches: bool | None = None,
        mixed_precision: str | None = None,
        gradient_accumulation_steps: int | None = None,
        cpu: bool | None = None,
        dataloader_config: DataLoaderConfiguration | None = None,
        project_dir: str | os.PathLike[str] | None = None,
        project_config: ProjectConfiguration | None = None,
        even_batches: bool | None = None,
        step_scheduler_with_optimizer: bool = True,
        scheduler_steps: str = "num_processes",
        kwargs_handlers: list[Any] | None = None,
        deepspeed_plugin: DeepSpeedPlugin | dict[str, Any] | None = None,
        fsdp_plugin: FullyShardedDataParallelPlugin | None = None,
        log_with: Any = None,
        dynamo_backend: str | None = None,
        dynamo_plugin: TorchDynamoPlugin | None = None,
        nonfinite: str | None = None,
        gradient_accumulation_plugin: GradientAccumulationPlugin | None = None,
        accumulation_divisor: str = "cycle",
        parallelism_config: ParallelismConfig | None = None, warnings: str | None = None,
        strategy: str | None = None, memory_budget_gb: float | None = None,
    ) -> None:
        # 1. Settle every input into one plan; no side effects until this succeeded.
        plan, self.project_configuration = resolve_plan(
            device_placement=device_placement, split_batches=split_batches, mixed_precision=mixed_precision,
            gradient_accumulation_steps=gradient_accumulation_steps, cpu=cpu, project_dir=project_dir,
            project_config=project_config, even_batches=even_batches,
            step_scheduler_with_optimizer=step_scheduler_with_optimizer, scheduler_steps=scheduler_steps,
            kwargs_handlers=kwargs_handlers,
            deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin, log_with=log_with,
            dynamo_backend=dynamo_backend, dynamo_plugin=dynamo_plugin, nonfinite=nonfinite,
            gradient_accumulation_plugin=gradient_accumulation_plugin, accumulation_divisor=accumulation_divisor,
            dataloader_config=dataloader_config, parallelism_config=parallelism_config, warnings=warnings,
            strategy=strategy, memory_budget_gb=memory_budget_gb,
        )
        # Pure too: fp8 on a machine that cannot run it fails here, before any side effect.
        precision = select_precision(plan.config.mixed_precision, torch.device(plan.topology.device),
                                     plan.config.autocast, plan.config.scaler, plan.config.fp8_recipe)
        # 2. Act on it: the process group (shared, reused when running), then the strategy.
        ensure_process_group(plan.topology, timeout=plan.timeout, asked=plan.config.timeout is not None,
                             init_method=plan.config.init_method)
        self.plan = plan
        self.config = plan.config
        self.topology = plan.topology
        self.precision = precision
        if plan.topology.is_main_process:
            for note in plan.warnings:
                pywarnings.warn(note, stacklevel=2)
        self.strategy = select_strategy(plan.topology, plan.config, precision, plan.strategy)
        if plan.parallelism is not None:
            # Every process builds it (it creates the mesh's process groups), as Accelerate does.
            plan.parallelism.get_device_mesh(torch.device(plan.topology.device).type)
        c = plan.config
        self.gradient_state = GradientState(c.gradient_accumulation_steps, sync_each_batch=c.sync_each_batch,
                                            sync_with_dataloader=c.sync_with_dataloader,
                                            adjust_scheduler=c.adjust_scheduler)
        Advice.start(self, plan.advice)  # sets gradient_state.advice unless off ([Note: run-time advice])
        self._models: list[nn.Module] = []
        self._optimizers: list[AcceleratedOptimizer] = []
        self._schedulers: list[AcceleratedScheduler] = []
        self._dataloaders: list[PreparedDataLoader] = []
        self._custom_objects: list[Any] = []
        self._checkpoint_calls = 0  # save/load_state calls: names the collective's rendezvous
        self._pending_save: Any = None  # a save_state(async_save=True) still being written
        self._guard = (NonFiniteGuard(plan.nonfinite, plan.topology.is_distributed)
                       if plan.nonfinite != "ignore" and not precision.has_loss_scaler else None)
        self.deepspeed_batch_sizes: BatchSizes | None = None
        """A DeepSpeed config's batch sizes, completed from the first prepared DataLoader."""
        self.trackers: list[Any] = []  # started by init_trackers, on the main process
        self._checkpoint_group: Any = None  # the gloo group background sharded saves use
        if self.project_configuration.automatic_checkpoint_naming:
            # Never write over: continue after the highest checkpoint number on disk.
            from surge.checkpoint.naming import checkpoints_root, next_number

            root = checkpoints_root(self.project_configuration.project_dir)
            self.project_configuration.iteration = max(self.project_configuration.iteration, next_number(root))
        remember_accelerator(self)  # for AcceleratorState() built by a script (state.py)

    @property
    def deepspeed_plugin(self) -> DeepSpeedPlugin | None:
        """The DeepSpeed plugin this Accelerator runs with (given, or built from the config file)."""
        return self.plan.deepspeed_plugin

    @property
    def fsdp_plugin(self) -> FullyShardedDataParallelPlugin | None:
        """The FSDP plugin this Accelerator runs with (given, or built from the config file)."""
        return self.plan.fsdp_plugin

    @property
    def dynamo_plugin(self) -> TorchDynamoPlugin | None:
        """The ``torch.compile`` settings (None: eager)."""
        return self.plan.dynamo

    # -- settings and topology ------------------------------------------------------------

    @property
    def distributed_type(self) -> DistributedType:
        return self.strategy.distributed_type

    @property
    def mixed_precision(self) -> str:
        return self.config.mixed_precision

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.gradient_state.num_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int) -> None:
        from surge.config._validate import check_int

        self.gradient_state.num_steps = check_int("gradient_accumulation_steps", value, minimum=1)

    @property
    def split_batches(self) -> bool:
        return self.config.split_batches

    @property
    def even_batches(self) -> bool:
        return self.config.even_batches

    @property
    def device_placement(self) -> bool:
        return self.config.device_placement

    @property
    def project_dir(self) -> str | None:
        return self.project_configuration.project_dir

    @property
    def logging_dir(self) -> str | None:
        return self.project_configuration.logging_dir

    @property
    def sync_gradients(self) -> bool:
        """True on a micro-step where gradients are synchronised and the optimizer steps."""
        return self.gradient_state.sync_gradients

    @property
    def nonfinite_steps_skipped(self) -> int:
        """Optimizer steps skipped by ``nonfinite="skip"`` so far."""
        return self._guard.skipped if self._guard is not None else 0

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """True when the last boundary step was skipped (fp16 overflow)."""
        return any(opt.step_was_skipped for opt in self._optimizers)

    # -- prepare --------------------------------------------------------------------------

    def prepare(self, *args: Any, device_placement: list[bool] | None = None) -> Any:
        """Wrap each object for this topology and return them in the same order.

        Models, optimizers, LR schedulers and DataLoaders are prepared; anything else
        is returned unchanged (so passing e.g. a tokenizer along is harmless). Models
        are prepared before optimizers, and optimizers before schedulers, whatever the
        argument order. All processes must call ``prepare`` (it may communicate).

        Returns:
            The prepared object for one argument, else a tuple.
        """
        if device_placement is None:
            placement: list[bool | None] = [None] * len(args)
        else:
            if not isinstance(device_placement, (list, tuple)) or len(device_placement) != len(args):
                raise ValueError(
                    f"device_placement={device_placement!r} must be a list with one bool per object passed "
                    f"to prepare ({len(args)})."
                )
            placement = list(device_placement)
        from surge.deepspeed.dummy import swap_config_objects

        args, finish = swap_config_objects(self, args)  # DummyOptim / DummyScheduler: the DeepSpeed config's
        if not self._models and any(isinstance(a, nn.Module) for a in args):
            from surge.strategies import auto

            if self.plan.auto_strategy:
                auto.choose_for(self, args)  # strategy "auto": chosen from the first model prepared
            elif self.gradient_state.advice is not None:  # on or off on every process alike
                heavy = auto.heavier_than_needed(self, args)  # (a collective when the memory is measured)
                if heavy is not None and self.is_main_process:
                    emit("heavy", heavy)
        result = list(args)
        for kinds in ((nn.Module, DataLoader), (torch.optim.Optimizer,), _LR_SCHEDULER_TYPES):
            for i, obj in enumerate(args):
                if isinstance(obj, kinds):
                    result[i] = self._prepare_one(obj, placement[i])
        finish(result)
        return result[0] if len(result) == 1 else tuple(result)

    def _prepare_one(self, obj: Any, device_placement: bool | None) -> Any:
        if isinstance(obj, (AcceleratedOptimizer, PreparedDataLoader)) or obj in self._models:
            return obj
        if isinstance(obj, nn.Module):
            return self.prepare_model(obj, device_placement=device_placement)
        if isinstance(obj, DataLoader):
            return self.prepare_data_loader(obj, device_placement=device_placement)
        if isinstance(obj, torch.optim.Optimizer):
            return self.prepare_optimizer(obj, device_placement=device_placement)
        return self.prepare_scheduler(obj)

    def prepare_model(
        self, model: nn.Module, device_placement: bool | None = None, evaluation_mode: bool = False
    ) -> nn.Module:
        """Place and wrap one model (DDP when there are several processes).

        ``evaluation_mode=True`` places the model without a training wrapper.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"prepare_model expects a torch.nn.Module; got {type(model).__name__}.")
        place = self.config.device_placement if device_placement is None else device_placement
        if self.plan.auto_strategy and not self._models:
            from surge.strategies.auto import choose_for

            choose_for(self, [model])
        pc = self.plan.parallelism
        if pc is not None and pc.sp_enabled:
            from surge.parallel import wiring

            wiring.prepare_model(model, pc)  # attention under Ulysses (the loader cuts the sequences)
        if pc is not None and pc.cp_enabled:
            from surge.parallel import context

            context.prepare_model(model)  # causal attention without masks (ring attention in maybe_context_parallel)
        prepared = self.strategy.prepare_model(model, device_placement=place, evaluation_mode=evaluation_mode)
        self._models.append(prepared)  # checkpoints see the module without compile's wrapper
        Advice.watch(self.gradient_state, prepared)  # where it is, its first batch ([Note: run-time advice])
        if self.plan.dynamo is not None:
            prepared = self.strategy.compile(prepared, self.plan.dynamo.compile_kwargs(),
                                             regional=self.plan.dynamo.use_regional_compilation)
        return prepared

    def prepare_optimizer(
        self, optimizer: torch.optim.Optimizer, device_placement: bool | None = None
    ) -> AcceleratedOptimizer:
        """Wrap an optimizer so it steps only at accumulation boundaries."""
        if isinstance(optimizer, AcceleratedOptimizer):
            return optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"prepare_optimizer expects a torch.optim.Optimizer; got {type(optimizer).__name__}.")
        place = self.config.device_placement if device_placement is None else device_placement
        inner = self.strategy.prepare_optimizer(optimizer)
        wrapped = AcceleratedOptimizer(
            inner, self.gradient_state, self.precision, device=self.device if place else None,
            max_grad_norm=self.plan.max_grad_norm, clip=self.strategy.clip_grad_norm_, guard=self._guard,
            zero_fill_grads=self.plan.strategy.zero_fills_grads,
        )
        wrapped.original = optimizer  # schedulers built on the user's optimizer find it by this
        self._optimizers.append(wrapped)
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        """Wrap an LR scheduler so it follows [Note: the scheduler rule] in optim.py."""
        if isinstance(scheduler, AcceleratedScheduler):
            return scheduler
        if not hasattr(scheduler, "step"):
            raise TypeError(f"prepare_scheduler expects an LR scheduler; got {type(scheduler).__name__}.")
        target = getattr(scheduler, "optimizer", None)
        optimizers = [o for o in self._optimizers if target in (o, o.optimizer, o.original)] or list(self._optimizers)
        if len(optimizers) == 1 and target is optimizers[0].original and target is not optimizers[0].optimizer \
                and target.param_groups is not optimizers[0].optimizer.param_groups:
            # The strategy replaced the optimizer by one with its own groups (ZeRO-1): the
            # schedule must drive the one that steps. (An offloaded optimizer shares the
            # user's groups, so the schedule reaches it as it is.)
            scheduler.optimizer = optimizers[0].optimizer
            rebound = True
        else:
            rebound = False
        once = self.config.scheduler_steps == "once" or self.config.split_batches
        # Accelerate's rule: one step per process that reads its own batches. Under a mesh the
        # tensor / sequence parallel ranks share theirs, so only the data-parallel ones count.
        pc = self.plan.parallelism
        readers = pc.data_parallel_size if pc is not None else self.num_processes
        wrapped = AcceleratedScheduler(
            scheduler, optimizers, self.gradient_state, step_with_optimizer=self.config.step_scheduler_with_optimizer,
            steps_per_optimizer_step=1 if once else readers, stop_at_total_steps=not once,
        )
        wrapped.rebound = rebound
        self._schedulers.append(wrapped)
        return wrapped

    def _fill_deepspeed_batch_sizes(self, loader: DataLoader[Any]) -> None:
        """A DeepSpeed config's "auto" batch sizes come from the first prepared loader;
        given ones are checked against it (see :func:`surge.config.resolve.fill_batch_sizes`)."""
        ds = self.plan.deepspeed
        if ds is None or loader.batch_size is None or self.deepspeed_batch_sizes is not None:
            return
        self.deepspeed_batch_sizes, note = fill_batch_sizes(
            ds, loader.batch_size, split_batches=self.config.split_batches,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            world_size=self.plan.parallelism.data_parallel_size if self.plan.parallelism else self.num_processes)
        if note is not None:
            pywarnings.warn(note, stacklevel=3)

    # -- the training step ----------------------------------------------------------------

    def backward(self, loss: torch.Tensor, num_items_in_batch: Any = None, **kwargs: Any) -> None:
        """Backpropagate ``loss`` so that accumulated gradients equal one large batch's.

        By default the loss is a mean over this micro-batch and is divided by the number
        of micro-batches in the accumulation cycle (``gradient_accumulation_steps``, or
        fewer for a last cycle cut short by the end of the data: the gradients already
        accumulated in such a cycle are rescaled, so its average is still exact).

        ``num_items_in_batch``: pass it when ``loss`` is a *sum* over the items (e.g.
        tokens) of this micro-batch and micro-batches hold different numbers of items.
        It is the item count of the whole accumulated *global* batch (all micro-batches
        of the cycle on all processes, e.g. ``accelerator.reduce(local_count, "sum")``);
        the gradient is then exactly that of the mean over all those items. See
        docs/guide.md, "Exact means over uneven micro-batches".

        fp16 scales the loss before backward (see precision/fp16.py).

        ``scale_wrt_gas=False`` (what Accelerate passes on to DeepSpeed's engine, and what
        transformers' Trainer sends under DeepSpeed) leaves the loss undivided by the
        accumulation steps.
        """
        average = kwargs.pop("scale_wrt_gas", True) is not False
        self._backward(loss, average=average, num_items_in_batch=num_items_in_batch, **kwargs)

    def _backward(self, loss: torch.Tensor, *, average: bool, num_items_in_batch: Any = None, **kwargs: Any) -> None:
        """:meth:`backward`'s work; ``average=False`` leaves the loss undivided by the
        accumulation steps (DeepSpeed's ``engine.backward(scale_wrt_gas=False)``). The
        non-finite guard sees the loss either way."""
        gs = self.gradient_state
        if gs.advice is not None:
            gs.advice.backwards += 1
        if self._guard is not None:
            self._guard.observe_loss(loss)
        if num_items_in_batch is not None:
            # Gradients are averaged over processes by the strategy; undo that mean so
            # the result is sum(all items) / num_items_in_batch. (With a mesh, over the
            # processes that see different tokens: tensor-parallel ranks share theirs.)
            pc = self.plan.parallelism
            averaged = pc.data_parallel_size * pc.size("sp") * pc.size("cp") if pc is not None else self.num_processes
            loss = loss * (averaged / num_items_in_batch)
        elif average and gs.num_steps > 1 and self.config.accumulation_divisor == "num_steps":
            loss = loss / gs.num_steps  # Accelerate's numbers (see [Note: the short cycle])
        elif average and gs.num_steps > 1:
            if gs.closes_short_cycle and not gs.rescaled:
                self._rescale_gradients(gs.num_steps / gs.cycle_length)
                gs.rescaled = True
            loss = loss / gs.cycle_length
        self.strategy.backward(loss, **kwargs)

    def _rescale_gradients(self, factor: float) -> None:
        # Only on the last micro-step of a short final cycle: one pass over the gradients
        # of everything prepared (optimizer parameters outside any model included), each
        # parameter once however many models or groups share it.
        seen: set[int] = set()
        params = [p for m in self._models for p in m.parameters()]
        params += [p for opt in self._optimizers for g in opt.param_groups for p in g["params"]]
        with torch.no_grad():
            for p in params:
                if id(p) not in seen and p.grad is not None:
                    seen.add(id(p))
                    p.grad.mul_(factor)

    def accumulate(self, *models: nn.Module) -> AccumulateContext:
        """One micro-step of gradient accumulation, as a ``with`` block.

        Counts the micro-step; unless it completes a cycle (every
        ``gradient_accumulation_steps`` micro-steps, and on a prepared loader's last
        batch), gradients are not synchronised and ``optimizer.step()`` /
        ``zero_grad()`` / ``scheduler.step()`` are no-ops. With no models given, every
        prepared model skips synchronisation.
        """
        return AccumulateContext(self.gradient_state, self.strategy.no_sync, models or self._models)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A block in which backward accumulates gradients locally without syncing them."""
        return self.strategy.no_sync(model)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Bring fp16-scaled gradients back to their true values (no-op otherwise).

        ``clip_grad_norm_`` / ``clip_grad_value_`` call this; call it yourself before
        inspecting gradients by hand.
        """
        targets = [optimizer] if optimizer is not None else self._optimizers
        for opt in targets:
            self.precision.unscale(opt.optimizer if isinstance(opt, AcceleratedOptimizer) else opt)

    def clip_grad_norm_(
        self, parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float, norm_type: float = 2.0
    ) -> torch.Tensor | None:
        """Clip the gradient norm of ``parameters``; returns the total norm before clipping.

        Gradients are unscaled first under fp16. On a micro-step inside an accumulation
        cycle the gradients are partial, so nothing is clipped and None is returned;
        call it where ``accelerator.sync_gradients`` is True (the usual pattern).
        """
        if not self.gradient_state.sync_gradients:
            return None
        self.unscale_gradients()
        return self.strategy.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)

    def clip_grad_value_(self, parameters: Iterable[torch.Tensor] | torch.Tensor, clip_value: float) -> None:
        """Clamp every gradient element to ``[-clip_value, clip_value]`` (after unscaling;
        skipped inside an accumulation cycle, like :meth:`clip_grad_norm_`)."""
        if not self.gradient_state.sync_gradients:
            return
        self.unscale_gradients()
        torch.nn.utils.clip_grad_value_(parameters, clip_value)

    def autocast(self, autocast_handler: Any = None) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision autocast region, for code outside the prepared model
        (e.g. a loss computed from its outputs). A null context in full precision."""
        if autocast_handler is None:
            return self.precision.autocast()
        return select_precision(self.mixed_precision, self.device, autocast_handler, None).autocast()

    @property
    def scaler(self) -> Any:
        """fp16's ``torch.amp.GradScaler``; None for other precisions."""
        return getattr(self.precision, "scaler", None) if self.precision.has_loss_scaler else None

    # -- models and saving ----------------------------------------------------------------

    def get_state_dict(self, model: nn.Module, unwrap: bool = True) -> dict[str, torch.Tensor]:
        """The model's full (unsharded) state dict, keys as in the user's module."""
        if not unwrap:
            return model.state_dict()
        return self.strategy.model_state_dict(model)

    def free_memory(self, *objects: Any) -> tuple[Any, ...]:
        """Forget every prepared object (so they can be garbage-collected); returns
        ``objects`` replaced by None, for ``a, b = accelerator.free_memory(a, b)``."""
        self._models.clear()
        self._optimizers.clear()
        self._schedulers.clear()
        self._dataloaders.clear()
        self.gradient_state.reset()
        return tuple(None for _ in objects)

    clear = free_memory

    def __repr__(self) -> str:
        t = self.topology
        return (f"Accelerator(strategy={self.strategy.name}, num_processes={t.world_size}, process_index={t.rank}, "
                f"device={t.device!r}, mixed_precision={self.mixed_precision!r}, "
                f"gradient_accumulation_steps={self.gradient_accumulation_steps})")
