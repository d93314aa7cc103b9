"""transformers' ``Trainer`` on surge: change one import, keep ``deepspeed=`` and ``fsdp=``.

>>> from surge.integrations.transformers import Trainer, TrainingArguments
>>> args = TrainingArguments(output_dir="out", deepspeed="ds_zero3.json")   # or fsdp="full_shard auto_wrap"
>>> Trainer(model=model, args=args, train_dataset=ds).train()

Both classes subclass transformers' own. ``TrainingArguments`` fills a DeepSpeed
config's "auto" values the way transformers does, but never sets up a DeepSpeed run
(DeepSpeed need not be installed): the filled config is kept in ``surge_deepspeed_config``
and checked by surge's parser at construction (a feature surge does not offer fails
there). ``Trainer`` builds :class:`surge.Accelerator` with surge's ``DeepSpeedPlugin`` /
``FullyShardedDataParallelPlugin`` and takes transformers' plain (DDP) code paths —
``is_deepspeed_enabled`` and ``is_fsdp_enabled`` stay False — while surge shards the model
underneath; what the plain path would get wrong for a sharded model (saving the model,
the optimizer state in ``checkpoint-N``, loading the best model) is overridden here.
See docs/trainer.md.
"""

from __future__ import annotations

import copy
import importlib
import os
from functools import cached_property, partial, partialmethod
from typing import Any, cast

import torch
import transformers
from torch import nn
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

from surge.deepspeed.ds_config import load_json, parse_deepspeed_config

__all__ = ["SurgeDeepSpeedConfig", "Trainer", "TrainingArguments"]

SUPPORTED_TRANSFORMERS = "5.25"
"""The oldest transformers release this module is tested with (pyproject's ``trainer`` extra)."""


def _check_version(version: str) -> None:
    from packaging.version import Version

    if Version(version) < Version(SUPPORTED_TRANSFORMERS) or Version(version).major >= 6:
        raise ImportError(f"surge.integrations.transformers needs transformers>={SUPPORTED_TRANSFORMERS},<6 (it "
                          f"overrides Trainer internals); transformers {version} is installed. Install "
                          "surge[trainer], or use surge.Accelerator in your own loop.")


_check_version(transformers.__version__)

OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SHARDED_OPTIMIZER_DIR = "optimizer_sharded"


def _accelerate_hf_ds_config() -> type[Any]:
    # Accelerate's (pure Python; transformers' Trainer needs Accelerate anyway).
    return cast(type[Any], importlib.import_module("accelerate.utils.deepspeed").HfDeepSpeedConfig)


class SurgeDeepSpeedConfig(_accelerate_hf_ds_config()):  # type: ignore[misc]
    """transformers' ``HfTrainerDeepSpeedConfig`` ("auto" filling from the arguments and the
    model) without its DeepSpeed import check and without registering itself as the
    process's DeepSpeed config (which would make ``from_pretrained`` call DeepSpeed)."""

    def __init__(self, config: dict[str, Any] | str | os.PathLike[str]) -> None:
        super().__init__(load_json(config))
        self._dtype: torch.dtype | None = None
        self.mismatches: list[str] = []

    dtype = HfTrainerDeepSpeedConfig.dtype
    is_auto = HfTrainerDeepSpeedConfig.is_auto
    fill_match = HfTrainerDeepSpeedConfig.fill_match
    fill_only = partialmethod(HfTrainerDeepSpeedConfig.fill_match, must_match=False)
    trainer_config_process = HfTrainerDeepSpeedConfig.trainer_config_process
    trainer_config_finalize = HfTrainerDeepSpeedConfig.trainer_config_finalize


def _for_accelerator(config: dict[str, Any]) -> dict[str, Any]:
    """The config surge's Accelerator gets: Trainer accumulates, clips and builds the
    optimizer and scheduler itself, so those keys stay with the Trainer."""
    out = copy.deepcopy(config)
    out["gradient_accumulation_steps"] = 1
    for key in ("train_batch_size", "gradient_clipping", "optimizer", "scheduler"):
        out.pop(key, None)
    return out


