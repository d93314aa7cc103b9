"""The main job and the by-feature examples, run for real in smoke mode under
`surge launch` (2 CPU processes) or python."""

import json
import os
import re
import subprocess
import sys

import pytest

from e2e_util import ROOT, clean_env

pytestmark = pytest.mark.e2e
EXAMPLES = os.path.join(ROOT, "examples")


def run(*argv, processes=2, cwd=None, env=None):
    command = (["surge", "launch", "--num_processes", str(processes)] if processes else [sys.executable])
    result = subprocess.run([*command, *map(str, argv)], cwd=cwd or ROOT, env={**clean_env(), **(env or {})},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_main_job_trains_logs_checkpoints_and_resumes(tmp_path):
    gpt = os.path.join(EXAMPLES, "gpt.py")
    out = run(gpt, "--smoke", "--project_dir", tmp_path)
    done = re.search(r"done: step 30, first loss ([\d.]+), last train loss ([\d.]+), val loss ([\d.]+)", out)
    assert done, out
    # What it prints is labelled, and it says where its checkpoints and logs go.
    header = r"distributed type MULTI_CPU, 2 processes, [\d.]+M parameters, precision no, \d+ training sequences"
    assert re.search(header, out), out
    assert f"checkpoints in {tmp_path / 'checkpoints'} (every 15 steps" in out, out
    assert f"logs in {tmp_path / 'gpt'} (jsonl, tensorboard)" in out, out
    first, _, val = map(float, done.groups())
    assert first > 4.0 and val < first - 1.2  # from ~4.6 (uniform over 96 characters) to well below
    assert "--- sample ---\ndef " in out
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint_0", "checkpoint_1"]  # steps 15 and 30
    records = [json.loads(line) for line in open(tmp_path / "gpt" / "metrics.jsonl")]
    assert records[0]["step"] == 1 and "train/loss" in records[0]
    assert [r["step"] for r in records if "val/loss" in r] == [15, 30]  # once per evaluation, the last one too
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "gpt"))
    assert re.search(r"train: 30/30 \[", out)  # the progress lines, from the main process only
    assert out.count("train: 30/30") == 1
    resumed = run(gpt, "--smoke", "--project_dir", tmp_path, "--resume", "--max_steps", 40)
    assert re.search(r"resumed from \S*checkpoint_1 at step 30", resumed), resumed
    assert "done: step 40," in resumed
    # The README's `--resume` after a finished run: one line, nothing trained, nothing written.
    finished = run(gpt, "--smoke", "--project_dir", tmp_path, "--resume", "--max_steps", 40)
    assert re.fullmatch(r"run already finished at step 40 \(checkpoint \S*checkpoint_2\); nothing to do[^\n]*\n",
                        finished), finished


def test_gpt_runs_in_one_process(tmp_path):
    out = run(os.path.join(EXAMPLES, "gpt.py"), "--smoke", "--max_steps", 6, "--project_dir", tmp_path,
              "--sample_chars", 0, processes=0)
    assert "done: step 6," in out


def test_gradient_accumulation_example():
    out = run(os.path.join(EXAMPLES, "by_feature", "gradient_accumulation.py"), "--smoke")
    assert "effective batch 64 = 8 per process x 4 micro-steps x 2 processes" in out
    assert "epoch 1:" in out and "16 optimizer steps so far" in out  # 512 / 2 / 8 / 4 = 8 per epoch


def test_checkpointing_example_resumes_exactly(tmp_path):
    script = os.path.join(EXAMPLES, "by_feature", "checkpointing.py")
    full = re.search(r"parameters (\w+)", run(script, "--smoke", "--project_dir", tmp_path / "full")).group(1)
    stopped = run(script, "--smoke", "--project_dir", tmp_path / "cut", "--stop_at", 30, "--async_save")
    assert "stopped at step 30" in stopped
    resumed = run(script, "--smoke", "--project_dir", tmp_path / "cut", "--resume")
    assert "resumed at step 30, epoch 1, 14 batches of it already done" in resumed
    assert re.search(r"parameters (\w+)", resumed).group(1) == full


