"""Property-based (hypothesis): whatever a config file, a DeepSpeed JSON config or a
launch flag holds, surge either accepts it as a valid config or raises one ValueError
whose single-line message names the source. Never an internal error."""

from __future__ import annotations

import json
import math
import os
import string
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge.commands.launch import resolve_config
from surge.commands.main import CLIError, build_parser
from surge.config.file import FIELDS, SurgeConfig, read_values
from surge.config.plugins import DeepSpeedPlugin, plugins_from_config

# SURGE_HYPOTHESIS_EXAMPLES=5000 searches harder (CI keeps the default, a few seconds in all).
SETTINGS = settings(max_examples=int(os.environ.get("SURGE_HYPOTHESIS_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-10, max_value=70_000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["auto", "no", "cpu", "none", "nvme", "fp16", "bf16", "FULL_SHARD", "all", "0,1", "", "inductor"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def readable(exc: BaseException, *names: str) -> None:
    """One ValueError, one line, naming what was read."""
    assert isinstance(exc, ValueError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message and len(message) < 2000, message
    assert any(name in message for name in names), message
    assert "Traceback" not in message and "object has no attribute" not in message, message


# --- the surge config file (YAML) ----------------------------------------------------------

VALID = {"machine_type": "multi_gpu", "num_processes": 4, "mixed_precision": "bf16", "zero_stage": 3,
         "offload_optimizer_device": "cpu", "gradient_accumulation_steps": 2, "collective_timeout": 120,
         "max_restarts": 2, "nonfinite": "skip"}


def read_text(text: str) -> SurgeConfig | None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        values_read = read_values(f.name)
        return SurgeConfig(**values_read)
    except Exception as exc:  # the property is about every exception
        readable(exc, f.name, "config")
        return None
    finally:
        os.unlink(f.name)


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), values, max_size=6))
def test_any_mapping_of_known_keys_is_a_config_or_a_readable_error(mapping):
    config = read_text(yaml.safe_dump(mapping))
    if config is not None:
        for key, value in mapping.items():
            assert getattr(config, key) == value or (key in ("mixed_precision", "dynamo_backend") and value is False) \
                or (key == "gpu_ids" and isinstance(value, int)) or _truth(getattr(config, key), value)


def _truth(read: object, given: object) -> bool:
    """An Accelerate-format file's boolean written as "yes"/"no"/"true"/... (Accelerate's own
    config reader takes them) is read as that boolean."""
    words = {"true": True, "yes": True, "1": True, "y": True, "on": True,
             "false": False, "no": False, "0": False, "n": False, "off": False}
    return isinstance(read, bool) and isinstance(given, str) and words.get(given.strip().lower()) is read


@SETTINGS
@given(st.sampled_from(sorted(VALID)), values, st.booleans(), st.text(max_size=10))
def test_a_mutated_valid_config_is_a_config_or_a_readable_error(key, value, rename, typo):
    mutated = dict(VALID)
    if rename:
        mutated[key + typo] = mutated.pop(key)
    else:
        mutated[key] = value
    read_text(yaml.safe_dump(mutated))


@SETTINGS
@given(st.text(alphabet=string.printable + "\u00e9\u2603", max_size=200))
def test_any_text_is_a_config_or_a_readable_error(text):
    read_text(text)


def test_huge_numbers_and_non_finite_values_are_refused_by_name():
    assert read_text("num_processes: " + "9" * 5000) is None  # past Python's int-conversion limit
    for text in ("collective_timeout: .nan", "collective_timeout: .inf", "monitor_interval: -1"):
        assert read_text(text) is None


# --- DeepSpeed JSON ---------------------------------------------------------------------------

DS_VALID = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto",
    "gradient_clipping": 1.0,
    "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": False},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "none"}, "overlap_comm": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
}


def paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))


DS_PATHS = list(paths(DS_VALID))


def parse_ds(config) -> DeepSpeedPlugin | None:
    try:
        return DeepSpeedPlugin(hf_ds_config=config)
    except Exception as exc:
        readable(exc, "DeepSpeed")
        return None


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted({p[0] for p in DS_PATHS})), values, max_size=5))
def test_any_deepspeed_mapping_is_settings_or_a_readable_error(mapping):
    parse_ds(mapping)


@SETTINGS
@given(st.sampled_from(DS_PATHS), values, st.sampled_from(["replace", "delete", "add"]))
def test_a_mutated_deepspeed_config_is_settings_or_a_readable_error(path, value, how):
    config = json.loads(json.dumps(DS_VALID))
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if how == "replace":
        parent[path[-1]] = value
    elif how == "delete":
        del parent[path[-1]]
    elif isinstance(parent.get(path[-1]), dict):
        parent[path[-1]]["unexpected"] = value
    else:
        parent[path[-1] + "_x"] = value
    plugin = parse_ds(config)
    if plugin is not None:
        assert plugin.zero_stage in (0, 1, 2, 3)
        assert plugin.gradient_clipping is None or math.isfinite(plugin.gradient_clipping)


@SETTINGS
@given(st.text(max_size=200))
def test_any_deepspeed_file_text_is_settings_or_a_readable_error(text):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        parse_ds(f.name)
    finally:
        os.unlink(f.name)


# --- launch flags -------------------------------------------------------------------------------

FLAGS = ["num_processes", "num_machines", "machine_rank", "mixed_precision", "zero_stage", "gpu_ids",
         "collective_timeout", "monitor_interval", "max_restarts", "main_process_port", "offload_param_device",
         "fsdp_sharding_strategy", "nonfinite"]


@SETTINGS
@given(st.dictionaries(st.sampled_from(FLAGS), st.text(alphabet=string.printable, min_size=1, max_size=10)
                       .filter(lambda t: not t.startswith("-")), max_size=4))
def test_any_launch_flags_are_a_config_or_a_readable_error(flags):
    argv = ["launch"]
    for name, text in flags.items():
        argv += [f"--{name}", text]
    try:
        args = build_parser().parse_args([*argv, "script.py"])
    except CLIError as exc:  # printed as one line, exit code 2
        message = str(exc)
        assert "\n" not in message and any(f"--{name}" in message for name in flags), message
        return
    try:
        config, _ = resolve_config(args)
    except Exception as exc:
        readable(exc, *flags, "config")
        return
    plugins_from_config({k: getattr(config, k) for k in ("zero_stage", "offload_param_device")})


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("SURGE_CONFIG_FILE", raising=False)
