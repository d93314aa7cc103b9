"""Sharding plugins with HF Accelerate's names: ``DeepSpeedPlugin`` and
``FullyShardedDataParallelPlugin``. Both validate in their constructors.

Both map onto PyTorch's FSDP2 (see SPEC section 3): ZeRO-2 / SHARD_GRAD_OP is
``fully_shard(reshard_after_forward=False)``, ZeRO-3 / FULL_SHARD is
``fully_shard(reshard_after_forward=True)``; ZeRO-0 / NO_SHARD is DDP.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from surge.config._validate import check_bool, check_choice, check_int

OFFLOAD_DEVICES = ("none", "cpu")


def _auto_or(value: Any) -> Any:
    """Accelerate's plugins take "auto" for "the config / the Accelerator decides"."""
    return None if isinstance(value, str) and value.strip().lower() == "auto" else value


@dataclass
class DeepSpeedPlugin:
    """ZeRO sharding asked for the DeepSpeed way; runs on FSDP2, no DeepSpeed needed.

    The arguments are Accelerate 1.15's, in its order (``hf_ds_config`` first); pass them
    by keyword. What each does here is listed in docs/migrating.md ("FSDP and DeepSpeed
    plugins").

    Example:
        >>> Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3, gradient_accumulation_steps=4))
        >>> Accelerator(deepspeed_plugin={"zero_stage": 2, "offload_optimizer": False})
    """

    hf_ds_config: dict[str, Any] | str | Any = None
    """A DeepSpeed JSON config (dict, path, or an object with a ``config`` dict such as
    transformers' HfDeepSpeedConfig). Its ZeRO, offload, precision, clipping and
    accumulation settings take the place of the fields below; its optimizer and scheduler
    sections are built by ``prepare`` for a ``DummyOptim`` / ``DummyScheduler``; its
    activation_checkpointing section is read by ``surge.checkpointing.configure``."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step; None (or "auto") leaves it to the Accelerator."""
    gradient_clipping: float | None = None
    """Clip the global gradient norm to this at every optimizer step (None / "auto": no clipping)."""
    zero_stage: int | None = None
    """0: DDP; 1: optimizer state sharded; 2: + gradients; 3: + parameters. None: 2."""
    is_train_batch_min: bool = True
    """Accepted; surge fills "auto" batch sizes from the first prepared DataLoader."""
    offload_optimizer_device: str | None = None
    """"cpu" keeps fp32 master weights and optimizer state on the CPU and steps there
    (stages 1-3; stage 1 then runs as stage 2). None: "none". "nvme" is not available."""
    offload_param_device: str | None = None
    """"cpu" keeps parameter shards on the CPU (stage 3 only)."""
    offload_optimizer_nvme_path: str | None = None
    """Accepted; only used with the nvme device, which surge does not have."""
    offload_param_nvme_path: str | None = None
    """Accepted; only used with the nvme device, which surge does not have."""
    zero3_init_flag: bool | None = None
    """DeepSpeed's ``zero.Init``: build big models shard by shard. Here, given as True at
    stage 3: ``prepare`` sends rank 0's weights into every process's shards. None: True at
    stage 3 (as Accelerate) without that sending. Either way a model the other processes
    built on the meta device (``surge.init_empty_weights``) is filled from rank 0's at
    stages 2 and 3. True below stage 3 is turned off, as in Accelerate."""
    zero3_save_16bit_model: bool | None = None
    """Under stage 3, save_model gathers the full model (always true in surge; accepted for compatibility)."""
    transformer_moe_cls_names: str | list[str] | None = None
    """MoE layer classes DeepSpeed gathers whole; surge's units are whole blocks already (accepted)."""
    enable_msamp: bool | None = None
    """MS-AMP fp8: not available (True raises); use ``mixed_precision="fp8"`` (torchao)."""
    msamp_opt_level: str | None = None
    """"O1" or "O2" (only checked: MS-AMP is not available)."""
    activation_checkpointing: bool = False
    """surge's own switch: recompute each block's activations in backward. A DeepSpeed
    config's ``activation_checkpointing`` section does not set it: as in DeepSpeed, that
    section configures ``surge.checkpointing``, which the model calls."""

    def __post_init__(self) -> None:
        if isinstance(self.hf_ds_config, int) and not isinstance(self.hf_ds_config, bool) and self.zero_stage is None:
            # surge's plugin once took zero_stage first; Accelerate's first argument is the config.
            self.zero_stage, self.hf_ds_config = self.hf_ds_config, None
        if self.hf_ds_config is not None and not isinstance(self.hf_ds_config, (dict, str)) \
                and isinstance(getattr(self.hf_ds_config, "config", None), dict):
            self.hf_ds_config = self.hf_ds_config.config  # transformers' / Accelerate's HfDeepSpeedConfig
        if isinstance(self.hf_ds_config, str) and self.hf_ds_config.strip().lower() == "none":
            self.hf_ds_config = None
        if self.hf_ds_config is not None and not isinstance(self.hf_ds_config, (dict, str)) \
                and not hasattr(self.hf_ds_config, "__fspath__"):
            raise TypeError(f"DeepSpeedPlugin.hf_ds_config={self.hf_ds_config!r} must be a DeepSpeed config: a dict or "
                            "the path of a JSON file. (ZeRO's stage is the keyword zero_stage=.)")
        self.gradient_accumulation_steps = _auto_or(self.gradient_accumulation_steps)
        self.gradient_clipping = _auto_or(self.gradient_clipping)
        if self.zero_stage is None:
            self.zero_stage = 2
        self.offload_optimizer_device = self.offload_optimizer_device or "none"
        self.offload_param_device = self.offload_param_device or "none"
        self.ds_settings = None
        self.notes: list[str] = []
        """Remarks the Accelerator reports once, on the main process."""
        if self.hf_ds_config is not None:
            from surge.deepspeed.ds_config import load_json, parse_deepspeed_config

            ds = parse_deepspeed_config(self.hf_ds_config)
            self.ds_settings = ds
            self.deepspeed_config: dict[str, Any] = load_json(self.hf_ds_config)
            self.zero_stage = ds.zero_stage
            self.offload_optimizer_device = ds.offload_optimizer_device
            self.offload_param_device = ds.offload_param_device
            if ds.gradient_clipping is not None:
                self.gradient_clipping = ds.gradient_clipping
            if ds.gradient_accumulation_steps is not None:
                self.gradient_accumulation_steps = ds.gradient_accumulation_steps
            # The config's activation_checkpointing section checkpoints nothing by itself (as in
            # DeepSpeed): surge.checkpointing.configure(deepspeed_config=...) reads it for the
            # model's own surge.checkpointing.checkpoint calls.
        self._validate()
        if self.hf_ds_config is None:
            self.deepspeed_config = self._as_config()

    def _validate(self) -> None:
        check_int("DeepSpeedPlugin.zero_stage", self.zero_stage, minimum=0, maximum=3)
        if self.gradient_accumulation_steps is not None:
            check_int("DeepSpeedPlugin.gradient_accumulation_steps", self.gradient_accumulation_steps, minimum=1)
        clip = self.gradient_clipping
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip >= 0
                                 or clip == float("inf")):
            raise ValueError(f"DeepSpeedPlugin.gradient_clipping={clip!r} must be a number >= 0 (0: no clipping, as "
                             "in DeepSpeed).")
        nvme = " (NVMe offload is DeepSpeed's own; use 'cpu')"
        for field_name in ("offload_optimizer_device", "offload_param_device"):
            value = getattr(self, field_name)
            fix = nvme if isinstance(value, str) and value.lower() == "nvme" else ""
            setattr(self, field_name, check_choice(f"DeepSpeedPlugin.{field_name}", value, OFFLOAD_DEVICES, fix=fix))
        for field_name in ("offload_optimizer_nvme_path", "offload_param_nvme_path", "msamp_opt_level"):
            value = getattr(self, field_name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"DeepSpeedPlugin.{field_name}={value!r} must be a string.")
        check_bool("DeepSpeedPlugin.is_train_batch_min", self.is_train_batch_min)
        self.zero3_save_16bit_model = bool(self.zero3_save_16bit_model)
        check_bool("DeepSpeedPlugin.activation_checkpointing", self.activation_checkpointing)
        # Asked for by name, the flag also sends rank 0's real weights to every process; its
        # default (True at stage 3, as Accelerate's) leaves real weights where they are.
        self.sync_from_rank0 = bool(self.zero3_init_flag) and self.zero_stage == 3
        # Asked for by name, the flag also sends rank 0's real weights to every process; its
        # default (True at stage 3, as Accelerate's) leaves real weights where they are.
        self.sync_from_rank0 = self.zero3_init_flag is True and self.zero_stage == 3
        if self.zero3_init_flag is None:
            self.zero3_init_flag = self.zero_stage == 3
        check_bool("DeepSpeedPlugin.zero3_init_flag", self.zero3_init_flag)
        if self.zero3_init_flag and self.zero_stage != 3:
            self.notes.append(f"DeepSpeedPlugin(zero3_init_flag=True) applies to ZeRO stage 3 only (this is stage "
                              f"{self.zero_stage}); it is off, as in Accelerate.")
            self.zero3_init_flag = False
        if self.transformer_moe_cls_names is not None:
            from surge.config._fsdp_values import class_names

            class_names("DeepSpeedPlugin.transformer_moe_cls_names", self.transformer_moe_cls_names)
        if self.msamp_opt_level is None:
            self.msamp_opt_level = "O1"
        self.msamp_opt_level = check_choice("DeepSpeedPlugin.msamp_opt_level", self.msamp_opt_level, ("O1", "O2"))
        if self.enable_msamp:
            raise ValueError("DeepSpeedPlugin(enable_msamp=True): MS-AMP is not available in surge. Use "
                             "Accelerator(mixed_precision='fp8') (torchao float8 training) and drop enable_msamp.")
        self.enable_msamp = False
        if self.offload_param_device != "none" and self.zero_stage != 3:
            raise ValueError(
                f"DeepSpeedPlugin(offload_param_device={self.offload_param_device!r}) needs zero_stage=3 (got "
                f"{self.zero_stage}): only sharded parameters can be offloaded. Use zero_stage=3 or drop the offload."
            )
        if self.offload_optimizer_device != "none" and self.zero_stage == 0:
            raise ValueError("DeepSpeedPlugin(offload_optimizer_device='cpu') needs zero_stage 1, 2 or 3.")

    def _as_config(self) -> dict[str, Any]:
        """The DeepSpeed config these fields stand for (Accelerate builds the same one)."""
        config: dict[str, Any] = {
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": self.gradient_accumulation_steps or "auto",
            "zero_optimization": {
                "stage": self.zero_stage,
                "offload_optimizer": {"device": self.offload_optimizer_device},
                "offload_param": {"device": self.offload_param_device},
                "stage3_gather_16bit_weights_on_model_save": self.zero3_save_16bit_model,
            },
        }
        if self.gradient_clipping:
            config["gradient_clipping"] = self.gradient_clipping
        return config

    def effective_gradient_clipping(self) -> float | None:
        """The norm the optimizer step clips gradients to, as under Accelerate + DeepSpeed:
        the value given (0 turns clipping off, as in DeepSpeed); unset or "auto" with no
        DeepSpeed config file, or "auto" in the file: 1.0 (Accelerate fills "auto" with
        1.0 at prepare); a file without the key: no clipping."""
        if self.gradient_clipping is not None:
            return float(self.gradient_clipping) if self.gradient_clipping > 0 else None
        if self.hf_ds_config is None:
            return 1.0
        given = self.deepspeed_config.get("gradient_clipping")
        return 1.0 if isinstance(given, str) and given.strip().lower() == "auto" else None

    def is_zero3_init_enabled(self) -> bool:
        """Accelerate's query (transformers' Trainer asks it before building a model)."""
        return bool(self.zero3_init_flag)

    @contextlib.contextmanager
    def zero3_init_context_manager(self, enable: bool = False) -> Iterator[None]:
        """Set ``zero3_init_flag`` to ``enable`` inside the block (Accelerate's helper)."""
        old = self.zero3_init_flag
        self.zero3_init_flag = enable
        try:
            yield
        finally:
            self.zero3_init_flag = old

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DeepSpeedPlugin:
        """Build from a dict of this class's field names, or the short form
        ``{"zero_stage": 2, "offload_optimizer": False, "offload_param": False,
        "gradient_accumulation_steps": 4}``. Unlike ``DeepSpeedPlugin()`` (which clips at
        1.0 unless told otherwise, as Accelerate's), this form clips only when
        ``gradient_clipping`` is given.

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
        values.setdefault("gradient_clipping", 0.0)  # surge's short form: no clipping unless asked
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
    """FSDP asked for the Accelerate way; runs on FSDP2 ``fully_shard`` whatever ``fsdp_version``.

    The arguments are Accelerate 1.15's, in its order (``fsdp_version`` first); pass them
    by keyword. Each takes Accelerate's forms (strings in any case, torch's enum members
    and policy objects); what each does on FSDP2 is listed in docs/migrating.md ("FSDP
    and DeepSpeed plugins"). After construction the values are in one form: strategy and
    state-dict names as upper-case strings, ``cpu_offload`` a bool, ``mixed_precision_policy``
    an FSDP2 ``MixedPrecisionPolicy`` (or None).

    Example:
        >>> Accelerator(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True))
    """

    fsdp_version: int | None = None
    """1 or 2 (None: 1). Both run on FSDP2; the version only chooses Accelerate's defaults
    (``state_dict_type``: FULL_STATE_DICT for 1, SHARDED_STATE_DICT for 2)."""
    sharding_strategy: Any = None
    """FULL_SHARD (ZeRO-3), SHARD_GRAD_OP (ZeRO-2), NO_SHARD (DDP), HYBRID_SHARD (ZeRO-3
    within each machine, replicated across machines) or HYBRID_SHARD_ZERO2; a name, torch's
    ``ShardingStrategy`` or its number. None: FULL_SHARD (or what reshard_after_forward says)."""
    reshard_after_forward: Any = None
    """FSDP2's form of the strategy: True frees gathered parameters after forward
    (FULL_SHARD / HYBRID_SHARD), False keeps them for backward (SHARD_GRAD_OP /
    HYBRID_SHARD_ZERO2). A sharding strategy (Accelerate's FSDP1 form) is also taken."""
    backward_prefetch: Any = None
    """BACKWARD_PRE / BACKWARD_POST / NO_PREFETCH: checked, no effect (FSDP2 always
    prefetches the next block's all-gather in backward)."""
    mixed_precision_policy: Any = None
    """FSDP2's ``MixedPrecisionPolicy``, FSDP1's ``MixedPrecision``, a dict of their
    fields, a dtype or fp8/fp16/bf16/fp32; passed to ``fully_shard`` in place of the one
    ``mixed_precision`` would choose."""
    auto_wrap_policy: Any = None
    """How blocks are found: "transformer_based_wrap" (layer classes; also
    TRANSFORMER_AUTO_WRAP), "size_based_wrap", "no_wrap" (root only), or a callable: an
    FSDP1 policy ``(module, recurse, nonwrapped_numel) -> bool`` (torch's
    ``transformer_auto_wrap_policy`` partials, ``ModuleWrapPolicy``) or ``(module) -> bool``.
    None: transformer_based_wrap (surge finds the blocks; Accelerate's default is no_wrap)."""
    cpu_offload: Any = None
    """Keep parameter shards on the CPU: a bool, torch's ``CPUOffload`` or ``CPUOffloadPolicy``."""
    ignored_modules: Any = None
    """Modules (or a regex full-matching module names) left out of sharding: their
    parameters stay whole on every process and their gradients are not averaged (FSDP2's
    ``ignored_params``)."""
    state_dict_type: Any = None
    """FULL_STATE_DICT or SHARDED_STATE_DICT (a name, torch's ``StateDictType`` or its number):
    the checkpoint layout of save_state and save_fsdp_model. LOCAL_STATE_DICT does not exist
    on FSDP2."""
    state_dict_config: Any = None
    """Accepted; surge's full state dicts are always gathered to the CPU of rank 0."""
    optim_state_dict_config: Any = None
    """Accepted; as ``state_dict_config``."""
    limit_all_gathers: bool = True
    """Accepted; FSDP2 always limits in-flight all-gathers."""
    use_orig_params: bool | None = None
    """Accepted; FSDP2 always shards the original parameters (what True asks for)."""
    param_init_fn: Any = None
    """``fn(module)`` run on every submodule after a model that is on the meta device on
    every process (rank 0 included) has been sharded and given empty storage (e.g.
    ``lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None``)."""
    sync_module_states: bool | None = None
    """Every process starts from rank 0's weights (broadcast into the shards at ``prepare``)."""
    forward_prefetch: bool | None = None
    """Gather the next block's parameters while the current block runs forward
    (FSDP2's ``set_modules_to_forward_prefetch``, blocks in module order)."""
    activation_checkpointing: bool | None = None
    """Recompute each block's activations in backward instead of storing them."""
    activation_checkpointing_offload: bool | None = None
    """Not available (True raises)."""
    cpu_ram_efficient_loading: bool | None = None
    """Only rank 0 needs the weights: the other processes may build the model with
    ``surge.init_empty_weights()``; ``prepare`` sends each its shards of rank 0's weights
    (implies ``sync_module_states``)."""
    transformer_cls_names_to_wrap: list[str] | str | None = None
    """Class names of the blocks to shard one by one; None finds them (transformers'
    ``_no_split_modules``, or the repeated blocks of a ModuleList)."""
    min_num_params: int | None = None
    """size_based_wrap: shard any submodule with at least this many parameters on its own
    (None: 100,000,000; 0: no blocks, as Accelerate)."""
    transformer_layer_cls_to_wrap: list[str] | str | None = None
    """The older name of ``transformer_cls_names_to_wrap`` (either may be given)."""

    def __post_init__(self) -> None:
        from surge.config import _fsdp_values as v

        name = "FullyShardedDataParallelPlugin"
        version = self.fsdp_version
        if isinstance(version, str) and version.strip().isdigit():
            self.fsdp_version = int(version)
        elif isinstance(version, (str, enum.Enum)) and self.sharding_strategy is None:
            # surge's plugin once took the sharding strategy first; Accelerate's first argument is the version.
            self.sharding_strategy, self.fsdp_version = version, None
        self.fsdp_version = 1 if self.fsdp_version is None else self.fsdp_version
        check_int(f"{name}.fsdp_version", self.fsdp_version, minimum=1, maximum=2)
        self._settle_strategy(name)
        if self.backward_prefetch is not None:
            self.backward_prefetch = v.enum_name(f"{name}.backward_prefetch", self.backward_prefetch,
                                                 v.BACKWARD_PREFETCH)
        if self.mixed_precision_policy is not None:
            self.mixed_precision_policy = v.mixed_precision_policy(self.mixed_precision_policy)
        self._settle_wrapping(name)
        self.cpu_offload, self._offload_pin_memory = v.cpu_offload(False if self.cpu_offload is None
                                                                   else self.cpu_offload)
        if self.cpu_offload and self.sharding_strategy == "NO_SHARD":
            raise ValueError(f"{name}(sharding_strategy='NO_SHARD', cpu_offload=True): only sharded parameters can "
                             "be offloaded. Use FULL_SHARD or SHARD_GRAD_OP with cpu_offload.")
        if self.ignored_modules is not None and not isinstance(self.ignored_modules, str):
            try:
                self.ignored_modules = list(self.ignored_modules)
            except TypeError:
                raise TypeError(f"{name}.ignored_modules={self.ignored_modules!r} must be modules (a list) or a "
                                "regex matching module names.") from None
        default_type = "FULL_STATE_DICT" if self.fsdp_version == 1 else "SHARDED_STATE_DICT"
        self.state_dict_type = v.enum_name(f"{name}.state_dict_type", self.state_dict_type or default_type,
                                           v.STATE_DICT_TYPES)
        if self.state_dict_type == "LOCAL_STATE_DICT":
            raise ValueError(f"{name}.state_dict_type='LOCAL_STATE_DICT' does not exist on FSDP2 (surge's engine); "
                             "use SHARDED_STATE_DICT (each process writes its shards) or FULL_STATE_DICT.")
        check_bool(f"{name}.limit_all_gathers", self.limit_all_gathers)
        if self.param_init_fn is not None and not callable(self.param_init_fn):
            raise TypeError(f"{name}.param_init_fn={self.param_init_fn!r} must be a callable taking a module.")
        self.activation_checkpointing = v.optional_bool(f"{name}.activation_checkpointing",
                                                        self.activation_checkpointing, False)
        offload_acts = v.optional_bool(f"{name}.activation_checkpointing_offload",
                                       self.activation_checkpointing_offload, False)
        if offload_acts:
            raise ValueError(f"{name}(activation_checkpointing_offload=True) is not available in surge; use "
                             "activation_checkpointing=True alone (activations are recomputed, not offloaded).")
        self.activation_checkpointing_offload = False
        self.cpu_ram_efficient_loading = v.optional_bool(f"{name}.cpu_ram_efficient_loading",
                                                         self.cpu_ram_efficient_loading, False)
        self.sync_module_states = v.optional_bool(f"{name}.sync_module_states", self.sync_module_states, False) \
            or self.cpu_ram_efficient_loading
        self.forward_prefetch = v.optional_bool(f"{name}.forward_prefetch", self.forward_prefetch, False)
        if self.use_orig_params is not None:
            self.use_orig_params = v.optional_bool(f"{name}.use_orig_params", self.use_orig_params, True)

    def _settle_strategy(self, name: str) -> None:
        from surge.config import _fsdp_values as v

        kind = None if self.sharding_strategy is None else v.enum_name(
            f"{name}.sharding_strategy", self.sharding_strategy, v.SHARDING_STRATEGIES)
        reshard = None if self.reshard_after_forward is None else v.reshard_flag(
            f"{name}.reshard_after_forward", self.reshard_after_forward)
        if isinstance(reshard, str):  # Accelerate's FSDP1 form: a strategy
            if kind is not None and kind != reshard:
                raise ValueError(f"{name}(sharding_strategy={kind!r}, reshard_after_forward={reshard!r}) disagree; "
                                 "give one of them.")
            kind, reshard = reshard, None
        kind = kind or "FULL_SHARD"
        if reshard is not None:
            if kind == "NO_SHARD":
                raise ValueError(f"{name}(sharding_strategy='NO_SHARD', reshard_after_forward={reshard}): NO_SHARD "
                                 "replicates the model, there is nothing to reshard. Drop one of them.")
            hybrid = kind.startswith("HYBRID")
            kind = ("HYBRID_SHARD" if reshard else "HYBRID_SHARD_ZERO2") if hybrid \
                else ("FULL_SHARD" if reshard else "SHARD_GRAD_OP")
        self.sharding_strategy = kind
        self.reshard_after_forward = None if kind == "NO_SHARD" else kind in ("FULL_SHARD", "HYBRID_SHARD")

    def _settle_wrapping(self, name: str) -> None:
        from surge.config import _fsdp_values as v

        names = v.class_names(f"{name}.transformer_cls_names_to_wrap", self.transformer_cls_names_to_wrap)
        older = v.class_names(f"{name}.transformer_layer_cls_to_wrap", self.transformer_layer_cls_to_wrap)
        if names is not None and older is not None and names != older:
            raise ValueError(f"{name}: transformer_cls_names_to_wrap={names} and transformer_layer_cls_to_wrap={older} "
                             "are one setting with two names; give one.")
        self.transformer_cls_names_to_wrap = self.transformer_layer_cls_to_wrap = names if names is not None else older
        policy = self.auto_wrap_policy
        if policy is None:
            policy = "TRANSFORMER_AUTO_WRAP"
        if isinstance(policy, str):
            policy = v.WRAP_ALIASES.get(policy.strip().upper(), policy)
            policy = check_choice(f"{name}.auto_wrap_policy", policy, (*v.WRAP_POLICIES, "TRANSFORMER_BASED_WRAP"),
                                  fix="Or pass a callable policy.")
            policy = v.WRAP_ALIASES.get(policy, policy)
        elif not callable(policy) and not hasattr(policy, "_run_policy"):
            raise TypeError(f"{name}.auto_wrap_policy={policy!r} must be one of transformer_based_wrap, "
                            "size_based_wrap, no_wrap, or a callable policy.")
        self.auto_wrap_policy = policy
        if self.min_num_params is None:
            self.min_num_params = 100_000_000
        check_int(f"{name}.min_num_params", self.min_num_params, minimum=0)

    def set_auto_wrap_policy(self, model: Any) -> None:
        """Resolve the wrap policy against ``model``, as Accelerate does: class names become
        a ``functools.partial`` of torch's ``transformer_auto_wrap_policy`` over the model's
        classes, a size becomes one of ``size_based_auto_wrap_policy`` (a size of 0: no
        blocks). ``prepare`` does this itself; call it to read or adjust the result.

        Raises:
            ValueError: a class name that no submodule of ``model`` has.
        """
        import functools

        from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

        from surge.strategies.blocks import find_blocks

        size = cast(int, self.min_num_params)  # settled in __post_init__
        if self.auto_wrap_policy == "TRANSFORMER_AUTO_WRAP":
            blocks = find_blocks(model, cast("list[str] | None", self.transformer_cls_names_to_wrap))
            classes = {type(b) for b in blocks}
            if self.transformer_cls_names_to_wrap is None:
                self.transformer_cls_names_to_wrap = sorted(c.__name__ for c in classes)
            self.auto_wrap_policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes)
        elif self.auto_wrap_policy == "SIZE_BASED_WRAP":
            self.auto_wrap_policy = functools.partial(size_based_auto_wrap_policy, min_num_params=size) \
                if size > 0 else "NO_WRAP"


