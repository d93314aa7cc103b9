"""DeepSpeedExamples-style scripts (examples/deepspeed/) run on 2 CPU processes with only the
import changed, launched as the deepspeed launcher would be (`--num_gpus 2 script.py
--deepspeed --deepspeed_config ds.json`), save, resume in a new job and continue exactly."""

import json
import os
import shutil

import pytest

from e2e_util import ROOT, run

pytestmark = pytest.mark.e2e
EXAMPLES = os.path.join(ROOT, "examples", "deepspeed")
# example -> (its config, arguments of the uninterrupted run, arguments of the resumed run)
CASES = {
    "cifar_style": ("ds_config.json", ["--epochs", "2", "--samples", "128"], ["--epochs", "2", "--samples", "128"]),
    "bert_style": ("ds_bert.json", ["--epochs", "2"], ["--epochs", "2"]),
    "gan_style": ("ds_gan.json", ["--steps", "8", "--save_every", "4"], ["--steps", "8", "--save_every", "4"]),
}


def launch(example, config, args, losses, save_dir, *extra):
    result = run(["surge", "launch", "--num_gpus", "2", os.path.join(EXAMPLES, f"{example}.py"), "--deepspeed",
                  "--deepspeed_config", os.path.join(EXAMPLES, config), *args, "--save_dir", str(save_dir),
                  "--losses", str(losses), *extra], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads(line) for line in losses.read_text().splitlines()]


def rewind(save_dir):
    """Point every `latest` under ``save_dir`` at its first checkpoint (the one the
    uninterrupted run wrote half-way), as if the run had stopped there."""
    for root, _, files in os.walk(save_dir):
        if "latest" in files:
            tags = sorted((d for d in os.listdir(root) if d.startswith("global_step")),
                          key=lambda tag: int(tag.removeprefix("global_step")))
            with open(os.path.join(root, "latest"), "w") as f:
                f.write(tags[0])


@pytest.mark.parametrize("example", list(CASES))
def test_a_deepspeed_example_resumes_in_a_new_job_exactly(example, tmp_path):
    config, full_args, resume_args = CASES[example]
    reference = launch(example, config, full_args, tmp_path / "full.jsonl", tmp_path / "run")
    copy = tmp_path / "resumed_run"
    shutil.copytree(tmp_path / "run", copy)
    rewind(copy)
    resumed = launch(example, config, resume_args, tmp_path / "resumed.jsonl", copy, "--resume")
    assert len(resumed) >= 2 and len(reference) > len(resumed)
    assert reference[-len(resumed):] == resumed  # the same steps, the same losses, bit for bit
