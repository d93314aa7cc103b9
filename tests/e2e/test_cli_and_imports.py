"""`import surge` and `surge --help` stay light."""

import subprocess
import sys

import pytest

from e2e_util import clean_env, run

pytestmark = pytest.mark.e2e

PROBE = """
import sys, json
import torch
torch_own = set(sys.modules)
import surge
light = "torch" not in sys.modules
from surge import Accelerator, PartialState
import surge.utils
added = sorted(m for m in set(sys.modules) - torch_own if m.startswith("torch.distributed"))
trackers = sorted(m for m in sys.modules if m.split(".")[0] in ("wandb", "mlflow", "tensorboard", "torchao",
                                                               "transformers", "tensorboardX"))
print(json.dumps({"added": added, "trackers": trackers}))
"""


def test_import_surge_loads_no_extra_distributed_modules_or_trackers():
    result = run([sys.executable, "-c", PROBE])
    assert result.returncode == 0, result.stderr
    import json

    got = json.loads(result.stdout)
    assert got == {"added": [], "trackers": []}


def test_import_surge_alone_does_not_import_torch():
    result = run([sys.executable, "-c", "import sys, surge; print('torch' in sys.modules, surge.__version__)"])
    assert result.stdout.split()[0] == "False", result.stderr


def test_surge_help_does_not_import_torch():
    code = "import sys; from surge.commands.main import main; main(['--help'])"
    result = run([sys.executable, "-c", code + "\n"])
    assert result.returncode == 0 and "usage: surge" in result.stdout
    probe = run([sys.executable, "-c", ("import sys\nfrom surge.commands.main import main\n"
                 "for argv in (['--help'], ['estimate-memory', '--help'], ['launch', '--help']):\n"
                 "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
                 "print('torch' in sys.modules)")])
    assert "surge estimate-memory" in probe.stdout and probe.stdout.strip().endswith("False"), probe.stdout


def test_console_script():
    result = subprocess.run(["surge", "--version"], capture_output=True, text=True, env=clean_env())
    assert result.returncode == 0 and result.stdout.startswith("surge ")
