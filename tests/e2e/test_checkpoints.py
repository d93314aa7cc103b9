"""save_state / load_state for real, in new processes under `surge launch`: exact
resume, resharding across world sizes and strategies, automatic naming, a save killed
midway, corrupted files. The uninterrupted reference runs (and the checkpoints they
save on the way) are shared through the `reference_runs` fixture (conftest.py)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from e2e_util import ROOT, SCRIPTS, clean_env

pytestmark = pytest.mark.e2e
PROBE = os.path.join(SCRIPTS, "resume_probe.py")


def launch(n, *args, check=True):
    result = subprocess.run(["surge", "launch", "--num_processes", str(n), PROBE, *map(str, args)], cwd=ROOT,
                            env=clean_env(), capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def checksum(result):
    match = re.search(r"checksum=(\w+) seen=(\d+) lr=([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.groups()


@pytest.mark.parametrize("zero", [0, 3])
def test_exact_resume_mid_epoch(reference_runs, zero):
    """Saved mid-second-epoch (and mid-accumulation-cycle, micro-step 13) by a run that
    went on to the end, and resumed from there in new processes: the same batches,
    dropout masks, schedule and final parameters (bit for bit) as the uninterrupted run."""
    full, project = reference_runs.run("--zero", zero)
    assert os.listdir(project / "checkpoints") == ["checkpoint_0"]
    resumed = checksum(launch(2, "--project", project, "--zero", zero, "--resume"))
    assert resumed == checksum(full)


def test_reshard_across_world_sizes_and_strategies(reference_runs, tmp_path):
    """Checkpoints saved by 2 processes under ZeRO-3 and under DDP load with the same full
    parameters, step count and schedule on 1, 2 and 3 processes under either strategy
    (each launch loads several checkpoints, each into a new Accelerator)."""
    z3 = reference_runs.run("--zero", 3)[1]
    ddp = reference_runs.run("--zero", 0)[1]
    loads = {2: [(0, ddp), (0, z3), (3, ddp)], 1: [(3, z3)], 3: [(3, z3), (0, z3), (3, ddp)]}
    got = {}
    for n, specs in loads.items():
        result = launch(n, *[arg for zero, project in specs for arg in ("--load", f"{zero}:{project}")])
        sums = re.findall(r"checksum=(\w+) seen=(\d+) lr=([\d.]+)", result.stdout)
        assert len(sums) == len(specs), result.stdout + result.stderr
        got.update({(n, zero, project.name): found for (zero, project), found in zip(specs, sums, strict=True)})
    reference = got[(2, 0, ddp.name)]  # saved and loaded by DDP on 2 processes
    assert reference[1] == "13"
    for key, found in got.items():
        assert found == reference, key
    # The sharded checkpoint, merged offline into one safetensors model, holds the same weights.
    merged = subprocess.run(["surge", "merge-weights", z3 / "checkpoints" / "checkpoint_0",
                             tmp_path / "merged", "--max_shard_size", "2KB"], env=clean_env(), capture_output=True,
                            text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    assert "model.safetensors.index.json" in merged.stdout
    assert _file_checksum(tmp_path / "merged") == reference[0]


def _file_checksum(directory):
    """The probe's checksum, computed from merged safetensors files."""
    import hashlib
    import json

    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in set(index["weight_map"].values()):
        tensors.update(load_file(directory / file))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("layout", ["zero3", "fsdp_full"])
def test_async_saves_resume_exactly(reference_runs, tmp_path, layout):
    """Checkpoints written in the background every 2 optimizer steps while training goes on
    (ZeRO-3 through DCP's async_save; FSDP FULL_STATE_DICT gathered to full files): the
    newest one resumes bit-identically to an uninterrupted run."""
    flags = ["--zero", 3] if layout == "zero3" else ["--fsdp", "FULL_STATE_DICT"]
    full = checksum(reference_runs.run(*flags)[0])
    launch(2, "--project", tmp_path / "cut", *flags, "--stop_after", 13, "--save_every", 2, "--async_save")
    # saves after micro-steps 4, 8, 11 (optimizer steps 2, 4, 6) and at 13; total_limit=2
    assert _names(tmp_path / "cut") == ["checkpoint_2", "checkpoint_3"]
    files = os.listdir(tmp_path / "cut" / "checkpoints" / "checkpoint_3")
    assert ("model_optimizer" in files) == (layout == "zero3") and ("model_0.safetensors" in files) != (
        layout == "zero3")
    assert checksum(launch(2, "--project", tmp_path / "cut", *flags, "--resume")) == full


