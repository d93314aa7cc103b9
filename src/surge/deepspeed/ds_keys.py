"""DeepSpeed's config vocabulary: every key DeepSpeed reads, and what surge does with each.

No torch here (ds_config.py, which uses this, is read by the launcher).

[Note: what DeepSpeed accepts]
surge accepts every config DeepSpeed accepts (checked against DeepSpeedExamples' and
DeepSpeed's own configs, tests/unit/test_deepspeed_configs.py). DeepSpeed's rules, read
from its source (runtime/config.py, zero/config.py, zero/offload_config.py):

- Top-level keys it does not know are ignored without a word; surge names them in its
  warning (with the nearest known key) and ignores them too (``strict=True`` refuses them).
- ``zero_optimization`` and its offload sections are pydantic models that forbid extra
  keys: an unknown key there is an error in both.
- The other sections (fp16, bf16, activation_checkpointing, ...) are read key by key and
  anything else in them is ignored: surge names such keys in its warning.
- A feature surge does not offer is named as such. It is refused only when the config
  switches it on and it changes what is trained (compression, progressive layer drop,
  random-LTD or curriculum data sampling, 1-bit optimizers, ...); when it does not change
  the training (autotuning, the hybrid engine's generation kernels, the flops profiler,
  a section only model code reads) it is a warning; when it is off, nothing is said.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Top-level keys ds_config.py reads and applies (or refuses for a bad value).
APPLIED = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "fp16", "bf16", "bfloat16", "amp", "zero_optimization", "optimizer", "scheduler", "dataloader_drop_last",
    "activation_checkpointing", "steps_per_print", "wall_clock_breakdown", "communication_data_type", "data_types",
    "tensorboard", "wandb", "csv_monitor", "comet",
})
# Top-level keys DeepSpeed reads that change nothing surge computes: accepted without a word.
# prescale_gradients / gradient_predivide_factor only move where DeepSpeed divides by the
# number of processes (before or after the all-reduce): the result is the same average.
HARMLESS = frozenset({
    "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "disable_allgather", "allgather_size",
    "cuda_visible_devices", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "memory_breakdown",
    "dump_state", "vocabulary_size", "graph_harvesting", "checkpoint", "aio", "timers", "seq_parallel_comm_data_type",
    "seq_parallel_communication_data_type", "use_data_before_expert_parallelism",
})

# Sub-keys of the sections DeepSpeed validates strictly (an unknown one is an error there and here).
_STAGE3_ALIASES = ("prefetch_bucket_size", "param_persistence_threshold", "model_persistence_threshold",
                   "max_live_parameters", "max_reuse_distance", "gather_16bit_weights_on_model_save",
                   "module_granularity_threshold", "use_all_reduce_for_fetch_params")
ZERO_KEYS = frozenset({
    "stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "use_multi_rank_bucket_allreduce",
    "allgather_partitions", "allgather_bucket_size", "overlap_comm", "load_from_fp32_weights", "elastic_checkpoint",
    "offload_param", "offload_optimizer", "sub_group_size", "cpu_offload_param", "cpu_offload_use_pin_memory",
    "cpu_offload", "stage3_gather_fp16_weights_on_model_save", "ignore_unused_parameters", "legacy_stage1",
    "round_robin_gradients", "zero_hpz_partition_size", "zero_quantized_weights",
    "zero_quantized_nontrainable_weights", "zero_quantized_gradients", "zeropp_loco_param", "mics_shard_size",
    "mics_hierarchical_params_gather", "memory_efficient_linear", "pipeline_loading_checkpoint",
    "override_module_apply", "log_trace_cache_warnings",
    *_STAGE3_ALIASES, *(f"stage3_{name}" for name in _STAGE3_ALIASES),
})
OFFLOAD_KEYS = {
    "offload_param": frozenset({"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"}),
    "offload_optimizer": frozenset({"device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read",
                                    "pipeline_write", "fast_init", "ratio"}),
}
# Sub-keys of the sections DeepSpeed reads key by key (others are ignored there; named here).
_FP16_STYLE = frozenset({"loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
                         "consecutive_hysteresis", "min_loss_scale", "auto_cast"})
LOOSE_KEYS = {
    "fp16": frozenset({"enabled", "fp16_master_weights_and_grads"} | _FP16_STYLE),
    # DeepSpeed reads only these two of a bf16 section; configs copied from an fp16 one carry
    # its loss-scale keys, which bf16 needs no more than DeepSpeed does: accepted silently.
    "bf16": frozenset({"enabled", "immediate_grad_update"} | _FP16_STYLE),
    "bfloat16": frozenset({"enabled", "immediate_grad_update"} | _FP16_STYLE),
    "activation_checkpointing": frozenset({"partition_activations", "cpu_checkpointing",
                                           "contiguous_memory_optimization", "number_checkpoints",
                                           "synchronize_checkpoint_boundary", "profile"}),
    "optimizer": frozenset({"type", "params", "legacy_fusion"}),
    "scheduler": frozenset({"type", "params"}),
    "data_types": frozenset({"grad_accum_dtype"}),
}
MONITORS = ("tensorboard", "wandb", "csv_monitor", "comet")

# DeepSpeed's own optimizers and schedulers that torch has no counterpart for (lower case,
# as DeepSpeed compares them), with what each is.
OPTIMIZERS_NOT_OFFERED = {
    "onebitadam": "1-bit Adam (a 1-bit optimizer: compressed communication changes the updates)",
    "zerooneadam": "0/1 Adam (a 1-bit optimizer: compressed communication changes the updates)",
    "onebitlamb": "1-bit LAMB (a 1-bit optimizer: compressed communication changes the updates)",
    "lamb": "DeepSpeed's fused LAMB optimizer",
    "lion": "DeepSpeed's fused Lion optimizer",
    "muadam": "MuAdam (muP, from the mup package)",
    "muadamw": "MuAdamW (muP, from the mup package)",
    "musgd": "MuSGD (muP, from the mup package)",
}
SCHEDULERS_NOT_OFFERED = {
    "OneCycle": "DeepSpeed's OneCycle learning-rate/momentum schedule",
    "LRRangeTest": "DeepSpeed's LRRangeTest learning-rate range test",
}


def _on(section: Any, default: bool = False) -> bool:
    """DeepSpeed's ``enabled`` flag of a section (read with ``default`` when absent)."""
    return isinstance(section, dict) and section.get("enabled", default) is True