def _check(config: dict[str, Any]) -> None:
    """Refuse, at construction, what surge cannot run (one error naming every such feature)."""
    from surge.config.plugins import DeepSpeedPlugin
    from surge.deepspeed.optimizers import build_optimizer
    from surge.deepspeed.schedulers import SCHEDULERS

    parse_deepspeed_config(config)
    DeepSpeedPlugin(hf_ds_config=_for_accelerator(config))
    optimizer, scheduler = config.get("optimizer"), config.get("scheduler")
    if isinstance(optimizer, dict):
        # Its "auto" values are filled from the arguments by now: build it once on a stand-in parameter.
        build_optimizer(optimizer, [nn.Parameter(torch.zeros(1))])
    if isinstance(scheduler, dict) and scheduler.get("type") not in SCHEDULERS:
        raise ValueError(f"DeepSpeed config scheduler.type={scheduler.get('type')!r} is not supported; choose one of "
                         f"{', '.join(SCHEDULERS)} (or leave the scheduler section out: the Trainer's "
                         "lr_scheduler_type then applies).")


class TrainingArguments(transformers.TrainingArguments):
    """transformers' ``TrainingArguments``; ``deepspeed=`` and ``fsdp=`` go to surge.

    After construction ``surge_deepspeed_config`` holds the DeepSpeed config with the
    arguments' "auto" values filled (None without ``deepspeed=``), ``hf_deepspeed_config``
    the filling object, ``deepspeed_plugin`` stays None (no Accelerate DeepSpeed run) and
    ``fsdp_plugin_args`` holds the arguments of surge's ``FullyShardedDataParallelPlugin``.

    Raises:
        ValueError: a DeepSpeed feature surge does not offer, or a bad config value (named),
            at construction; ``deepspeed=`` together with ``fsdp=``.
    """

    def __post_init__(self) -> None:
        deepspeed = self.deepspeed
        self.deepspeed = None  # transformers would build Accelerate's DeepSpeedPlugin (needs DeepSpeed)
        try:
            super().__post_init__()  # type: ignore[no-untyped-call]
        finally:
            self.deepspeed = deepspeed
        self.surge_deepspeed_config: dict[str, Any] | None = None
        if deepspeed:
            if self.fsdp:
                raise ValueError("TrainingArguments: deepspeed= and fsdp= both given; choose one.")
            filled = SurgeDeepSpeedConfig(deepspeed)
            filled.trainer_config_process(self)  # type: ignore[no-untyped-call]
            if filled.mismatches:  # transformers raises these when training starts; they are known now
                raise ValueError("Please correct the following DeepSpeed config values that mismatch "
                                 "TrainingArguments values:\n" + "\n".join(filled.mismatches) + "\nThe easiest "
                                 "method is to set these DeepSpeed config values to 'auto'.")
            _check(filled.config)
            self.hf_deepspeed_config = filled
            self.surge_deepspeed_config = filled.config

    @cached_property
    def _setup_devices(self) -> torch.device:
        # transformers starts Accelerate's state for DeepSpeed when `deepspeed` is set; surge needs none of it.
        deepspeed, self.deepspeed = self.deepspeed, None
        try:
            return super()._setup_devices
        finally:
            self.deepspeed = deepspeed