# surge config key -> FullyShardedDataParallelPlugin argument
_FSDP_ARGS = {"fsdp_version": "fsdp_version", "fsdp_sharding_strategy": "sharding_strategy",
              "fsdp_reshard_after_forward": "reshard_after_forward", "fsdp_offload_params": "cpu_offload",
              "fsdp_auto_wrap_policy": "auto_wrap_policy", "fsdp_transformer_layer_cls_to_wrap":
              "transformer_cls_names_to_wrap", "fsdp_min_num_params": "min_num_params",
              "fsdp_backward_prefetch": "backward_prefetch", "fsdp_forward_prefetch": "forward_prefetch",
              "fsdp_state_dict_type": "state_dict_type", "fsdp_use_orig_params": "use_orig_params",
              "fsdp_cpu_ram_efficient_loading": "cpu_ram_efficient_loading",
              "fsdp_sync_module_states": "sync_module_states", "fsdp_activation_checkpointing":
              "activation_checkpointing", "fsdp_activation_checkpointing_offload": "activation_checkpointing_offload",
              "fsdp_ignored_modules": "ignored_modules"}
# What `accelerate launch --use_fsdp` hands its workers for a key neither the config file nor
# a flag set (its flag defaults; the plugin's own default where the launcher sets nothing).
ACCELERATE_FSDP_LAUNCH_DEFAULTS = {
    "fsdp_version": 1, "fsdp_offload_params": False, "fsdp_min_num_params": 100_000_000,
    "fsdp_auto_wrap_policy": "NO_WRAP", "fsdp_forward_prefetch": False, "fsdp_use_orig_params": True,
    "fsdp_cpu_ram_efficient_loading": True, "fsdp_sync_module_states": True, "fsdp_activation_checkpointing": False,
}
# surge config key -> DeepSpeedPlugin argument
_DEEPSPEED_ARGS = {"deepspeed_config_file": "hf_ds_config",
                   "gradient_accumulation_steps": "gradient_accumulation_steps",
                   "gradient_clipping": "gradient_clipping", "zero_stage": "zero_stage",
                   "offload_optimizer_device": "offload_optimizer_device",
                   "offload_param_device": "offload_param_device", "zero3_init_flag": "zero3_init_flag",
                   "zero3_save_16bit_model": "zero3_save_16bit_model",
                   "deepspeed_moe_layer_cls_names": "transformer_moe_cls_names"}