def _compression(section: Any) -> str | None:
    if not isinstance(section, dict):
        return None
    techniques = [name for name in ("weight_quantization", "activation_quantization", "sparse_pruning",
                                    "row_pruning", "head_pruning", "channel_pruning")
                  if _on((section.get(name) or {}).get("shared_parameters"))]
    if _on(section.get("layer_reduction")):
        techniques.insert(0, "layer_reduction")
    return ", ".join(techniques) + " enabled" if techniques else None


def _data_efficiency(section: Any) -> str | None:
    # DeepSpeed's engine reads random_ltd.enabled and curriculum_learning.enabled directly.
    if not isinstance(section, dict):
        return None
    parts = []
    if _on((section.get("data_routing") or {}).get("random_ltd")):
        parts.append("data_routing.random_ltd enabled")
    if _on((section.get("data_sampling") or {}).get("curriculum_learning")):
        parts.append("data_sampling.curriculum_learning enabled")
    return ", ".join(parts) or None


def _flag(default: bool = False) -> Callable[[Any], str | None]:
    return lambda section: "enabled" if _on(section, default) else None


def _present(section: Any) -> str | None:
    return "present" if isinstance(section, dict) and section else None


def _autotp(section: Any) -> str | None:
    size = section.get("autotp_size", 0) if isinstance(section, dict) else 0
    return f"autotp_size={size}" if isinstance(size, int) and size > 1 else None


