"""Differential test: experiment trackers under surge and under HF Accelerate, on 2
processes (tests/e2e/scripts/trackers_compare.py): the files each tracker wrote, the calls
custom trackers got on each rank, and what the tracking API returned must be the same."""

import json
import os
import subprocess

import pytest

from e2e_util import ROOT, clean_env

pytestmark = pytest.mark.e2e
SCRIPT = os.path.join(ROOT, "tests", "e2e", "scripts", "trackers_compare.py")


def _launch(lib, tmp_path):
    project, out = tmp_path / lib / "project", tmp_path / lib / "out"
    result = subprocess.run(["surge", "launch", "--num_processes", "2", SCRIPT, "--lib", lib,
                             "--project_dir", str(project), "--out", str(out)],
                            cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_trackers_write_and_are_called_as_in_accelerate(tmp_path):
    pytest.importorskip("accelerate")
    pytest.importorskip("tensorboard")
    ours, theirs = _launch("surge", tmp_path), _launch("accelerate", tmp_path)
    for rank in range(2):
        assert ours[rank].keys() == theirs[rank].keys(), rank
        for key in ours[rank]:
            assert ours[rank][key] == theirs[rank][key], (rank, key, ours[rank][key], theirs[rank][key])
    main, other = ours
    # What the comparison covers, so that it cannot pass vacuously:
    assert main["logging_dir"] == "." and "run/events.out.tfevents.*" in main["files"]
    assert [call[0] for call in main["calls"]["recorder"]] == ["init", "start", "config", "log", "log", "note",
                                                               "finish"]
    assert other["calls"]["recorder"] == [["init"]] and other["calls"]["every_rank"] == [["init"], ["note", "direct"]]
    assert main["calls"]["registered"][0][0] == ["init", "run", ".", {"flavour": "x"}]
    assert main["scalars"] == {"loss": [[0, 1.5], [1, 0.5]]}