def test_tracking_example(tmp_path):
    out = run(os.path.join(EXAMPLES, "by_feature", "tracking.py"), "--smoke", "--project_dir", tmp_path,
              "--log_with", "jsonl", "tensorboard")
    assert "16 records in" in out  # 512 samples / 2 processes / 16 per batch, logged by the main process
    assert any(n.startswith("events.out") for n in os.listdir(tmp_path / "tracking"))


@pytest.mark.parametrize("flags", [["--zero_stage", "3"], ["--zero_stage", "2", "--offload_optimizer"],
                                   ["--fsdp", "FULL_SHARD", "--activation_checkpointing"]])
def test_sharding_example(tmp_path, flags):
    out = run(os.path.join(EXAMPLES, "by_feature", "sharding.py"), "--smoke", *flags, cwd=tmp_path)
    assert "on 2 processes: loss" in out and "model states on process 0" in out
    assert os.path.exists(tmp_path / "runs" / "sharding" / "model" / "model.safetensors")


def test_find_executable_batch_size_example():
    out = run(os.path.join(EXAMPLES, "by_feature", "find_executable_batch_size.py"), "--smoke", processes=0)
    assert [int(n) for n in re.findall(r"trying batch size (\d+)", out)] == [512, 256, 128, 64]
    assert "batch size 64 fits" in out


def test_gpu_throughput_benchmark_runs_tiny_on_cpu():
    out = run(os.path.join(ROOT, "benchmarks", "gpu_throughput.py"), "--size", "tiny", "--steps", 2, "--rounds", 1,
              "--warmup", 1, processes=0)
    assert re.search(r"\| PyTorch eager \| [\d,]+ \| 1.000x \| n/a \|", out), out
    assert re.search(r"\| surge eager \| [\d,]+ \| [\d.]+x \| n/a \|", out), out


def test_nd_parallel_benchmark_runs_tiny_on_cpu():
    """benchmarks/nd_parallel.py (issue 20's tp 2 vs FSDP figure, for a multi-GPU machine)
    runs every layout through surge launch on 2 gloo processes."""
    out = run(os.path.join(ROOT, "benchmarks", "nd_parallel.py"), "--size", "tiny", "--steps", 1, "--rounds", 1,
              "--warmup", 1, "--cp")
    # The tiny size: 2 sequences of 64 per data-parallel process, so 256 tokens per step in every layout.
    for row in (r"PyTorch FSDP2 \(hand-written\) \| dp_shard 2 \| 256 \| [\d,]+ \| 1.000x",
                r"surge FSDP \| dp_shard 2 \| 256 \| [\d,]+ \| [\d.]+x",
                r"surge FSDP x tp 2 \| tp 2 \| 256 \| [\d,]+ \|",
                r"surge FSDP x cp 2 \| cp 2 \| 256 \| [\d,]+ \|"):
        assert re.search(row, out), out


def test_trainer_example_zero3_offload(tmp_path):
    """examples/trainer.py: transformers' Trainer with a ZeRO-3 + offload DeepSpeed dict on
    2 processes, evaluating, keeping one checkpoint, saving a from_pretrained-loadable model."""
    pytest.importorskip("transformers")
    out = run(os.path.join(EXAMPLES, "trainer.py"), "--smoke", "--zero", 3, "--offload", "--output_dir", tmp_path)
    assert "distributed type DEEPSPEED, 2 processes" in out, out
    done = re.search(r"done: step 20, first loss ([\d.]+), last loss ([\d.]+), eval loss ([\d.]+)", out)
    assert done, out
    first, last, _ = map(float, done.groups())
    assert last < first - 0.5
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-20", "final"]  # save_total_limit=1


