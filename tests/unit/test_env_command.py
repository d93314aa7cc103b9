"""`surge env`: what ds_report shows that applies to surge, and `--config` checking a config."""

import json

import pytest

from surge.commands.env import check_config, collect
from surge.commands.main import main


def test_env_reports_features_install_paths_and_shared_memory():
    info = collect()
    assert info["install"]["torch"].endswith("torch") and info["install"]["surge"].endswith("surge")
    assert info["install"]["shared_memory_gb"] is None or info["install"]["shared_memory_gb"] > 0
    features = info["features"]
    assert features["cpu_adam"]["available"] and not features["async_io (NVMe offload)"]["available"]
    assert features["fused_adam"]["available"] == info["cuda_available"]


def test_env_checks_a_deepspeed_config(tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 16, "gradient_accumulation_steps": 2,
                              "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}},
                              "bf16": {"enabled": True}}))
    checked = check_config(str(ds))
    assert checked["kind"] == "DeepSpeed config"
    assert checked["settings"]["zero_stage"] == 3 and checked["settings"]["offload_param_device"] == "cpu"
    assert checked["settings"]["mixed_precision"] == "bf16"
    assert main(["env", "--config", str(ds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checked_config"]["settings"]["gradient_accumulation_steps"] == 2


def test_env_checks_surge_and_accelerate_configs_and_names_a_bad_one(tmp_path, capsys):
    accelerate = tmp_path / "acc.yaml"
    accelerate.write_text("distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: 2\n")
    checked = check_config(str(accelerate))
    assert checked["kind"] == "Accelerate config" and checked["settings"]["use_deepspeed"] is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    with pytest.raises(ValueError, match="stage"):
        check_config(str(bad))
    assert main(["env", "--config", str(bad)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
