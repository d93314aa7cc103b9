"""The YAML config file: schema, errors, location, and how Accelerator() reads it."""

import os
import subprocess
import sys

import pytest

from surge.config.file import (
    ConfigError,
    SurgeConfig,
    default_config_path,
    load_config,
    read_values,
    write_config,
)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_round_trip(tmp_path):
    cfg = SurgeConfig(machine_type="multi_gpu", num_processes=4, mixed_precision="bf16", gradient_accumulation_steps=2)
    path = str(tmp_path / "sub" / "c.yaml")
    write_config(cfg, path)
    assert load_config(path) == cfg
    assert cfg.changed() == {"machine_type": "multi_gpu", "num_processes": 4, "mixed_precision": "bf16",
                             "gradient_accumulation_steps": 2}


@pytest.mark.parametrize(
    "text, words",
    [
        ("num_procs: 2\n", ["unknown key(s) 'num_procs'", "allowed keys are machine_type"]),
        ("num_processes: two\n", ["num_processes='two' must be a whole number"]),
        ("num_processes: 0\n", ["num_processes=0 is out of range", ">= 1"]),
        ("zero_stage: 5\n", ["zero_stage=5", "from 0 to 3"]),
        ("mixed_precision: fp32\n", ["mixed_precision='fp32'", "'bf16'"]),
        ("gradient_accumulation_steps: -1\n", ["gradient_accumulation_steps=-1"]),
        ("num_machines: 2\nmachine_rank: 2\nmain_process_ip: h\nnum_processes: 2\n",
         ["machine_rank=2 must be below num_machines=2"]),
        ("offload_param_device: cpu\nzero_stage: 2\n", ["offload_param_device='cpu' needs zero_stage=3"]),
        ("use_cpu: yes please\n", ["use_cpu='yes please' must be true or false"]),
        ("- a\n- b\n", ["must hold a mapping"]),
        ("a: [\n", ["is not valid YAML (line"]),
        ("num_processes: 3\nnum_machines: 2\nmain_process_ip: h\n", ["multiple of num_machines=2"]),
        ("bogus: 1\nzero_stage: 9\n", ["2 problems", "'bogus'", "zero_stage=9"]),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        read_values(write(tmp_path, text))
    for word in words:
        assert word in str(err.value)


def test_missing_file_and_unwritable_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; create one with `surge config`"):
        read_values(str(tmp_path / "nope.yaml"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the config file"):
        write_config(SurgeConfig(), str(blocker / "c.yaml"))


def test_empty_file_is_all_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == SurgeConfig()


def _run(code, **env):
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_default_location_respects_xdg_and_override(tmp_path):
    code = "from surge.config.file import default_config_path; print(default_config_path())"
    got = _run(code, XDG_CACHE_HOME=str(tmp_path)).stdout.strip()
    assert got == os.path.join(str(tmp_path), "surge", "default_config.yaml")
    assert _run(code, SURGE_CONFIG_FILE="/x/y.yaml").stdout.strip() == "/x/y.yaml"
    assert default_config_path().endswith(os.path.join("surge", "default_config.yaml"))


def test_accelerator_takes_unset_arguments_from_the_config(tmp_path):
    path = write(tmp_path, "mixed_precision: bf16\ngradient_accumulation_steps: 3\n")
    code = (
        "import warnings\nfrom surge import Accelerator\n"
        "a = Accelerator()\nprint(a.mixed_precision, a.gradient_accumulation_steps)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    b = Accelerator(gradient_accumulation_steps=5)\n"
        "print(b.mixed_precision, b.gradient_accumulation_steps, [str(x.message) for x in w])\n"
    )
    out = _run(code, SURGE_CONFIG_FILE=path)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "bf16 3"
    assert second.startswith("bf16 5") and "overrides gradient_accumulation_steps=3" in second


def test_sharding_in_the_config_becomes_a_plugin(tmp_path):
    ok = _run("from surge import Accelerator; print(Accelerator().deepspeed_plugin.zero_stage)",
              SURGE_CONFIG_FILE=write(tmp_path, "zero_stage: 3\n"))
    assert ok.returncode == 0 and ok.stdout.strip() == "3", ok.stderr
    offload = _run("from surge import Accelerator; p = Accelerator().deepspeed_plugin; "
                   "print(p.zero_stage, p.offload_optimizer_device)",
                   SURGE_CONFIG_FILE=write(tmp_path, "zero_stage: 2\noffload_optimizer_device: cpu\n"))
    assert offload.returncode == 0 and offload.stdout.strip() == "2 cpu", offload.stderr


def test_dynamo_backend_in_the_config_compiles(tmp_path):
    ok = _run("from surge import Accelerator; print(Accelerator().dynamo_plugin.backend)",
              SURGE_CONFIG_FILE=write(tmp_path, "dynamo_backend: aot_eager\n"))
    assert ok.returncode == 0 and ok.stdout.strip() == "aot_eager", ok.stderr
    off = _run("from surge import Accelerator; print(Accelerator().dynamo_plugin)",
               SURGE_CONFIG_FILE=write(tmp_path, "dynamo_backend: no\n"))  # YAML's false
    assert off.returncode == 0 and off.stdout.strip() == "None", off.stderr
