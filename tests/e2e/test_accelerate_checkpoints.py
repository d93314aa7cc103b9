"""Differential checkpoint test: scripts/checkpoint_compare.py runs once under HF
Accelerate and once under surge, each on 2 processes; the surge run also resumes the
checkpoints the Accelerate run wrote. What users see (parameters, learning rates, each
rank's batches, random draws) must be the same."""

import os

import pytest

from e2e_util import SCRIPTS, launch_compare

pytestmark = pytest.mark.e2e
SCRIPT = os.path.join(SCRIPTS, "checkpoint_compare.py")
CASES = ("fresh", "unused", "resume", "hooks")  # the cases that save (steps does not)


def _launch(lib: str, *args: str) -> dict:
    return launch_compare(SCRIPT, lib, *args)


def _same(ours: dict, theirs: dict, what: str) -> None:
    assert ours.keys() == theirs.keys(), what
    for key, value in ours.items():
        if key == "params":
            assert len(value) == len(theirs[key]), what
            worst = max(abs(a - b) for a, b in zip(value, theirs[key], strict=True))
            assert worst <= 1e-6, (what, worst)
        else:
            assert value == theirs[key], (what, key, value, theirs[key])


def _tail(run: dict, resumed: dict) -> dict:
    """The uninterrupted run's record from where the resumed one starts."""
    n = len(resumed["lrs"])
    return {"params": run["params"], "lrs": run["lrs"][-n:], "data": [d[-n:] for d in run["data"]],
            "draws": [d[-n:] for d in run["draws"]]}


def test_checkpoints_train_as_under_accelerate_and_resume_its_checkpoints(tmp_path):
    """Parameters after N steps (SGD + momentum + a scheduler); save before the first
    optimizer step then resume (Adam: equal to an unsaved run); an unused trainable
    parameter saved and resumed; save at step k + load + continue with dropout and
    noise; diffusers-style save/load pre-hooks. Each resumed run continues exactly as
    the uninterrupted one, under both libraries, and surge continues Accelerate's
    checkpoints exactly as Accelerate's own uninterrupted run."""
    pytest.importorskip("accelerate")
    theirs = _launch("accelerate", "--dir", str(tmp_path))
    ours = _launch("surge", "--dir", str(tmp_path), "--resume-from", str(tmp_path / "accelerate"))
    assert sorted(os.listdir(tmp_path / "accelerate" / "resume")) == [
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl", "scheduler.bin"]
    assert {f"{c}_from_other" for c in CASES} | set(theirs) == set(ours)
    for key in theirs:
        _same(ours[key], theirs[key], key)
    for run in (ours, theirs):
        _same({"params": run["fresh"]["params"]}, {"params": run["fresh_unsaved"]["params"]}, "fresh save")
        for case in CASES:
            resumed = {k: v for k, v in run[f"{case}_resumed"].items() if k != "weights_file"}
            _same(resumed, _tail(run[case], resumed), f"{case} resumed")
        assert not run["hooks_resumed"]["weights_file"] and run["resume_resumed"]["weights_file"]
    for case in CASES:
        _same(ours[f"{case}_from_other"], theirs[f"{case}_resumed"], f"{case} from Accelerate's checkpoint")
