"""The `surge` command line, run for real in subprocesses."""

import json
import os
import re
import subprocess

import pytest

from e2e_util import ROOT, SCRIPTS, clean_env
from surge.testing import free_port

pytestmark = pytest.mark.e2e
PROBE = os.path.join(SCRIPTS, "cli_probe.py")


def surge(*args, timeout=180, cwd=ROOT, **env):
    return subprocess.run(["surge", *map(str, args)], cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def test_config_default_then_launch_two_processes(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    assert surge("config", "--default", "--config_file", cfg).returncode == 0
    cfg.write_text(cfg.read_text().replace("gradient_accumulation_steps: 1", "gradient_accumulation_steps: 3"))
    result = surge("launch", "--config_file", cfg, "--num_processes", 2, "--mixed_precision", "bf16", PROBE,
                   "--num_processes", "7", "--x=1", "positional")
    assert result.returncode == 0, result.stderr
    # The script's --num_processes is the script's (it gets it), with one line saying where launcher flags go.
    assert (f"surge launch: warning: --num_processes comes after the script, so it goes to cli_probe.py, not the "
            f"launcher; put launcher flags before the script: surge launch --num_processes 7 {PROBE} --x=1 positional"
            in result.stderr.splitlines()), result.stderr
    lines = sorted(re.findall(r"rank=\d world=\d .*", result.stdout))
    # The script sees the job, the file's and the flags' settings, and its own arguments untouched.
    assert lines == [
        f"rank={r} world=2 mp=bf16 accum=3 args=['--num_processes', '7', '--x=1', 'positional']" for r in (0, 1)
    ]


def test_accelerate_config_file_and_accelerate_flags_launch_two_processes(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = str(tmp_path / "accelerate.yaml")  # as `accelerate config` writes it
    ClusterConfig(compute_environment="LOCAL_MACHINE", distributed_type="DEEPSPEED", mixed_precision="no",
                  use_cpu=True, debug=False, num_processes=2,
                  deepspeed_config={"zero_stage": 3, "gradient_accumulation_steps": 2, "gradient_clipping": 0.5,
                                    "offload_optimizer_device": "none", "zero3_init_flag": False}).to_yaml_file(cfg)
    result = surge("launch", "--config_file", cfg, PROBE, "--strategy")
    assert result.returncode == 0, result.stderr
    assert sorted(re.findall(r"rank=\d (?:world|strategy)=.*", result.stdout)) == [
        "rank=0 strategy=DEEPSPEED stage=3 clip=0.5", "rank=0 world=2 mp=no accum=2 args=['--strategy']",
        "rank=1 strategy=DEEPSPEED stage=3 clip=0.5", "rank=1 world=2 mp=no accum=2 args=['--strategy']"]
    # accelerate launch's own flags, dashed spellings included, with no config file at all
    result = surge("launch", "--use_fsdp", "--num-processes", 2, "--fsdp_version", 2, "--fsdp_reshard_after_forward",
                   "false", "--fsdp-offload-params", "true", PROBE, "--strategy", XDG_CACHE_HOME=tmp_path,
                   HF_HOME=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(re.findall(r"rank=\d strategy=.*", result.stdout)) == [
        f"rank={r} strategy=FSDP reshard=False offload=True" for r in (0, 1)]


def test_a_deepspeed_launcher_command_runs_with_surge_launch(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1},
                              "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}))
    # `deepspeed --num_gpus 2 --bind_cores_to_rank script.py --deepspeed --deepspeed_config ds.json`
    result = surge("launch", "--num_gpus", 2, "--bind_cores_to_rank", os.path.join(SCRIPTS, "deepspeed_style.py"),
                   "--deepspeed", "--deepspeed_config", ds)
    assert result.returncode == 0, result.stderr
    cores = max(1, len(os.sched_getaffinity(0)) // 2)
    assert sorted(re.findall(r"local_rank=.*", result.stdout)) == [
        f"local_rank={r} env={r} world=2 deepspeed=True cores={cores} threads={cores}" for r in (0, 1)]


def test_default_config_location_is_used(tmp_path):
    cache = tmp_path / "cache"
    assert surge("config", "--default", XDG_CACHE_HOME=cache).returncode == 0
    assert (cache / "surge" / "default_config.yaml").exists()
    result = surge("launch", PROBE, XDG_CACHE_HOME=cache)
    assert result.returncode == 0 and "world=1" in result.stdout


def test_module_launch(tmp_path):
    result = surge("launch", "--num_processes", 2, "-m", "cli_probe", "a", cwd=SCRIPTS)
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"world=2 .*?args=\['a'\]", result.stdout)) == 2


@pytest.mark.parametrize("processes", [1, 2])
def test_exit_code_propagates(processes):
    result = surge("launch", "--num_processes", processes, PROBE, "--exit", 3)
    assert result.returncode == 3, result.stderr


def test_two_machines_on_localhost_form_one_job(tmp_path):
    port = free_port()
    common = ["launch", "--num_machines", 2, "--num_processes", 2, "--main_process_ip", "127.0.0.1",
              "--main_process_port", port]
    second = subprocess.Popen(["surge", *map(str, common), "--machine_rank", "1", PROBE], cwd=ROOT,
                              env=clean_env(TMPDIR=tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = surge(*common, "--machine_rank", 0, PROBE, TMPDIR=tmp_path)
    out, err = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + err
    assert os.listdir(tmp_path) == []  # no agent directories, no handoff file
    assert "rank=0 world=2" in first.stdout and "rank=1 world=2" in out


def test_surge_test_passes_on_two_cpu_processes():
    result = surge("test", "--num_processes", 2, "--cpu", "--mixed_precision", "bf16",
                   "--gradient_accumulation_steps", 2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 3 and "all checks passed" in result.stdout


def test_estimate_memory_reproduces_the_zero_paper():
    result = surge("estimate-memory", "--params", "7.5e9", "--num_processes", 64, "--json")
    rows = {r["strategy"]: r["per_process"][0]["gpu_gb"] for r in json.loads(result.stdout)["rows"]}
    assert [round(rows[k], 1) for k in ("DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3")] == [120.0, 31.4, 16.6, 1.9]
    table = surge("estimate-memory", "--params", "7.5e9", "--num_processes", 64, "--gpu-memory", 32).stdout
    assert "120.0 ✗" in table and "31.4 ✓" in table


def test_estimate_memory_builds_models_on_meta(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4)
    config.save_pretrained(tmp_path)
    expected = sum(p.numel() for p in transformers.AutoModel.from_config(config).parameters())
    result = surge("estimate-memory", "--model", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"] == expected
    factory = surge("estimate-memory", "--model", "torch.nn:Identity", "--json")
    assert json.loads(factory.stdout)["parameters"] == 0


def test_env_report():
    info = json.loads(surge("env", "--json").stdout)
    assert info["backends"]["gloo"] is True and info["torch"].startswith("2.")
    assert "surge env" in surge("env").stdout


BAD = [
    (["frob"], "invalid choice: 'frob'"),
    (["launch", "--num_processes", "0", PROBE], "num_processes=0 is out of range"),
    (["launch", "--num_processes", "two", PROBE], "must be a whole number, got 'two'"),
    (["launch", "missing_script.py"], "script 'missing_script.py' does not exist"),
    (["launch", "--config_file", "/nonexistent/c.yaml", PROBE], "does not exist; create one"),
    (["launch", "--zero_stage", "5", PROBE], "zero_stage=5 is out of range"),
    (["launch", "--mixed_precision", "fp32", PROBE], "mixed_precision='fp32' is not allowed"),
    (["launch", "--num_machines", "2", "--machine_rank", "2", "--num_processes", "2", "--main_process_ip", "h", PROBE],
     "machine_rank=2 must be below num_machines=2"),
    (["launch", "--gradient_accumulation_steps", "-1", PROBE], "gradient_accumulation_steps=-1 is out of range"),
    (["config", "--default", "--config_file", "/proc/nope/c.yaml"], "cannot write the config file"),
    (["launch"], "the following arguments are required: script"),
    (["launch", "--num_proceses", "2", PROBE], "unrecognized arguments: --num_proceses; did you mean --num_processes?"),
    (["estimate-memory", "--params", "-3"], "must be a positive number"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(map(str, a))[:40] for a, _ in BAD])
def test_bad_invocations_fail_with_one_line(argv, message):
    result = surge(*argv)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("num_procs: 2\n", "unknown key(s) 'num_procs'"),
        ("a: [\n", "is not valid YAML"),
        ("zero_stage: 4\n", "zero_stage=4"),
    ],
)
def test_bad_config_files_fail_with_one_line(tmp_path, content, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    result = surge("launch", "--config_file", cfg, PROBE)
    assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_interactive_config_through_a_terminal(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    cfg = tmp_path / "asked.yaml"
    child = pexpect.spawn("surge", ["config", "--config_file", str(cfg)], env=clean_env(COLUMNS="200", TERM="dumb"),
                          encoding="utf-8", timeout=60)
    answers = [
        (r"Machine type", "multi_node"),
        (r"How many machines", "2"),
        (r"Rank of this machine", "5"),  # out of range: asked again
        (r"Please enter a number from 0 to 1", None),
        (r"Rank of this machine", "1"),
        (r"IP address of machine 0", "10.0.0.1"),
        (r"Port on machine 0", ""),
        (r"How many processes in total", "4"),
        (r"Which GPUs", ""),
        (r"Mixed precision", "bf16"),
        (r"Gradient accumulation steps", "2"),
        (r"ZeRO sharding stage", "3"),
        (r"Offload optimizer state", "y"),
        (r"Offload parameters", "n"),
        (r"Restart the workers", "1"),
    ]
    for pattern, answer in answers:
        child.expect(pattern)
        if answer is not None:
            child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    from surge.config.file import load_config

    got = load_config(str(cfg))
    assert (got.machine_type, got.num_machines, got.machine_rank, got.main_process_ip, got.main_process_port) == (
        "multi_node", 2, 1, "10.0.0.1", 29500)
    got_values = (got.num_processes, got.mixed_precision, got.gradient_accumulation_steps, got.zero_stage)
    assert got_values == (4, "bf16", 2, 3)
    assert (got.offload_optimizer_device, got.offload_param_device, got.max_restarts) == ("cpu", "none", 1)


def test_ctrl_c_stops_every_worker(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(["surge", "launch", "--num_processes", "2", os.path.join(SCRIPTS, "sleeper.py"),
                             str(tmp_path)],
                            cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("pid-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid-*")]
    assert len(pids) == 2
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground group
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_rank_that_exits_first_is_blamed_with_its_code(tmp_path):
    script = tmp_path / "exits.py"
    script.write_text(
        "import sys, torch\nfrom surge import PartialState\nfrom surge.ops import reduce\n"
        "s = PartialState()\nif s.process_index == 1:\n    sys.exit(7)\nreduce(torch.ones(1))\n"
    )
    result = surge("launch", "--num_processes", 2, script)
    assert result.returncode == 7
    assert result.stderr.strip().splitlines()[-1].startswith("surge launch: rank 1 (local rank 1) exited with code 7")


def test_sigterm_to_a_one_process_launch_stops_the_script(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(["surge", "launch", os.path.join(SCRIPTS, "sleeper.py"), str(tmp_path)], cwd=ROOT,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("pid-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = int((tmp_path / "pid-0").read_text())
    proc.send_signal(signal.SIGTERM)  # the launcher only, as `timeout` or `kill` would
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_config_default_keeps_an_existing_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_processes: 2\n")
    result = surge("config", "--default", "--config_file", cfg)
    assert result.returncode != 0 and "already exists; it was kept" in result.stderr
    assert cfg.read_text() == "num_processes: 2\n"
    assert surge("config", "--default", "--force", "--config_file", cfg).returncode == 0


def test_yaml_no_and_numeric_gpu_ids_are_understood(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mixed_precision: no\ngpu_ids: 0\n")
    result = surge("launch", "--config_file", cfg, PROBE)
    assert result.returncode == 0, result.stderr
    assert "mp=no" in result.stdout


def test_launch_with_zero_stage_three_shards_the_model():
    result = surge("launch", "--num_processes", 2, "--zero_stage", 3, os.path.join(SCRIPTS, "sharded_probe.py"))
    assert result.returncode == 0, result.stderr
    assert sorted(re.findall(r"rank=\d type=\w+ params=\w+", result.stdout)) == [
        "rank=0 type=DEEPSPEED params=DTensor", "rank=1 type=DEEPSPEED params=DTensor"]
    offloaded = surge("launch", "--num_processes", 2, "--zero_stage", 2, "--offload_optimizer_device", "cpu",
                      os.path.join(SCRIPTS, "sharded_probe.py"))
    assert offloaded.returncode == 0 and offloaded.stdout.count("params=DTensor") == 2, offloaded.stderr
    refused = surge("launch", "--num_processes", 2, "--zero_stage", 2, "--offload_param_device", "cpu", PROBE)
    assert refused.returncode != 0 and "needs zero_stage=3" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


DS_EXAMPLE = os.path.join(ROOT, "examples", "deepspeed_engine.py")
DS_CONFIG = os.path.join(ROOT, "examples", "configs", "zero3_offload_fp16.json")


def test_deepspeed_style_script_trains_saves_and_resumes(tmp_path):
    """A DeepSpeed script (argparse + add_config_arguments + initialize) under surge
    launch: ZeRO-3 + offload + fp16 from the JSON config, checkpoints, --resume."""
    save = tmp_path / "ckpt"
    args = ["launch", "--num_processes", 2, "--mixed_precision", "fp16", DS_EXAMPLE, "--deepspeed",
            "--deepspeed_config", DS_CONFIG, "--smoke", "--save_dir", save]
    first = surge(*args)
    assert first.returncode == 0, first.stderr
    assert re.search(r"steps=8 .* zero_stage=3", first.stdout), first.stdout
    assert (save / "latest").read_text() == "global_step8"
    assert (save / "global_step8" / "surge_checkpoint.json").exists()
    resumed = surge(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "steps=16 " in resumed.stdout and (save / "latest").read_text() == "global_step16"
    assert "does not apply" not in first.stderr  # nothing in the example config is ignored