@dataclass(frozen=True)
class Feature:
    """A top-level section for a DeepSpeed feature surge does not offer."""

    title: str
    """What DeepSpeed calls it."""
    switched_on: Callable[[Any], str | None]
    """The section -> what in it switches the feature on, or None when it is off."""
    changes_training: bool
    """True: refused when on (the model, data or updates would differ); False: a warning."""
    without: str
    """For the message: what happens without it (a warning), or the fix (a refusal)."""


FEATURES: dict[str, Feature] = {
    "compression_training": Feature(
        "DeepSpeed Compression (quantization, pruning, layer reduction)", _compression, True,
        "set enabled: false in its techniques (or remove compression_training), or run this job with DeepSpeed"),
    "progressive_layer_drop": Feature(
        "Progressive Layer Dropping", _flag(), True,
        "set progressive_layer_drop.enabled to false (the model then runs every layer)"),
    "data_efficiency": Feature(
        "DeepSpeed Data Efficiency (curriculum data sampling, random-LTD)", _data_efficiency, True,
        "set enabled: false in random_ltd / curriculum_learning (or remove data_efficiency)"),
    "curriculum_learning": Feature(
        "curriculum learning (legacy, sequence-length curriculum)", _flag(), True,
        "set curriculum_learning.enabled to false"),
    "elasticity": Feature(
        "DeepSpeed Elasticity (batch sizes chosen from the GPU count)", _flag(), True,
        "set train_batch_size / train_micro_batch_size_per_gpu yourself and elasticity.enabled to false"),
    "tensor_parallel": Feature(
        "AutoTP tensor-parallel training", _autotp, True,
        "drop tensor_parallel (surge trains data-parallel, with ZeRO/FSDP sharding)"),
    "weight_quantization": Feature(
        "ZeRO-Inference weight quantization", _flag(default=True), True,
        "remove weight_quantization (or enabled: false)"),
    "quantize_training": Feature(
        "MoQ quantize-training (legacy)", _flag(), False,
        "this legacy section is no longer read by DeepSpeed either (MoQ lives in compression_training)"),
    "eigenvalue": Feature(
        "eigenvalue computation (for MoQ)", _flag(), False, "no eigenvalues are computed; training is the same"),
    "sparse_attention": Feature(
        "DeepSpeed Sparse Attention kernels", _present, False,
        "only model code that builds deepspeed.ops.sparse_attention reads this section"),
    "pipeline": Feature(
        "pipeline parallelism (PipelineModule)", _present, False,
        "only DeepSpeed's PipelineModule reads this section"),
    "hybrid_engine": Feature(
        "DeepSpeed Hybrid Engine (inference kernels for generate() in RLHF)", _flag(), False,
        "generate() runs the model's own forward: the same training, slower generation"),
    "autotuning": Feature(
        "DeepSpeed Autotuning", _flag(), False, "surge runs with the config's values"),
    "flops_profiler": Feature(
        "the flops profiler", _flag(), False, "no flops profile is printed; use torch.profiler"),
    "comms_logger": Feature(
        "the communication logger", _flag(), False, "collectives are not logged"),
    "nebula": Feature(
        "Nebula checkpointing", _flag(), False, "checkpoints are written by surge's own writer"),
}


def known_top_level() -> frozenset[str]:
    """Every top-level key DeepSpeed reads."""
    return APPLIED | HARMLESS | frozenset(FEATURES)


def unknown_note(key: str, known: frozenset[str] | set[str], where: str = "") -> str:
    """The warning entry for a key DeepSpeed does not read (it ignores it, and so does surge),
    with the nearest known key when one is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{where}{key} (not a DeepSpeed key: ignored, as DeepSpeed ignores it{hint})"


def not_offered(key: str, feature: Feature, detail: str) -> str:
    """The refusal for a switched-on feature that changes training."""
    return (f"DeepSpeed config {key} ({detail}) asks for {feature.title}, a DeepSpeed feature surge does not offer: "
            f"it changes what is trained. To train with surge, {feature.without}.")


def feature_note(key: str, feature: Feature, detail: str) -> str:
    """The warning entry for a switched-on feature that does not change training."""
    return f"{key} ({detail}: {feature.title} is not offered by surge; {feature.without})"
