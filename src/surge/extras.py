"""The Accelerator's other HF Accelerate methods, mixed into :class:`surge.Accelerator`:
``state``, ``set_trigger`` / ``check_trigger``, ``join_uneven_inputs``,
``trigger_sync_in_backward``, ``reduce``, ``unwrap_model``, ``profile``, and the small
queries (``fp8_backend``, ``is_fsdp2``, ``save_iteration``, ``should_save_model``,
``pipeline_parallel_rank``, ``verify_device_map``, ``lomo_backward``)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from surge import ops
from surge.state import AcceleratorState, ProcessQueries
from surge.topology import DistributedType

if TYPE_CHECKING:
    from surge.config.accelerator_config import AcceleratorConfig
    from surge.config.enums import FP8BackendType
    from surge.config.kwargs import ProfileKwargs
    from surge.config.parallelism import ParallelismConfig
    from surge.config.project import ProjectConfiguration
    from surge.config.resolve import Plan
    from surge.data.loader import PreparedDataLoader
    from surge.optim import AcceleratedOptimizer
    from surge.strategies.base import Strategy


def keep_compiled(model: nn.Module, inner: nn.Module) -> nn.Module:
    """``inner`` (``model`` unwrapped) compiled as ``model`` is, if ``model`` is a compiled
    module: ``model`` itself when it compiles ``inner`` directly, else a new compiled module
    with ``model``'s compile settings (``model`` is not changed). Otherwise ``inner``."""
    if not (hasattr(model, "dynamo_ctx") and isinstance(getattr(model, "_orig_mod", None), nn.Module)):
        return inner
    if model._orig_mod is inner:
        return model
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule(inner, model.dynamo_ctx)  # type: ignore[arg-type]  # an OptimizedModule's own