def test_long_sequences_example_sp_and_cp_match_one_process():
    """`surge launch --parallelism_config_sp_size 2` and `--parallelism_config_cp_size 2`:
    the launcher's size reaches the Accelerator, each process trains on half of every
    sequence (Ulysses; ring attention), and the losses are those of one process on the
    whole sequences."""
    pytest.importorskip("transformers")
    script = os.path.join(EXAMPLES, "by_feature", "long_sequences.py")

    def losses(out):
        found = re.search(r"(\d+) steps, loss ([\d. ]+)", out)
        assert found, out
        return [float(v) for v in found.group(2).split()]

    one = losses(run(script, "--smoke", processes=0))
    command = ["surge", "launch", "--num_processes", "2", "--parallelism_config_sp_size", "2", script, "--smoke"]
    result = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sp_size 2, cp_size 1, tp_size 1, 2 processes, sequences of 64 (32 per process)" in result.stdout, \
        result.stdout
    two = losses(result.stdout)
    assert len(one) == len(two) == 16 and one[-1] < one[0] - 1.0
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4, (one, two)
    # Ring attention (torch's context_parallel; on CPU through surge's handler), alltoall ring.
    command = ["surge", "launch", "--num_processes", "2", "--parallelism_config_cp_size", "2",
               "--parallelism_config_cp_comm_strategy", "alltoall", script, "--smoke"]
    result = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sp_size 1, cp_size 2, tp_size 1, 2 processes, sequences of 64 (32 per process)" in result.stdout, \
        result.stdout
    ring = losses(result.stdout)
    assert max(abs(a - b) for a, b in zip(one, ring, strict=True)) < 1e-4, (one, ring)


ACCELERATE_CP_YAML = """\
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
enable_cpu_affinity: false
fsdp_config:
  fsdp_activation_checkpointing: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_version: 2
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 2
parallelism_config:
  parallelism_config_cp_size: 2
  parallelism_config_dp_replicate_size: 1
  parallelism_config_dp_shard_size: 1
  parallelism_config_tp_size: 1
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: true
"""


def test_accelerates_context_parallel_recipe_and_config_file_match_one_process(tmp_path):
    """Accelerate's N-D parallel example (its recipe, only the import changed:
    tests/e2e/scripts/nd_parallel_recipe.py) under Accelerate's own cp.yaml (FSDP2 with
    activation checkpointing, parallelism_config cp 2; 2 CPU processes here, 8 GPUs there)
    prints the losses of one process. The script's ParallelismConfig() is given no size: it
    reads the launcher's PARALLELISM_CONFIG_*_SIZE variables, as under accelerate launch."""
    pytest.importorskip("transformers")
    script = os.path.join(ROOT, "tests", "e2e", "scripts", "nd_parallel_recipe.py")
    config = tmp_path / "cp.yaml"
    config.write_text(ACCELERATE_CP_YAML)

    def losses(out):
        found = re.search(r"LOSSES ([\d. ]+)", out)
        assert found, out
        return [float(v) for v in found.group(1).split()]

    one = losses(run(script, processes=0))
    command = ["surge", "launch", "--config_file", str(config), script]  # a bare ParallelismConfig() reads cp 2
    result = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cp_size 2" in result.stdout, result.stdout  # from the launcher's variables, not the config file
    two = losses(result.stdout)
    assert len(one) == len(two) == 4 and len(set(one)) == 4
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-5, (one, two)


def test_sharding_example_strategy_auto_through_the_launcher(tmp_path):
    """`surge launch --strategy auto --memory_budget_gb`: the workers choose from the model
    (the heaviest rung at a tiny budget), print why, and train with it."""
    script = os.path.join(EXAMPLES, "by_feature", "sharding.py")
    command = ["surge", "launch", "--num_processes", "2", "--strategy", "auto", "--memory_budget_gb", "0.0005",
               script, "--smoke"]
    result = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.count("surge: strategy auto: ZeRO-3 + offload optimizer and params + activation checkpointing for "
                     "528K parameters (fp32, Adam) on 2 processes with 500 KB each") == 1, out
    assert "fsdp on 2 processes: loss" in out, out