def _surge_parallelism(given: Any) -> Any:
    """``TrainingArguments.parallelism_config`` (Accelerate's ``ParallelismConfig``, or
    surge's) as surge's: the same sizes and tp / cp settings.

    Raises:
        ValueError: ``sp_size > 1``: the Trainer's sequence-parallel loss reads DeepSpeed's
            own process groups, which surge does not create.
    """
    from surge import ParallelismConfig
    from surge.utils import TorchContextParallelConfig, TorchTensorParallelConfig

    if given is None or isinstance(given, ParallelismConfig):
        pc = given
    else:
        sizes = {f"{d}_size": getattr(given, f"{d}_size", None) for d in ("dp_replicate", "dp_shard", "tp", "cp", "sp")}
        tp, cp = getattr(given, "tp_handler", None), getattr(given, "cp_handler", None)
        pc = ParallelismConfig(
            **sizes,
            tp_handler=None if tp is None else TorchTensorParallelConfig(
                enable_async_tp=bool(getattr(tp, "enable_async_tp", False))),
            cp_handler=None if cp is None else TorchContextParallelConfig(cp_comm_strategy=cp.cp_comm_strategy))
    if pc is not None and pc.sp_enabled:
        raise ValueError(f"TrainingArguments(parallelism_config=...) with sp_size={pc.sp_size}: the Trainer's "
                         "sequence-parallel loss (deepspeed_sp_compute_loss) reads DeepSpeed's own process groups, "
                         "which surge does not create. Use cp_size (ring attention, which the Trainer drives through "
                         "maybe_context_parallel) or surge's Accelerator loop with sp_size.")
    return pc


def _sharded(accelerator: Any) -> bool:
    """The model is sharded underneath Trainer's plain paths (surge's DistributedType is a str enum)."""
    return accelerator.distributed_type in ("DEEPSPEED", "FSDP")


