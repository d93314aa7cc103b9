"""``surge doctor``'s checks: a script (and optionally a config file) -> findings.

The walk (doctor/scan.py) records what the script does; the rules that need the whole
script (accumulation, objects left out of prepare, precision, ZeRO stages) are decided
here, after it. Each finding names a rule of doctor/rules.py. No torch.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from surge.doctor.rules import RULE_BY_ID
from surge.doctor.scan import Facts, Scanner
from surge.doctor.values import MODEL, AcceleratorInfo

# Parameter counts (millions) of well-known checkpoints; other names are read from a size
# in the name ("opt-125m", "Qwen2.5-0.5B"), else the model's size is unknown.
KNOWN_SIZES = {"gpt2": 124, "distilgpt2": 82, "gpt2-medium": 355, "gpt2-large": 774, "gpt2-xl": 1558,
               "bert-base-uncased": 110, "bert-base-cased": 110, "bert-large-uncased": 340, "bert-large-cased": 340,
               "distilbert-base-uncased": 66, "distilbert-base-cased": 65, "roberta-base": 125, "roberta-large": 355,
               "albert-base-v2": 12, "t5-small": 60, "t5-base": 220, "t5-large": 770, "google/flan-t5-small": 77,
               "google/flan-t5-base": 248, "google/flan-t5-large": 783, "google-t5/t5-small": 60,
               "google-t5/t5-base": 220, "openai-community/gpt2": 124, "openai-community/gpt2-medium": 355,
               "google-bert/bert-base-uncased": 110, "FacebookAI/roberta-base": 125,
               "distilbert/distilbert-base-uncased": 66, "google/vit-base-patch16-224": 86}
_SIZE_IN_NAME = re.compile(r"(?:^|[-_.])(\d+(?:\.\d+)?)([mMbB])(?:$|[-_.])")
SMALL = 1000  # millions of parameters: below this, ZeRO-3's gathering costs more than it saves
LARGE = 6000  # millions: from here, 16 bytes a parameter (~100 GB) fill a GPU before any activation


class DoctorError(Exception):
    """A script or config the doctor cannot read: one line, exit code 2."""


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    message: str
    fix: str
    severity: str

    def text(self) -> str:
        tag = "" if self.severity == "warning" else f"[{self.severity}] "
        return f"{self.file}:{self.line}: {tag}{self.message}; {self.fix}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "rule": self.rule, "severity": self.severity,
                "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Settings:
    """What a config file settles for the Accelerator (None: the file does not say)."""

    mixed_precision: str | None = None
    accumulation: int | None = None
    zero_stage: int | None = None
    cpu: bool = False
    sharded: bool = False  # ZeRO (any stage above 0) or FSDP


def read_settings(path: str) -> Settings:
    """A surge or Accelerate config file (what ``surge launch --config_file`` reads), or a DeepSpeed JSON.

    Raises:
        DoctorError: the file cannot be read or is not a config.
    """
    from surge.config.file import ConfigError, read_values

    try:
        values = read_values(path)
    except ConfigError as exc:
        deepspeed = _deepspeed_json(path)
        if deepspeed is None:
            raise DoctorError(" ".join(str(exc).split())) from None
        return _deepspeed_settings(deepspeed)
    stage = values.get("zero_stage")
    if stage is None and values.get("use_deepspeed"):
        stage = 2
    shard_size = values.get("parallelism_config_dp_shard_size")
    sharded = bool(stage) or bool(values.get("use_fsdp")) or (isinstance(shard_size, int) and shard_size > 1)
    settings = Settings(mixed_precision=_text(values.get("mixed_precision")),
                        accumulation=values.get("gradient_accumulation_steps"), zero_stage=stage,
                        cpu=bool(values.get("use_cpu")), sharded=sharded)
    ds_file = values.get("deepspeed_config_file")
    if isinstance(ds_file, str):
        for candidate in (ds_file, os.path.join(os.path.dirname(path), ds_file)):
            deepspeed = _deepspeed_json(candidate)
            if deepspeed is not None:
                inner = _deepspeed_settings(deepspeed)
                return Settings(mixed_precision=settings.mixed_precision or inner.mixed_precision,
                                accumulation=settings.accumulation or inner.accumulation,
                                zero_stage=inner.zero_stage if inner.zero_stage is not None else stage,
                                cpu=settings.cpu, sharded=settings.sharded or bool(inner.zero_stage))
    return settings


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _deepspeed_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    keys = ("zero_optimization", "train_batch_size", "train_micro_batch_size_per_gpu", "fp16", "bf16")
    return data if isinstance(data, dict) and any(k in data for k in keys) else None


def _deepspeed_settings(data: dict[str, Any]) -> Settings:
    zero = data.get("zero_optimization")
    stage = zero.get("stage") if isinstance(zero, dict) else None
    precision = None
    for name in ("bf16", "fp16"):
        section = data.get(name)
        if isinstance(section, dict) and section.get("enabled") is True:
            precision = name
    steps = data.get("gradient_accumulation_steps")
    return Settings(mixed_precision=precision, accumulation=steps if isinstance(steps, int) else None,
                    zero_stage=stage if isinstance(stage, int) else None, sharded=isinstance(stage, int) and stage > 0)


def model_size(name: str) -> int | None:
    """Millions of parameters of a checkpoint name, where the name says (else None)."""
    if name in KNOWN_SIZES:
        return KNOWN_SIZES[name]
    match = _SIZE_IN_NAME.search(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    number = float(match.group(1))
    return int(number * (1000 if match.group(2) in "bB" else 1))


def check_source(source: str, path: str = "<script>", settings: Settings | None = None) -> list[Finding]:
    """The findings for one script's text (``settings``: a config file's, when one was given).

    Raises:
        DoctorError: the text is not Python.
    """
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        raise DoctorError(f"{path}:{exc.lineno or 0}: cannot parse: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise DoctorError(f"{path}: cannot parse: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    try:
        facts = Scanner(tree).run()
    except RecursionError:
        raise DoctorError(f"{path}: too deeply nested to check") from None
    found = list(facts.found) + _whole_script(facts, settings)
    findings = []
    for line, rule_id, message in sorted(set(found)):
        rule = RULE_BY_ID[rule_id]
        findings.append(Finding(file=path, line=line, rule=rule_id, message=message, fix=rule.fix,
                                severity=rule.severity))
    return findings


def check_file(path: str, settings: Settings | None = None) -> list[Finding]:
    """Raises:
        DoctorError: the file cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DoctorError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        source = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DoctorError(f"{path}: cannot read: not UTF-8 text") from None
    return check_source(source, path, settings)


