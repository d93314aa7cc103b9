"""Shared uninterrupted runs of scripts/resume_probe.py: several checkpoint and
reliability tests compare against the same reference run, so each is launched once
per session (a launch costs seconds of process start-up on a small machine)."""

import os
import subprocess

import pytest

from e2e_util import ROOT, SCRIPTS, clean_env

PROBE = os.path.join(SCRIPTS, "resume_probe.py")
SAVED_AT = 13  # the micro-step of the checkpoint a reference run leaves: mid-second-epoch, mid-cycle


class ReferenceRuns:
    """``run(*flags)``: 2 processes train resume_probe.py to the end with ``flags``,
    saving one checkpoint (synchronously) at micro-step 13 on the way; returns the
    completed process and the project directory. Launched once per set of flags.
    Tests only read the project (load or resume from it; neither writes)."""

    def __init__(self, root):
        self.root = root
        self.runs = {}

    def run(self, *flags):
        flags = tuple(map(str, flags))
        if flags not in self.runs:
            project = self.root / ("run" + "_".join(f.strip("-") for f in ("", *flags)))
            result = subprocess.run(["surge", "launch", "--num_processes", "2", PROBE, "--project", str(project),
                                     "--save_at", str(SAVED_AT), *flags], cwd=ROOT, env=clean_env(),
                                    capture_output=True, text=True, timeout=300, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            assert os.listdir(project / "checkpoints") == ["checkpoint_0"]
            self.runs[flags] = result, project
        return self.runs[flags]


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory):
    return ReferenceRuns(tmp_path_factory.mktemp("reference-runs"))