def plugins_from_config(values: dict[str, Any]) -> tuple[DeepSpeedPlugin | None, FullyShardedDataParallelPlugin | None]:
    """The plugins a config file's (or the launcher's) strategy keys ask for.

    ``use_fsdp`` (``accelerate launch --use_fsdp``, an Accelerate FSDP config) builds the
    plugin Accelerate's launcher would: keys left unset take its launch defaults
    (``NO_WRAP``: the model is one unit unless an auto-wrap policy is set). surge's own
    ``fsdp_sharding_strategy`` without ``use_fsdp`` keeps surge's defaults (blocks found
    by themselves). ``use_deepspeed``, a DeepSpeed config file, a ZeRO stage above 0 or an
    offloaded optimizer build a DeepSpeedPlugin (stage 2 unless set, as Accelerate).
    """
    if values.get("use_fsdp") or values.get("fsdp_sharding_strategy") is not None:
        given = {k: values[k] for k in _FSDP_ARGS if values.get(k) is not None}
        if values.get("use_fsdp"):
            given = {**ACCELERATE_FSDP_LAUNCH_DEFAULTS, **given}
        return None, FullyShardedDataParallelPlugin(**{_FSDP_ARGS[k]: v for k, v in given.items()})
    stage = values.get("zero_stage")
    if (values.get("use_deepspeed") or values.get("deepspeed_config_file") or stage
            or values.get("offload_optimizer_device", "none") != "none"):
        given = {k: values[k] for k in _DEEPSPEED_ARGS if values.get(k) is not None}
        for key in ("offload_optimizer_device", "offload_param_device"):
            if given.get(key) == "none":  # the schema's default: leave the plugin (or its config file) to decide
                given.pop(key)
        if not values.get("use_deepspeed") and not values.get("deepspeed_config_file"):
            # surge's own zero_stage key: ZeRO without Accelerate's default clipping at 1.0.
            given.setdefault("gradient_clipping", 0.0)
        return DeepSpeedPlugin(**{_DEEPSPEED_ARGS[k]: v for k, v in given.items()}), None
    return None, None


from surge.config.schema import COMPILE_MODES  # noqa: E402  (one list for the plugin and the config file)


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
    use_regional_compilation: bool = False
    """Compile each repeated block (a transformer's layers) once and reuse it, instead of
    the whole model: much shorter compile times (``surge.utils.compile_regions``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend.strip():
            raise TypeError(f"TorchDynamoPlugin.backend={self.backend!r} must be a backend name such as 'inductor'.")
        self.backend = self.backend.strip().lower()
        if self.mode is not None:
            self.mode = check_choice("TorchDynamoPlugin.mode", self.mode, COMPILE_MODES)
        check_bool("TorchDynamoPlugin.fullgraph", self.fullgraph)
        if self.dynamic is not None:
            check_bool("TorchDynamoPlugin.dynamic", self.dynamic)
        check_bool("TorchDynamoPlugin.use_regional_compilation", self.use_regional_compilation)

    def compile_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"backend": self.backend, "fullgraph": self.fullgraph, "dynamic": self.dynamic}
        if self.mode is not None:
            kwargs["mode"] = self.mode
        return kwargs