def _whole_script(facts: Facts, settings: Settings | None) -> list[tuple[int, str, str]]:
    found: list[tuple[int, str, str]] = []
    has_accelerator = bool(facts.accelerators)
    if has_accelerator and facts.prepared_model:
        for line in facts.tensor_backward:
            found.append((line, "tensor-backward", RULE_BY_ID["tensor-backward"].what))
    if has_accelerator:
        for line, what in facts.rank_reads:
            found.append((line, "hard-coded-rank", f"{what} (the accelerator knows it)"))
    found += _accumulation(facts, settings)
    if facts.prepared_model:
        for optimizer in facts.raw_optimizers:
            if optimizer.key in facts.prepared_keys or optimizer.key not in facts.stepped:
                continue
            # the very model it optimizes was prepared (not another one bound to the same name later)
            if (optimizer.source_key and optimizer.source_key in facts.prepared_keys) or optimizer.source_kind == MODEL:
                found.append((optimizer.line, "not-prepared",
                              (f"this optimizer of {optimizer.source}'s parameters is stepped but never passed to "
                              "accelerator.prepare()")))
        for loader in facts.raw_loaders:
            if loader.key in facts.trained_on and loader.key not in facts.prepared_keys:
                found.append((loader.line, "not-prepared", ("this DataLoader feeds the training loop but is never "
                                                           "passed to accelerator.prepare()")))
    found += _precision(facts, settings)
    found += _zero(facts, settings)
    return found