def _names(root):
    return sorted(n for n in os.listdir(root / "checkpoints") if not n.startswith("."))


def test_automatic_naming_continues_and_prunes(tmp_path):
    code = (
        "import sys, torch; from surge import Accelerator, ProjectConfiguration\n"
        "acc = Accelerator(project_config=ProjectConfiguration(sys.argv[1], automatic_checkpoint_naming=True, "
        "total_limit=2))\n"
        "m = torch.nn.Linear(2, 2); model, opt = acc.prepare(m, torch.optim.SGD(m.parameters(), 0.1))\n"
        "if sys.argv[2] == 'three':\n"
        "    for _ in range(3): acc.save_state()\n"
        "else:\n"
        "    print('loaded', acc.load_state()); print('saved', acc.save_state())\n"
    )
    run = lambda what: subprocess.run([sys.executable, "-c", code, str(tmp_path), what], env=clean_env(),  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    assert run("three").returncode == 0
    assert _names(tmp_path) == ["checkpoint_1", "checkpoint_2"]
    again = run("resume")
    assert again.returncode == 0, again.stderr
    assert "checkpoint_2" in again.stdout.splitlines()[0] and again.stdout.splitlines()[1].endswith("checkpoint_3")
    assert _names(tmp_path) == ["checkpoint_2", "checkpoint_3"]


def test_a_killed_save_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL while the second checkpoint is being written: the first stays complete and
    load_state() picks it, never the half-written one."""
    code = (
        "import sys, time, torch; from surge import Accelerator, ProjectConfiguration\n"
        "import surge.checkpoint.full as T\n"
        "acc = Accelerator(project_config=ProjectConfiguration(sys.argv[1], automatic_checkpoint_naming=True))\n"
        "model = torch.nn.Linear(256, 256); opt = torch.optim.Adam(model.parameters())\n"
        "model, opt = acc.prepare(model, opt)\n"
        "acc.save_state(); print('first', flush=True)\n"
        "real = T.dedup_storage\n"
        "def slow(*a, **k):\n"
        "    print('writing', flush=True); time.sleep(60); return real(*a, **k)\n"
        "T.dedup_storage = slow\n"
        "acc.save_state()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=clean_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "first"
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _names(tmp_path) == ["checkpoint_0"]  # the second never appeared under its name
    leftovers = [n for n in os.listdir(tmp_path / "checkpoints") if n.startswith(".surge-tmp-")]
    assert leftovers  # the staging directory, which no loader picks
    check = subprocess.run(
        [sys.executable, "-c",
         ("import sys, torch; from surge import Accelerator, ProjectConfiguration\n"
          "acc = Accelerator(project_config=ProjectConfiguration(sys.argv[1], automatic_checkpoint_naming=True))\n"
          "model = torch.nn.Linear(256, 256); opt = torch.optim.Adam(model.parameters())\n"
          "acc.prepare(model, opt); print(acc.load_state())"), str(tmp_path)],
        env=clean_env(), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().endswith("checkpoint_0")


def test_corrupted_checkpoint_names_the_file(tmp_path):
    launch(1, "--project", tmp_path, "--stop_after", 4)
    ckpt = tmp_path / "checkpoints" / "checkpoint_0"
    with open(ckpt / "optimizer_0.pt", "r+b") as f:
        f.truncate(100)
    broken = launch(1, "--project", tmp_path, "--load_only", check=False)
    assert broken.returncode != 0
    assert "optimizer_0.pt' is corrupted or truncated" in broken.stderr
    assert "UnpicklingError" not in broken.stderr.splitlines()[-1]
    (ckpt / "model_0.safetensors").write_bytes(b"garbage")
    broken = launch(1, "--project", tmp_path, "--load_only", check=False)
    assert "model_0.safetensors' is corrupted or truncated" in broken.stderr
