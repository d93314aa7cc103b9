"""Sharding plugins with HF Accelerate's names: ``DeepSpeedPlugin`` and
``FullyShardedDataParallelPlugin``. Both validate in their constructors.

Both map onto PyTorch's FSDP2 (see SPEC section 3): ZeRO-2 / SHARD_GRAD_OP is
``fully_shard(reshard_after_forward=False)``, ZeRO-3 / FULL_SHARD is
``fully_shard(reshard_after_forward=True)``; ZeRO-0 / NO_SHARD is DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from surge.config._validate import check_bool, check_choice, check_int

OFFLOAD_DEVICES = ("none", "cpu")
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
WRAP_POLICIES = ("TRANSFORMER_AUTO_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")


@dataclass
class DeepSpeedPlugin:
    """ZeRO sharding asked for the DeepSpeed way; runs on FSDP2, no DeepSpeed needed.

    Example:
        >>> Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3, gradient_accumulation_steps=4))
        >>> Accelerator(deepspeed_plugin={"zero_stage": 2, "offload_optimizer": False})
    """

    zero_stage: int = 2
    """0: DDP; 1: optimizer state sharded; 2: + gradients; 3: + parameters."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step; None leaves it to the Accelerator."""
    gradient_clipping: float | None = None
    """Clip the global gradient norm to this at every optimizer step (None: no clipping)."""
    offload_optimizer_device: str = "none"
    """"cpu" keeps fp32 master weights and optimizer state on the CPU and steps there
    (stages 1-3; stage 1 then runs as stage 2)."""
    offload_param_device: str = "none"
    """"cpu" keeps parameter shards on the CPU (stage 3 only)."""
    zero3_save_16bit_model: bool = False
    """Under stage 3, save_model gathers the full model (always true in surge; accepted for compatibility)."""
    hf_ds_config: dict[str, Any] | str | None = None
    """A DeepSpeed JSON config (dict or path). Its ZeRO, offload, precision, clipping,
    accumulation and activation-checkpointing settings take the place of the fields above."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward (set by the DeepSpeed config's section)."""

    def __post_init__(self) -> None:
        self.ds_settings = None
        if self.hf_ds_config is not None:
            from surge.deepspeed.ds_config import parse_deepspeed_config

            ds = parse_deepspeed_config(self.hf_ds_config)
            self.ds_settings = ds
            self.zero_stage = ds.zero_stage
            self.offload_optimizer_device = ds.offload_optimizer_device
            self.offload_param_device = ds.offload_param_device
            if ds.gradient_clipping is not None:
                self.gradient_clipping = ds.gradient_clipping
            if ds.gradient_accumulation_steps is not None:
                self.gradient_accumulation_steps = ds.gradient_accumulation_steps
            self.activation_checkpointing = self.activation_checkpointing or ds.activation_checkpointing
        check_int("DeepSpeedPlugin.zero_stage", self.zero_stage, minimum=0, maximum=3)
        if self.gradient_accumulation_steps is not None:
            check_int("DeepSpeedPlugin.gradient_accumulation_steps", self.gradient_accumulation_steps, minimum=1)
        clip = self.gradient_clipping
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ValueError(f"DeepSpeedPlugin.gradient_clipping={clip!r} must be a positive number.")
        self.offload_optimizer_device = check_choice(
            "DeepSpeedPlugin.offload_optimizer_device", self.offload_optimizer_device, OFFLOAD_DEVICES)
        self.offload_param_device = check_choice(
            "DeepSpeedPlugin.offload_param_device", self.offload_param_device, OFFLOAD_DEVICES)
        check_bool("DeepSpeedPlugin.zero3_save_16bit_model", self.zero3_save_16bit_model)
        check_bool("DeepSpeedPlugin.activation_checkpointing", self.activation_checkpointing)
        if self.offload_param_device != "none" and self.zero_stage != 3:
            raise ValueError(
                f"DeepSpeedPlugin(offload_param_device={self.offload_param_device!r}) needs zero_stage=3 (got "
                f"{self.zero_stage}): only sharded parameters can be offloaded. Use zero_stage=3 or drop the offload."
            )
        if self.offload_optimizer_device != "none" and self.zero_stage == 0:
            raise ValueError("DeepSpeedPlugin(offload_optimizer_device='cpu') needs zero_stage 1, 2 or 3.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DeepSpeedPlugin:
        """Build from a dict of this class's field names, or the short form
        ``{"zero_stage": 2, "offload_optimizer": False, "offload_param": False,
        "gradient_accumulation_steps": 4}``.

        Raises:
            ValueError: unknown keys (named, with the allowed ones).
        """
        values = dict(values)
        for short in ("offload_optimizer", "offload_param"):
            if short in values:
                flag = values.pop(short)
                if not isinstance(flag, (bool, str)):
                    raise TypeError(f"DeepSpeedPlugin {short}={flag!r} must be true/false or a device ('cpu').")
                values[f"{short}_device"] = ("cpu" if flag else "none") if isinstance(flag, bool) else flag
        allowed = set(cls.__dataclass_fields__)
        if "zero_optimization" in values or "train_micro_batch_size_per_gpu" in values or "fp16" in values \
                or "bf16" in values or "train_batch_size" in values:
            return cls(hf_ds_config=values)  # a whole DeepSpeed config
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(
                f"DeepSpeedPlugin got unknown key(s) {', '.join(map(repr, unknown))}; allowed are "
                f"{', '.join(sorted(allowed | {'offload_optimizer', 'offload_param'}))}. A full DeepSpeed JSON config "
                "belongs in hf_ds_config / surge.initialize(config=...)."
            )
        return cls(**values)


@dataclass
class FullyShardedDataParallelPlugin:
    """FSDP asked for the Accelerate way; runs on FSDP2 ``fully_shard``.

    Example:
        >>> Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(sharding_strategy="FULL_SHARD"))
    """

    sharding_strategy: str = "FULL_SHARD"
    """FULL_SHARD (ZeRO-3), SHARD_GRAD_OP (ZeRO-2), NO_SHARD (DDP) or HYBRID_SHARD (ZeRO-3
    within each machine, replicated across machines)."""
    auto_wrap_policy: str = "TRANSFORMER_AUTO_WRAP"
    """How blocks are found: TRANSFORMER_AUTO_WRAP (layer classes), SIZE_BASED_WRAP or NO_WRAP (root only)."""
    transformer_layer_cls_to_wrap: list[str] | None = None
    """Class names of the blocks to shard one by one; None finds them (transformers'
    ``_no_split_modules``, or the repeated blocks of a ModuleList)."""
    min_num_params: int = 100_000_000
    """SIZE_BASED_WRAP: shard any submodule with at least this many parameters on its own."""
    cpu_offload: bool = False
    """Keep parameter shards on the CPU (FSDP2 CPUOffloadPolicy)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward instead of storing them."""
    state_dict_type: str = "FULL_STATE_DICT"
    """FULL_STATE_DICT or SHARDED_STATE_DICT (for checkpoints)."""

    def __post_init__(self) -> None:
        self.sharding_strategy = check_choice("FullyShardedDataParallelPlugin.sharding_strategy",
                                              self.sharding_strategy, SHARDING_STRATEGIES)
        self.auto_wrap_policy = check_choice("FullyShardedDataParallelPlugin.auto_wrap_policy",
                                             self.auto_wrap_policy, WRAP_POLICIES)
        if self.transformer_layer_cls_to_wrap is not None:
            names = self.transformer_layer_cls_to_wrap
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",") if n.strip()]
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise TypeError("FullyShardedDataParallelPlugin.transformer_layer_cls_to_wrap must be a list of "
                                f"class names; got {self.transformer_layer_cls_to_wrap!r}.")
            self.transformer_layer_cls_to_wrap = list(names)
        check_int("FullyShardedDataParallelPlugin.min_num_params", self.min_num_params, minimum=1)
        check_bool("FullyShardedDataParallelPlugin.cpu_offload", self.cpu_offload)
        if self.cpu_offload and self.sharding_strategy == "NO_SHARD":
            raise ValueError("FullyShardedDataParallelPlugin(sharding_strategy='NO_SHARD', cpu_offload=True): only "
                             "sharded parameters can be offloaded. Use FULL_SHARD or SHARD_GRAD_OP with cpu_offload.")
        check_bool("FullyShardedDataParallelPlugin.activation_checkpointing", self.activation_checkpointing)
        self.state_dict_type = check_choice("FullyShardedDataParallelPlugin.state_dict_type", self.state_dict_type,
                                            ("FULL_STATE_DICT", "SHARDED_STATE_DICT"))