class Trainer(transformers.Trainer):
    """transformers' ``Trainer`` running on :class:`surge.Accelerator` (see the module doc).

    Takes :class:`TrainingArguments` (surge's); everything else is transformers'.
    """

    args: TrainingArguments

    # ---- the Accelerator ----

    def create_accelerator_and_postprocess(self) -> None:
        from surge import (
            Accelerator,
            DataLoaderConfiguration,
            DeepSpeedPlugin,
            DistributedDataParallelKwargs,
            FullyShardedDataParallelPlugin,
            GradientAccumulationPlugin,
        )

        args: Any = self.args
        if args.deepspeed and getattr(args, "surge_deepspeed_config", None) is None:
            raise TypeError("surge's Trainer got transformers' own TrainingArguments with deepspeed=; use "
                            "surge.integrations.transformers.TrainingArguments (it fills the config for surge).")
        parallelism_config = _surge_parallelism(getattr(args, "parallelism_config", None))
        grad_acc = dict(args.accelerator_config.gradient_accumulation_kwargs or {})
        if "num_steps" in grad_acc:
            if args.gradient_accumulation_steps > 1:
                raise ValueError("The `AcceleratorConfig`'s `num_steps` is set but `gradient_accumulation_steps` is "
                                 "greater than 1 in the passed `TrainingArguments`.")
            args.gradient_accumulation_steps = grad_acc["num_steps"]
        grad_acc["num_steps"] = 1  # the Trainer accumulates itself
        config = args.accelerator_config
        dataloader_config = DataLoaderConfiguration(
            split_batches=config.split_batches, dispatch_batches=config.dispatch_batches,
            even_batches=config.even_batches, use_seedable_sampler=config.use_seedable_sampler,
            data_seed=args.data_seed, non_blocking=config.non_blocking)
        if args.ddp_find_unused_parameters is not None:
            find_unused = args.ddp_find_unused_parameters
        elif isinstance(self.model, transformers.PreTrainedModel):
            find_unused = not (self.model.is_activation_checkpointing or args.activation_checkpointing)
        else:
            find_unused = True
        ddp: dict[str, Any] = {"find_unused_parameters": find_unused}
        for name in ("bucket_cap_mb", "broadcast_buffers", "static_graph"):
            value = getattr(args, f"ddp_{name}")
            if value is not None:
                ddp[name] = value
        deepspeed_plugin = fsdp_plugin = None
        ds_config = getattr(args, "surge_deepspeed_config", None)
        if ds_config is not None:
            deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=_for_accelerator(ds_config))
        elif args.fsdp_plugin_args is not None:
            fsdp_plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
            if fsdp_plugin.activation_checkpointing and args.activation_checkpointing:
                raise ValueError("`fsdp_config['activation_checkpointing']` (FSDP's own activation checkpointing) and "
                                 "the `activation_checkpointing` training argument can't both be set to True.")
        mixed_precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision, cpu=args.use_cpu or None, dataloader_config=dataloader_config,
            gradient_accumulation_plugin=GradientAccumulationPlugin(**grad_acc),
            kwargs_handlers=[DistributedDataParallelKwargs(**ddp)],
            deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin, parallelism_config=parallelism_config)
        self.gather_function = self.accelerator.gather_for_metrics
        if parallelism_config is not None and parallelism_config.cp_enabled:
            # The Trainer evaluates inside maybe_context_parallel and gathers after it: each cp rank's
            # loss, logits and labels are its own part, all kept (Accelerate keeps every process).
            self.gather_function = partial(self.accelerator._gather_for_metrics, every_cp_rank=True)
        # Trainer's plain (DDP) paths: surge shards underneath them.
        self.is_deepspeed_enabled = False
        self.is_fsdp_enabled = False

    # ---- optimizer and scheduler from a DeepSpeed config ----

    def _ds_section(self, name: str) -> dict[str, Any] | None:
        config = getattr(self.args, "surge_deepspeed_config", None)
        section = None if config is None else config.get(name)
        return section if isinstance(section, dict) else None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        section = self._ds_section("optimizer")
        if section is None or self.optimizer is not None:
            return super().create_optimizer(model)
        from surge.deepspeed.optimizers import build_optimizer

        opt_model = cast(nn.Module, self.model if model is None else model)
        decay = self.get_decay_parameter_names(opt_model)
        weight_decay = section.get("params", {}).get("weight_decay", self.args.weight_decay)
        groups = [
            {"params": [p for n, p in opt_model.named_parameters() if n in decay and p.requires_grad],
             "weight_decay": weight_decay},
            {"params": [p for n, p in opt_model.named_parameters() if n not in decay and p.requires_grad],
             "weight_decay": 0.0},
        ]
        self.optimizer = build_optimizer(section, groups)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> torch.optim.lr_scheduler.LRScheduler:
        filled: Any = getattr(self.args, "hf_deepspeed_config", None)
        if isinstance(filled, SurgeDeepSpeedConfig):
            filled.trainer_config_finalize(self.args, self.model, num_training_steps)  # type: ignore[no-untyped-call]
        section = self._ds_section("scheduler")
        if section is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        from surge.deepspeed.schedulers import build_scheduler

        target = cast(torch.optim.Optimizer, self.optimizer if optimizer is None else optimizer)
        scheduler = build_scheduler(section, target)
        self.lr_scheduler = cast(Any, scheduler)
        self._created_lr_scheduler = True
        return scheduler

    # ---- saving and loading a sharded model ----

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _sharded(self.accelerator):
            super().save_model(output_dir, _internal_call)
            return
        output_dir = self.args.output_dir if output_dir is None else output_dir
        state_dict = self.accelerator.get_state_dict(self.model)  # a collective: whole on the main process
        self._save(output_dir, state_dict=state_dict)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not _sharded(self.accelerator):
            super()._save_optimizer_and_scheduler(output_dir)
            return
        from surge.checkpoint.fsdp_files import save_fsdp_optimizer

        inner = _strategy_optimizer(self.optimizer)
        kind = type(inner).__name__
        if kind == "ShardedOptimizer":  # ZeRO-1: state_dict() is a collective, whole on the main process
            state = inner.state_dict()
            if self.args.should_save:
                _torch_save(state, os.path.join(output_dir, OPTIMIZER_NAME))
        elif kind == "OffloadedOptimizer":  # its state is sharded like the parameters: each process writes its own
            os.makedirs(os.path.join(output_dir, SHARDED_OPTIMIZER_DIR), exist_ok=True)
            _torch_save(_local_state(inner.state_dict()), self._rank_file(output_dir))
        else:  # an optimizer over FSDP2's DTensor parameters: gathered, written by the main process
            save_fsdp_optimizer(_FULL, self.accelerator, self.optimizer, self.model_wrapped, output_dir)
            if self.args.should_save:
                os.replace(os.path.join(output_dir, "optimizer.bin"), os.path.join(output_dir, OPTIMIZER_NAME))
        if self.args.should_save:
            torch.save(cast(Any, self.lr_scheduler).state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        self.accelerator.wait_for_everyone()

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not _sharded(self.accelerator):
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        scheduler_file = os.path.join(checkpoint, SCHEDULER_NAME)
        optimizer_file = os.path.join(checkpoint, OPTIMIZER_NAME)
        sharded_dir = os.path.join(checkpoint, SHARDED_OPTIMIZER_DIR)
        if not os.path.isfile(scheduler_file) or not (os.path.isfile(optimizer_file) or os.path.isdir(sharded_dir)):
            return  # as transformers: a checkpoint without them (save_only_model) resumes without them
        inner = _strategy_optimizer(self.optimizer)
        kind = type(inner).__name__
        if kind == "OffloadedOptimizer":
            path = self._rank_file(checkpoint)
            if not os.path.isfile(path):
                raise ValueError(f"{checkpoint!r} holds no optimizer state for process {self.args.process_index} "
                                 f"({path!r}): with optimizer offload a checkpoint resumes on the number of "
                                 "processes that wrote it.")
            inner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            state = torch.load(optimizer_file, map_location="cpu", weights_only=True)
            if kind == "ShardedOptimizer":  # every process takes its partition of the whole state
                inner.load_state_dict(state)
            else:
                module = self.accelerator.unwrap_model(self.model_wrapped)
                set_optimizer_state_dict(module, inner, state, options=StateDictOptions(full_state_dict=True))
        cast(Any, self.lr_scheduler).load_state_dict(torch.load(scheduler_file, weights_only=True))

    def _rank_file(self, directory: str) -> str:
        return os.path.join(directory, SHARDED_OPTIMIZER_DIR,
                            f"rank{self.args.process_index}-of-{self.args.world_size}.pt")

    def _load_best_model(self) -> None:
        if not _sharded(self.accelerator):
            super()._load_best_model()
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        best = self.state.best_model_checkpoint
        if best is None:
            return
        state: dict[str, Any] = dict(_read_weights(best))
        result = set_model_state_dict(self.accelerator.unwrap_model(self.model_wrapped), state,
                                      options=StateDictOptions(full_state_dict=True, strict=False))
        self._issue_warnings_after_load(result)  # missing / unexpected keys, tied weights re-tied


def _strategy_optimizer(optimizer: Any) -> Any:
    """The optimizer surge's strategy made (AdamW over DTensors, ZeRO-1's ShardedOptimizer,
    the optimizer-offload OffloadedOptimizer), below surge's AcceleratedOptimizer."""
    from surge.optim import AcceleratedOptimizer

    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _local_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state dict with each DTensor replaced by this process's shard."""
    def local(value: Any) -> Any:
        return value.to_local() if hasattr(value, "to_local") else value

    return {**state, "state": {k: {n: local(v) for n, v in entry.items()} for k, entry in state["state"].items()}}


def _torch_save(obj: Any, path: str) -> None:
    from surge.checkpoint.atomic import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))  # never half-written (see checkpoint/atomic.py)


class _FullStateDict:
    state_dict_type = "FULL_STATE_DICT"


_FULL = _FullStateDict()


def _read_weights(directory: str) -> dict[str, torch.Tensor]:
    """The full weights ``save_pretrained`` wrote (one safetensors or .bin file, or shards)."""
    import glob

    import safetensors.torch

    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    state: dict[str, torch.Tensor] = {}
    if files:
        for path in files:
            state.update(safetensors.torch.load_file(path))
        return state
    for path in sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin"))):
        state.update(torch.load(path, map_location="cpu", weights_only=True))
    if not state:
        raise ValueError(f"No model weights (*.safetensors / pytorch_model*.bin) in {directory!r}.")
    return state
