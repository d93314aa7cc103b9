"""Strategy "auto": the ladder's arithmetic, the choice on one process at a declared
budget, the config key and flag, estimate-memory --recommend printing the same choice.
(Two processes: tests/distributed/test_sharding.py reaches every rung and checks parity.)"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from surge import Accelerator, DeepSpeedPlugin
from surge.commands.main import main
from surge.memory import (
    AC_STATE_SHARE,
    STATE_SHARE,
    human_bytes,
    ladder,
    model_state_bytes,
    optimizer_states,
    recommend,
)


def net() -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(4)])


def test_each_rung_is_chosen_at_the_budget_that_fits_it_and_no_lighter_one():
    params = 10_000_000
    rungs = ladder(8)
    assert [r.name for r in rungs] == [
        "DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "ZeRO-3 + activation checkpointing",
        "ZeRO-3 + offload optimizer + activation checkpointing",
        "ZeRO-3 + offload optimizer and params + activation checkpointing"]
    for rung in rungs:
        device, _ = model_state_bytes(params, rung.strategy, 8, "fp32")  # surge's layout: fp32 weights, grads
        share = AC_STATE_SHARE if rung.activation_checkpointing else STATE_SHARE
        assert recommend(params, 8, device / share * 1.001).rung == rung
    tiny = recommend(params, 8, 1e3)
    assert not tiny.fits and tiny.rung == rungs[-1] and "do NOT fit" in tiny.explain()
    assert [r.name for r in ladder(1)] == ["one process", "one process + activation checkpointing",
                                           "one process + offload optimizer + activation checkpointing"]
    with pytest.raises(ValueError, match="must be positive"):
        recommend(params, 8, 0)


def test_the_explanation_names_the_numbers():
    text = recommend(1.3e9, 8, 16e9).explain()
    # surge keeps fp32 weights and gradients under bf16 (autocast; FSDP2 casts a gathered copy): ZeRO-1 is
    # 8 + 8/8 bytes per parameter here, not DeepSpeed's 4 + 12/8.
    assert text == ("strategy auto: ZeRO-2 for 1.3B parameters (bf16, Adam) on 8 processes with 16 GB each: model "
                    "states 7.15 GB per process fit in 70% of it; lighter choices need DDP 20.8 GB, ZeRO-1 11.7 GB")
    frozen = recommend(1.3e9, 8, 16e9, trainable_params=1e7)  # LoRA-like: few trainable parameters
    assert frozen.rung.name == "DDP" and frozen.device_bytes == 1.3e9 * 4 + 1e7 * 12
    assert human_bytes(66_000) == "66 KB" and human_bytes(12) == "12 B"


def test_optimizer_state_counts():
    params = nn.Linear(2, 2).parameters
    assert optimizer_states(torch.optim.AdamW(params())) == 2
    assert optimizer_states(torch.optim.SGD(params(), lr=0.1, momentum=0.9)) == 1
    assert optimizer_states(torch.optim.SGD(params(), lr=0.1)) == 0
    assert optimizer_states(None) == 2
    # fp32: 4 bytes of weights, 4 of gradients, 4 per state; bf16 adds the fp32 master copy.
    ddp = ladder(2)[0].strategy
    assert model_state_bytes(100, ddp, 2, "fp32", optimizer_states=1) == (1200, 0)
    assert model_state_bytes(100, ddp, 2, "bf16", optimizer_states=0) == (800, 0)


@pytest.mark.parametrize(("budget_gb", "checkpointing", "offload"), [(1.0, False, False), (2e-5, True, True)])
def test_one_process_chooses_and_prints(capsys, budget_gb, checkpointing, offload):
    acc = Accelerator(cpu=True, strategy="auto", memory_budget_gb=budget_gb)
    model = net()
    opt = torch.optim.AdamW(model.parameters())
    model, opt = acc.prepare(model, opt)
    assert (acc.strategy.activation_checkpointing, acc.strategy.offload_optimizer) == (checkpointing, offload)
    printed = capsys.readouterr().out
    assert printed.startswith("surge: strategy auto: one process") and "4.22K parameters (fp32, Adam)" in printed
    acc.backward(model(torch.randn(4, 32)).sum())
    opt.step()  # it trains as chosen
    assert acc.prepare(net()) is not None and capsys.readouterr().out == ""  # chosen once


def test_bad_values_and_conflicts_are_refused():
    with pytest.raises(ValueError, match=r"strategy='zero3': surge chooses with 'auto'"):
        Accelerator(cpu=True, strategy="zero3")
    with pytest.raises(ValueError, match="a DeepSpeed plugin/config chooses one too"):
        Accelerator(cpu=True, strategy="auto", deepspeed_plugin=DeepSpeedPlugin(zero_stage=2))
    with pytest.raises(ValueError, match="memory_budget_gb=-1 must be a positive number"):
        Accelerator(cpu=True, strategy="auto", memory_budget_gb=-1)


def test_config_key_and_launch_flag(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("strategy: auto\nmemory_budget_gb: 1.0\n")
    monkeypatch.setenv("SURGE_CONFIG_FILE", str(path))
    acc = Accelerator(cpu=True)
    acc.prepare(net())
    assert "surge: strategy auto: one process for" in capsys.readouterr().out
    from surge.commands.launch import resolve_config
    from surge.commands.main import build_parser

    config, _ = resolve_config(build_parser().parse_args(
        ["launch", "--strategy", "auto", "--memory_budget_gb", "8", "train.py"]))
    assert (config.strategy, config.memory_budget_gb) == ("auto", 8.0)
    from surge.config.file import ConfigError

    with pytest.raises(ConfigError, match="--strategy auto chooses the strategy itself"):
        resolve_config(build_parser().parse_args(["launch", "--strategy", "auto", "--use_deepspeed", "train.py"]))


def test_estimate_memory_recommend_prints_the_same_choice(capsys):
    assert main(["estimate-memory", "--params", "1.3e9", "--num_processes", "8", "--gpu-memory", "16", "--recommend",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recommend"][0]["explain"] == recommend(1.3e9, 8, 16e9).explain()
    assert main(["estimate-memory", "--params", "1.3e9", "--num_processes", "8", "--gpu-memory", "16",
                 "--recommend"]) == 0
    assert recommend(1.3e9, 8, 16e9).explain() in capsys.readouterr().out
    assert main(["estimate-memory", "--params", "1e9", "--recommend"]) == 1
    assert "--recommend needs --gpu-memory" in capsys.readouterr().err


def test_auto_refuses_a_mesh_from_the_config_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("strategy: auto\nparallelism_config_tp_size: 2\n")
    monkeypatch.setenv("SURGE_CONFIG_FILE", str(path))
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    from surge.config.resolve import resolve_plan

    with pytest.raises(ValueError, match=r"strategy='auto' chooses a data-parallel strategy.*tp_size=2"):
        resolve_plan(device_placement=True, split_batches=False, mixed_precision=None, gradient_accumulation_steps=None,
                     cpu=None, project_dir=None, project_config=None, even_batches=True,
                     step_scheduler_with_optimizer=True, kwargs_handlers=None, deepspeed_plugin=None, fsdp_plugin=None,
                     log_with=None, dynamo_backend=None, dynamo_plugin=None, nonfinite=None)
