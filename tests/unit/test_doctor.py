"""surge doctor: each mistake of the corpus found at its line, right scripts and the
project's own examples and docs clean, the CLI's exit codes and JSON, the generated docs page."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from surge.commands.main import main
from surge.doctor import RULES, DoctorError, check_file, check_source, read_settings
from surge.doctor.check import model_size
from surge.doctor.docs import render

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "doctor"
SCRIPTS = sorted(CORPUS.glob("*.py"))
EXPECT = re.compile(r"#.*doctor: expect ([\w-]+)")
CONFIG = re.compile(r"^# doctor: config (\S+)", re.M)


def expected(path: Path) -> set[tuple[int, str]]:
    return {(number, match.group(1)) for number, line in enumerate(path.read_text().splitlines(), 1)
            if (match := EXPECT.search(line))}


def findings(path: Path) -> set[tuple[int, str]]:
    config = CONFIG.search(path.read_text())
    settings = read_settings(str(CORPUS / config.group(1))) if config else None
    return {(f.line, f.rule) for f in check_file(str(path), settings)}


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_corpus(path):
    """Mistaken scripts: exactly the marked lines, with the marked rule; right ones: nothing."""
    assert findings(path) == expected(path)


def test_the_corpus_covers_every_rule():
    covered = {rule for path in SCRIPTS for _, rule in expected(path)}
    assert covered == {rule.id for rule in RULES}
    assert any(path.stem.startswith("correct") for path in SCRIPTS)


def _examples() -> list[Path]:
    return sorted((ROOT / "examples").rglob("*.py"))


@pytest.mark.parametrize("path", _examples(), ids=[str(p.relative_to(ROOT)) for p in _examples()])
def test_no_false_alarms_on_the_examples(path):
    assert [f.text() for f in check_file(str(path))] == []


def test_no_false_alarms_on_the_docs():
    """Every Python block of README.md and docs/*.md that parses (docs/mistakes.md shows mistakes on purpose)."""
    checked = 0
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page.name == "mistakes.md":
            continue
        for number, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            try:
                ast.parse(block)
            except SyntaxError:
                continue
            checked += 1
            assert [f.text() for f in check_source(block, f"{page.name} block {number}")] == []
    assert checked >= 10


def test_the_mistakes_page_is_generated_from_the_rules():
    """docs/mistakes.md == `python -m surge.doctor.docs` (regenerate it after changing rules.py)."""
    assert (ROOT / "docs" / "mistakes.md").read_text() == render()


def test_each_rule_example_is_python_and_the_mistake_is_found():
    ids = [rule.id for rule in RULES]
    assert len(ids) == len(set(ids))
    for rule in RULES:
        ast.parse(rule.mistake)
        ast.parse(rule.fixed)
        assert rule.severity in ("warning", "info")
        assert not rule.fix.endswith(".") and not rule.what.endswith(".")


def test_bindings_the_checker_follows():
    """Accelerator names from every import form; tuple unpacking maps prepare's positions."""
    for header in ("from accelerate import Accelerator as A\nacc = A()",
                   "import surge\nacc = surge.Accelerator()",
                   "import accelerate\nacc = accelerate.Accelerator()",
                   "from surge.accelerator import Accelerator\nacc = Accelerator()"):
        source = (f"import torch\n{header}\nnet = torch.nn.Linear(2, 2)\n"
                  "opt = torch.optim.SGD(net.parameters(), lr=1)\n"
                  "dl = torch.utils.data.DataLoader([1, 2])\n"
                  "opt2, net2, dl2 = acc.prepare(opt, net, dl)\n"
                  "net2.cuda()\nnet.cuda()\nopt2.cuda()\n")
        found = [(f.line, f.rule) for f in check_source(source)]
        assert found == [(8, "manual-device-placement")], header


def test_what_is_not_certain_is_not_reported():
    quiet = [
        # the Accelerator's arguments may turn placement off
        "from surge import Accelerator\nacc = Accelerator(**kw)\nm = acc.prepare(model)\nm.train()\nm.cuda()\n",
        # an unknown object passed to prepare (a dataset? a model?) is not assumed to be a model
        "from surge import Accelerator\nacc = Accelerator()\nthing = acc.prepare(thing)\nthing.cuda()\n",
        # accumulation from a variable
        "from surge import Accelerator\nacc = Accelerator(gradient_accumulation_steps=n)\nacc.backward(loss)\n",
        # without --config the launch config decides the accumulation steps
        "from surge import Accelerator\nacc = Accelerator()\nacc.backward(loss)\n",
        # no accelerator at all: plain torch may do all of this
        "import os, torch\nrank = int(os.environ['RANK'])\nloss.backward()\nx = torch.device('cuda:0')\n",
        # a rank check that is not one: `or`
        ("from surge import Accelerator\nacc = Accelerator()\nif acc.is_main_process or flag:\n"
         "    acc.wait_for_everyone()\n"),
        # a model from a name the checker cannot read
        ("from surge import Accelerator, DeepSpeedPlugin\nfrom transformers import AutoModel\n"
         "acc = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3))\nm = AutoModel.from_pretrained(name)\n"),
    ]
    for source in quiet:
        assert check_source(source) == [], source


def test_config_settings(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("use_deepspeed: true\ngradient_accumulation_steps: 4\n")
    assert (read_settings(str(yaml_file)).zero_stage, read_settings(str(yaml_file)).accumulation) == (2, 4)
    accelerate_file = tmp_path / "a.yaml"
    accelerate_file.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
                               "mixed_precision: bf16\ndeepspeed_config:\n  zero_stage: 3\n"
                               "  gradient_accumulation_steps: 2\n")
    settings = read_settings(str(accelerate_file))
    assert (settings.mixed_precision, settings.zero_stage, settings.accumulation) == ("bf16", 3, 2)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 8, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3}}))
    assert (read_settings(str(ds)).zero_stage, read_settings(str(ds)).mixed_precision) == (3, "bf16")
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_key: 1\n")
    with pytest.raises(DoctorError, match="no_such_key"):
        read_settings(str(bad))
    assert (model_size("gpt2"), model_size("Qwen/Qwen2.5-0.5B-Instruct"), model_size("meta-llama/Llama-2-7b-hf"),
            model_size("my-model")) == (124, 500, 7000, None)


def test_cli_exit_codes_and_output(tmp_path, capsys):
    assert main(["doctor", str(CORPUS / "correct_basic.py")]) == 0
    assert capsys.readouterr().out == "surge doctor: no mistakes found in 1 script\n"

    assert main(["doctor", str(CORPUS / "backward.py")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{CORPUS / 'backward.py'}:14: loss.backward() skips the accelerator (loss scaling, "
                      "accumulation, sharded gradients); call accelerator.backward(loss)")
    assert out[1] == "surge doctor: 1 mistake in 1 script (see docs/mistakes.md)"

    # advice only: printed, exit code 0
    assert main(["doctor", str(CORPUS / "zero3_small.py")]) == 0
    assert "[info] ZeRO-3 shards 'gpt2'" in capsys.readouterr().out

    assert main(["doctor", "--json", str(CORPUS / "hard_rank.py"), str(CORPUS / "correct_basic.py")]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["line"], d["rule"]) for d in data] == sorted(expected(CORPUS / "hard_rank.py"))
    assert set(data[0]) == {"file", "line", "rule", "severity", "message", "fix"}
    assert data[0]["file"] == str(CORPUS / "hard_rank.py")

    assert main(["doctor", "--json", str(CORPUS / "correct_basic.py")]) == 0
    assert json.loads(capsys.readouterr().out) == []

    # a directory: every .py file under it
    assert main(["doctor", str(ROOT / "examples")]) == 0
    assert capsys.readouterr().out == f"surge doctor: no mistakes found in {len(_examples())} scripts\n"

    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n    pass\n")
    for argv in (["doctor", str(broken)], ["doctor", str(tmp_path / "missing.py")],
                 ["doctor", str(CORPUS / "backward.py"), "--config", str(tmp_path / "missing.yaml")]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1 and captured.err.startswith("surge doctor: error: "), captured.err
    assert main(["doctor", str(broken)]) == 2
    assert f"{broken}:1: cannot parse" in capsys.readouterr().err


def test_doctor_runs_without_torch(tmp_path):
    """The one subprocess: `surge doctor` imports neither torch nor the script."""
    script = tmp_path / "train.py"
    script.write_text("import torch\nraise SystemExit('executed!')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = ("import sys; from surge.commands.main import main; rc = main(['doctor', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "no mistakes found" in result.stdout
