"""Bad settings fail early with errors that name the value, the allowed ones and the fix."""

from datetime import timedelta

import pytest

from surge import Accelerator
from surge.config import AcceleratorConfig, DistributedDataParallelKwargs, InitProcessGroupKwargs
from surge.config.project import ProjectConfiguration


@pytest.mark.parametrize("value", ["fp32", "float16", "int8"])
def test_unknown_mixed_precision(value):
    with pytest.raises(ValueError) as err:
        Accelerator(mixed_precision=value)
    msg = str(err.value)
    assert f"mixed_precision={value!r}" in msg
    for allowed in ("'no'", "'fp16'", "'bf16'", "'fp8'"):
        assert allowed in msg


def test_mixed_precision_must_be_a_string():
    with pytest.raises(TypeError, match="mixed_precision=16"):
        Accelerator(mixed_precision=16)


def test_mixed_precision_is_case_insensitive():
    assert AcceleratorConfig(mixed_precision="BF16").mixed_precision == "bf16"


@pytest.mark.parametrize("value", [0, -3])
def test_accumulation_steps_out_of_range(value):
    with pytest.raises(ValueError, match=rf"gradient_accumulation_steps={value} .*>= 1.*Use 1"):
        Accelerator(gradient_accumulation_steps=value)


@pytest.mark.parametrize("value", ["4", 2.0, True])
def test_accumulation_steps_wrong_type(value):
    with pytest.raises(TypeError, match=r"gradient_accumulation_steps=.*expected an integer"):
        Accelerator(gradient_accumulation_steps=value)


@pytest.mark.parametrize("name", ["cpu", "split_batches", "even_batches", "device_placement"])
def test_flags_must_be_bools(name):
    with pytest.raises(TypeError, match=f"{name}='yes'"):
        Accelerator(**{name: "yes"})


def test_kwargs_handlers_validation():
    with pytest.raises(TypeError, match="kwargs_handlers contains"):
        Accelerator(kwargs_handlers=[{"find_unused_parameters": True}])
    with pytest.raises(ValueError, match="two DistributedDataParallelKwargs"):
        Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(), DistributedDataParallelKwargs()])
    with pytest.raises(TypeError, match="must be a list"):
        Accelerator(kwargs_handlers=DistributedDataParallelKwargs())
    with pytest.raises(TypeError, match="bucket_cap_mb='big'"):
        DistributedDataParallelKwargs(bucket_cap_mb="big")
    with pytest.raises(ValueError, match="backend='nccl2'"):
        InitProcessGroupKwargs(backend="nccl2")
    with pytest.raises(ValueError, match="positive"):
        InitProcessGroupKwargs(timeout=timedelta(seconds=-1))
    with pytest.raises(TypeError, match="timedelta or a number of seconds"):
        InitProcessGroupKwargs(timeout="10m")


def test_handlers_reach_the_config():
    cfg = AcceleratorConfig.from_handlers(
        [DistributedDataParallelKwargs(find_unused_parameters=True), InitProcessGroupKwargs(timeout=42)]
    )
    assert cfg.ddp.to_kwargs() == {"find_unused_parameters": True}
    assert cfg.timeout == timedelta(seconds=42)


def test_project_configuration():
    p = ProjectConfiguration("runs/x")
    assert p.logging_dir == "runs/x"  # the project dir itself, as in Accelerate
    with pytest.raises(ValueError, match="total_limit=0"):
        ProjectConfiguration(total_limit=0)
    with pytest.raises(TypeError, match="project_config="):
        Accelerator(project_config="runs/x")
    acc = Accelerator(project_dir="runs/y")
    assert acc.project_dir == "runs/y" and acc.logging_dir == "runs/y"


def test_config_is_frozen():
    cfg = AcceleratorConfig()
    with pytest.raises(AttributeError):
        cfg.mixed_precision = "bf16"