def _accumulation(facts: Facts, settings: Settings | None) -> list[tuple[int, str, str]]:
    if facts.accumulates:
        return []
    for info, line in facts.accelerator_backward:
        steps = _steps(info, settings)
        if steps is not None and steps > 1:
            return [(line, "accumulate-missing",
                     (f"gradient_accumulation_steps={steps} but accelerator.backward() runs outside "
                     "`with accelerator.accumulate(model):`, so the optimizer steps on every micro-batch"))]
    return []


def _steps(info: AcceleratorInfo, settings: Settings | None) -> int | None:
    """The accumulation steps an Accelerator runs with, where certain."""
    if info.accumulation is None:
        return None
    if info.accumulation > 0:
        return info.accumulation
    if info.opaque or settings is None:
        return None  # the launch config decides
    return settings.accumulation if settings.accumulation is not None else 1


def _precision(facts: Facts, settings: Settings | None) -> list[tuple[int, str, str]]:
    if not facts.accelerators or not facts.cuda_lines or settings is None or settings.cpu:
        return []
    if settings.mixed_precision is not None or settings.zero_stage:
        return []
    if any(info.mixed_precision or info.sharding_plugin or info.opaque for info in facts.accelerators):
        return []
    line = facts.accelerators[0].line
    return [(line, "no-mixed-precision", ("the script targets CUDA (line "
             f"{min(facts.cuda_lines)}) but neither this Accelerator nor the config turns on mixed precision"))]


def _zero(facts: Facts, settings: Settings | None) -> list[tuple[int, str, str]]:
    found: list[tuple[int, str, str]] = []
    stages: list[int | None] = []
    for info in facts.accelerators:
        if info.zero_stage is not None:
            stages.append(info.zero_stage)
        elif not info.sharding_plugin and not info.opaque and settings is not None and settings.zero_stage is not None:
            stages.append(settings.zero_stage)
        else:
            stages.append(None)
    if stages and all(stage == 3 for stage in stages) and facts.pretrained and \
            all(name is not None for _, name in facts.pretrained):
        sizes = [(line, name, model_size(name)) for line, name in facts.pretrained if name is not None]
        if all(size is not None and size < SMALL for _, _, size in sizes):
            line, name, size = sizes[0]
            found.append((line, "zero3-small-model",
                          (f"ZeRO-3 shards {name!r} (about {size}M parameters): gathering them at every layer costs "
                          "more than the memory it saves")))
    found += _unsharded(facts, settings)
    literal_stages = [(info.line, info.zero_stage) for info in facts.accelerators if info.zero_stage is not None]
    if facts.saves_state and facts.loads_state and len({stage for _, stage in literal_stages}) > 1:
        first = literal_stages[0][1]
        line, stage = next((line, stage) for line, stage in literal_stages if stage != first)
        found.append((line, "zero-stage-mismatch",
                      (f"this Accelerator uses ZeRO stage {stage}, another in the script stage {first}, and the "
                      "script both saves and loads state: surge reshards it, DeepSpeed under Accelerate does not")))
    return found


def _unsharded(facts: Facts, settings: Settings | None) -> list[tuple[int, str, str]]:
    """A large model (its size read from its name) trained with no sharding at all."""
    if settings is None or settings.sharded or not facts.accelerator_backward or not facts.pretrained:
        return []
    if any(info.sharding_plugin or info.opaque for info in facts.accelerators):
        return []
    sizes = [(size, line, name) for line, name in facts.pretrained
             if name is not None and (size := model_size(name)) is not None and size >= LARGE]
    if not sizes:
        return []
    size, line, name = max(sizes)
    return [(line, "large-model-unsharded",
             (f"{name!r} (about {size / 1000:g}B parameters) is trained unsharded: every process holds about "
             f"{size * 16 // 1000} GB of training state before any activation"))]