def plugins_from_config(values: dict[str, Any]) -> tuple[DeepSpeedPlugin | None, FullyShardedDataParallelPlugin | None]:
    """The plugins a config file's sharding keys ask for (see config/file.py)."""
    if values.get("fsdp_sharding_strategy"):
        return None, FullyShardedDataParallelPlugin(
            sharding_strategy=values["fsdp_sharding_strategy"], cpu_offload=bool(values.get("fsdp_cpu_offload", False))
        )
    if values.get("deepspeed_config_file"):
        return DeepSpeedPlugin(hf_ds_config=values["deepspeed_config_file"]), None
    stage = values.get("zero_stage", 0)
    if stage or values.get("offload_optimizer_device", "none") != "none":
        return DeepSpeedPlugin(
            zero_stage=stage,
            offload_optimizer_device=values.get("offload_optimizer_device", "none"),
            offload_param_device=values.get("offload_param_device", "none"),
        ), None
    return None, None


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TorchDynamoPlugin:
    """``torch.compile`` settings for the prepared models (Accelerate's names).

    ``Accelerator(dynamo_backend="inductor")`` is the short form; this plugin adds
    ``mode``, ``fullgraph`` and ``dynamic``. The backend is checked against
    ``torch._dynamo.list_backends()`` when the Accelerator is built.
    """

    backend: str = "inductor"
    """A torch.compile backend: inductor (default), eager, aot_eager, cudagraphs, ..."""
    mode: str | None = None
    """None/default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs."""
    fullgraph: bool = False
    """Fail instead of splitting the graph where dynamo cannot trace."""
    dynamic: bool | None = None
    """Shapes: None lets dynamo decide, True assumes dynamic, False specialises."""

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend.strip():
            raise TypeError(f"TorchDynamoPlugin.backend={self.backend!r} must be a backend name such as 'inductor'.")
        self.backend = self.backend.strip().lower()
        if self.mode is not None:
            self.mode = check_choice("TorchDynamoPlugin.mode", self.mode, COMPILE_MODES)
        check_bool("TorchDynamoPlugin.fullgraph", self.fullgraph)
        if self.dynamic is not None:
            check_bool("TorchDynamoPlugin.dynamic", self.dynamic)

    def compile_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.mode is not None:
            kwargs["mode"] = self.mode
        return kwargs