class ExtrasMixin(ProcessQueries):
    """Needs ``strategy``, ``config``, ``project_configuration``, ``_dataloaders``,
    ``_optimizers``, ``plan``, ``distributed_type`` and ``mixed_precision`` (set by the Accelerator)."""

    strategy: Strategy
    config: AcceleratorConfig
    plan: Plan
    project_configuration: ProjectConfiguration
    _dataloaders: list[PreparedDataLoader]
    _optimizers: list[AcceleratedOptimizer]
    flag_tensor: torch.Tensor | None = None
    """This process's trigger (:meth:`set_trigger`); None until one is set or checked."""

    if TYPE_CHECKING:
        @property
        def distributed_type(self) -> DistributedType: ...

        def prepare_data_loader(self, data_loader: Any, device_placement: bool | None = None) -> Any: ...

        @property
        def mixed_precision(self) -> str: ...

    @property
    def state(self) -> AcceleratorState:
        """HF Accelerate's ``AcceleratorState`` for this Accelerator (distributed_type,
        num_processes, process_index, device, mixed_precision, the plugins, ...)."""
        return AcceleratorState(_from_accelerator=self)

    @property
    def multi_device(self) -> bool:
        """True with several processes each holding a full replica (DDP), as Accelerate's
        ``multi_device`` (which counts GPUs only; surge counts CPU processes too)."""
        return self.use_distributed and self.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)

    @property
    def is_fsdp2(self) -> bool:
        """True under FSDP: surge's FSDP is FSDP2 (``fully_shard``)."""
        return self.distributed_type == DistributedType.FSDP

    @property
    def fp8_backend(self) -> FP8BackendType:
        """The fp8 library: ``FP8BackendType.AO`` (torchao) with ``mixed_precision="fp8"``,
        else ``FP8BackendType.NO``."""
        from surge.config.enums import FP8BackendType

        return FP8BackendType.AO if self.mixed_precision == "fp8" else FP8BackendType.NO

    @property
    def save_iteration(self) -> int:
        """The number of the next automatically named checkpoint (``ProjectConfiguration.iteration``)."""
        return self.project_configuration.iteration

    @property
    def should_save_model(self) -> bool:
        """Whether this process writes model files in Accelerate's scheme: each machine's
        local main process (Accelerate's answer without N-D parallelism)."""
        return self.is_local_main_process

    # -- N-D parallelism (Accelerate's names; see config/parallelism.py) --------------------

    @property
    def parallelism_config(self) -> ParallelismConfig | None:
        """The :class:`~surge.ParallelismConfig` this Accelerator runs with (given, or from
        the config file / launcher); None without one."""
        return self.plan.parallelism

    @property
    def torch_device_mesh(self) -> Any:
        """The ``DeviceMesh`` the ``parallelism_config`` built (dims named "dp_replicate",
        "dp_shard", "cp", "sp", "tp" and flattened "dp", "dp_shard_cp", "dp_cp"); None
        without a parallelism config or on one process."""
        pc = self.plan.parallelism
        return pc.device_mesh if pc is not None else None

    @property
    def is_composable_parallelism_enabled(self) -> bool:
        """True under FSDP (FSDP2, the strategy N-D parallelism composes with), as Accelerate."""
        return self.is_fsdp2

    def _mesh_rank(self, dim: str, what: str) -> int:
        pc = self.plan.parallelism
        if pc is None:
            raise RuntimeError(f"{what} is not configured. Pass Accelerator(parallelism_config=ParallelismConfig(...)) "
                               "first.")
        if pc.size(dim) == 1 or pc.device_mesh is None:
            return 0
        return int(pc.device_mesh.get_local_rank(dim))

    @property
    def data_parallel_rank(self) -> int:
        """This process's index along "dp_replicate" (0 when that size is 1).

        Raises:
            RuntimeError: no ``parallelism_config``, as in Accelerate.
        """
        return self._mesh_rank("dp_replicate", "Data parallelism")

    @property
    def data_parallel_shard_rank(self) -> int:
        """This process's index along "dp_shard" (0 when that size is 1).

        Raises:
            RuntimeError: no ``parallelism_config``.
        """
        return self._mesh_rank("dp_shard", "Shard-based data parallelism")

    @property
    def tensor_parallel_rank(self) -> int:
        """This process's index along "tp" (0 when ``tp_size`` is 1).

        Raises:
            RuntimeError: no ``parallelism_config``.
        """
        return self._mesh_rank("tp", "Tensor parallelism")

    @property
    def context_parallel_rank(self) -> int:
        """This process's index along "cp" (0 when ``cp_size`` is 1; Accelerate 1.15 raises
        NotImplementedError here).

        Raises:
            RuntimeError: no ``parallelism_config``.
        """
        return self._mesh_rank("cp", "Context parallelism")

    @property
    def pipeline_parallel_rank(self) -> int:
        """0: surge has no pipeline parallelism, so every process is in the one stage.
        (Accelerate 1.15 raises NotImplementedError here.)"""
        return 0

    @property
    def sequence_parallel_rank(self) -> int:
        """This process's index along "sp", the part of each sequence it holds (0 when
        ``sp_size`` is 1; surge's addition).

        Raises:
            RuntimeError: no ``parallelism_config``.
        """
        return self._mesh_rank("sp", "Sequence parallelism")

    @contextlib.contextmanager
    def maybe_context_parallel(self, buffers: list[torch.Tensor] | None = None,
                               buffer_seq_dims: list[int] | None = None,
                               no_restore_buffers: set[torch.Tensor] | None = None) -> Iterator[None]:
        """Accelerate's context-parallel region: with ``cp_size > 1``, ``buffers`` are split
        along ``buffer_seq_dims`` over the cp group (in place, restored at exit except
        ``no_restore_buffers``) and attention runs as torch's ring attention, on CUDA and on
        CPU (see surge/parallel/context.py). Enter it anew for every step; every rank of the
        cp group enters with the same shapes. Without cp, as in Accelerate, it has no effect.

        Raises:
            ValueError: under cp, no buffers, a dim per buffer missing, or a sequence length
                that does not split over ``cp_size``.
        """
        pc = self.plan.parallelism
        if pc is None or not pc.cp_enabled:
            yield
            return
        from surge.parallel.context import region

        with region(pc, buffers, buffer_seq_dims, no_restore_buffers):
            yield

    def deepspeed_ulysses_dl_adapter(self, dl: Any, model: nn.Module | None = None) -> Any:
        """Accelerate's hook for a DataLoader prepared apart from the model under Ulysses
        (transformers' Trainer calls it): surge's prepared loaders already hand each rank
        its part of the sequences, so a prepared loader comes back as it is and a plain one
        is prepared. Without ``sp_size > 1`` the loader comes back unchanged."""
        pc = self.plan.parallelism
        if pc is None or not pc.sp_enabled:
            return dl
        from surge.data.loader import PreparedDataLoader

        return dl if isinstance(dl, PreparedDataLoader) else self.prepare_data_loader(dl)

    @staticmethod
    def verify_device_map(model: nn.Module) -> bool:
        """True when ``model`` was dispatched over several devices by big-model inference
        (a module whose ``hf_device_map`` has more than one entry), which training cannot
        prepare."""
        return any(len(getattr(m, "hf_device_map", {})) > 1 for m in model.modules())

    def lomo_backward(self, loss: torch.Tensor, learning_rate: float) -> None:
        """Backward and update in one pass for the prepared LOMO / AdaLomo optimizers
        (the ``lomo-optim`` package): their ``fused_backward(loss, learning_rate)``.

        Raises:
            ValueError: ``learning_rate`` is None, or no prepared optimizer is a LOMO one.
            ImportError: lomo-optim is not installed (Accelerate stops with a NameError).
        """
        from surge.utils.imports import is_lomo_available

        if learning_rate is None:
            raise ValueError("lomo_backward(loss, learning_rate) needs the learning rate of the LOMO optimizer.")
        if not is_lomo_available() and self._optimizers:
            raise ImportError("lomo_backward runs LOMO optimizers, from the lomo-optim package, which is not "
                              "installed: pip install lomo-optim")
        called = False
        if self._optimizers:
            import importlib

            lomo = importlib.import_module("lomo_optim")
            for optimizer in self._optimizers:
                if isinstance(optimizer.optimizer, (lomo.Lomo, lomo.AdaLomo)):
                    optimizer.optimizer.fused_backward(loss, learning_rate)
                    called = True
        if not called:
            raise ValueError("lomo_backward found no LOMO optimizer: prepare a lomo_optim.Lomo or AdaLomo with "
                             "accelerator.prepare(), or call accelerator.backward(loss) for other optimizers.")

    # -- triggers -----------------------------------------------------------------------------

    def set_trigger(self) -> None:
        """Raise this process's flag; the next :meth:`check_trigger` on every process sees it
        (e.g. to stop all processes when one sees a NaN loss). No communication here."""
        self.flag_tensor = torch.tensor(1, device=self.device)

    def check_trigger(self) -> bool:
        """True on every process if any process called :meth:`set_trigger` since its last
        check (the flags are then lowered). A collective: every process must call it."""
        if self.flag_tensor is None:
            self.flag_tensor = torch.tensor(0, device=self.device)
        if int(ops.reduce(self.flag_tensor, "sum").item()) >= 1:
            self.flag_tensor = torch.tensor(0, device=self.device)
            return True
        return False

    # -- collectives and uneven inputs --------------------------------------------------------

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        """Reduce tensors across processes: "sum" (default), "mean", "max", "min", or "none"
        (the local value); times ``scale`` (see :func:`surge.ops.reduce`)."""
        return ops.reduce(tensor, reduction, scale)  # type: ignore[arg-type]  # checked there

    @contextlib.contextmanager
    def join_uneven_inputs(self, joinables: Sequence[Any], even_batches: bool | None = None) -> Iterator[None]:
        """Train or evaluate on inputs of different lengths per process: torch's ``Join``
        shadows the collectives of processes that ran out of batches.

        ``even_batches`` overrides the Accelerator's for the prepared map-style loaders inside
        the block (False lets processes get different batch counts; iterable loaders keep
        theirs, with a warning). Join is on when batches are uneven. Runs with DDP (GPU or
        CPU processes); elsewhere it warns and does nothing.

        Example:
            >>> with accelerator.join_uneven_inputs([model], even_batches=False):
            ...     for batch in loader: ...
        """
        from torch.distributed.algorithms.join import Join

        if not self.multi_device:
            if self.distributed_type != DistributedType.NO:
                warnings.warn("join_uneven_inputs works with DDP (several processes, each with the whole model); it "
                              f"has no effect under {self.distributed_type.value}.", stacklevel=3)
            yield
            return
        changed: list[tuple[Any, bool]] = []
        if even_batches is not None:
            iterable_seen = False
            for loader in self._dataloaders:
                sampler: Any = loader.batch_sampler
                if not hasattr(sampler, "even_batches"):
                    iterable_seen = True
                    continue
                changed.append((sampler, sampler.even_batches))
                sampler.even_batches = even_batches
            if iterable_seen:
                warnings.warn("join_uneven_inputs(even_batches=...) changes map-style loaders only; iterable ones keep "
                              "their even_batches.", stacklevel=3)
        else:
            even_batches = self.config.even_batches
        try:
            with Join(list(joinables), enable=not even_batches, throw_on_early_termination=False):
                yield
        finally:
            for sampler, value in changed:
                sampler.even_batches = value

    @staticmethod
    @contextlib.contextmanager
    def trigger_sync_in_backward(model: nn.Module) -> Iterator[None]:
        """Synchronise gradients in the next backward of ``model`` even inside ``no_sync``
        (after several forwards under ``no_sync``). Does nothing for a model that is not
        DistributedDataParallel."""
        from torch.nn.parallel import DistributedDataParallel

        model = getattr(model, "_orig_mod", model)  # a compiled DDP model
        if not isinstance(model, DistributedDataParallel):
            yield
            return
        saved = model.require_backward_grad_sync, model.require_forward_param_sync
        model.require_backward_grad_sync = model.require_forward_param_sync = True
        model.reducer.prepare_for_backward([])
        try:
            yield
        finally:
            model.require_backward_grad_sync, model.require_forward_param_sync = saved

    # -- models -------------------------------------------------------------------------------

    def unwrap_model(self, model: nn.Module, keep_fp32_wrapper: bool = True,
                     keep_torch_compile: bool = True) -> nn.Module:
        """The user's own module, without DDP wrappers.

        ``keep_fp32_wrapper=False`` also removes the mixed-precision autocast forward.
        ``keep_torch_compile=True`` (Accelerate's default) returns a compiled model as a
        compiled module (same compile settings) around the unwrapped module; its
        ``state_dict`` keys then start with ``_orig_mod.``. The prepared model is not
        changed (Accelerate re-points it at the bare module). False: the bare module.
        """
        inner = self.strategy.unwrap_model(model, keep_fp32_wrapper=keep_fp32_wrapper)
        return keep_compiled(model, inner) if keep_torch_compile else inner

    # -- profiling ----------------------------------------------------------------------------

    @property
    def profile_handler(self) -> ProfileKwargs | None:
        """The ``ProfileKwargs`` given in ``kwargs_handlers`` (None if none)."""
        return self.config.profile

    @contextlib.contextmanager
    def profile(self, profile_handler: ProfileKwargs | None = None) -> Iterator[Any]:
        """Profile the block with ``torch.profiler`` (``profile_handler``, else the
        Accelerator's ``ProfileKwargs``, else torch's defaults); yields the profiler.

        With ``output_trace_dir`` set, each process writes its Chrome trace there as
        ``profile_<process index>.json`` when the block ends (written aside, then renamed),
        and the processes wait for each other.

        Example:
            >>> with accelerator.profile() as prof:
            ...     train_step()
            >>> print(prof.key_averages().table())
        """
        from surge.config.kwargs import PROFILE_PATTERN_NAME, ProfileKwargs

        handler = profile_handler or self.config.profile or ProfileKwargs()
        if not isinstance(handler, ProfileKwargs):
            raise TypeError(f"profile_handler={handler!r} must be a ProfileKwargs.")
        with handler.build() as profiler:
            yield profiler
        if handler.output_trace_dir is None:
            return
        from surge.checkpoint.atomic import atomic_write

        os.makedirs(handler.output_trace_dir, exist_ok=True)
        path = os.path.join(handler.output_trace_dir, PROFILE_PATTERN_NAME.format(suffix=self.process_index))
        atomic_write(path, profiler.export_chrome_trace)
        self.wait_for_everyone()
