"""Rebuild this folder from git checkouts of DeepSpeedExamples and DeepSpeed.

    python tests/data/deepspeed_configs/collect.py EXAMPLES_GIT_DIR DEEPSPEED_GIT_DIR

Takes, at each repository's HEAD: every JSON file that is a DeepSpeed config (it has
DeepSpeed keys); the config dicts that DeepSpeedExamples' Python builds inline (evaluated
with the scripts' defaults, see INLINE); the TEMPLATE files with their placeholders filled
as their shell scripts fill them (features on); and the ```json blocks of DeepSpeed's
docs that parse (a bare ``"key": {...}`` snippet is wrapped in braces). One file per
config, named after its source path. Not run by the tests.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS_KEYS = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "zero_optimization",
           "fp16", "bf16", "bfloat16", "optimizer", "scheduler", "activation_checkpointing", "autotuning",
           "compression_training", "data_efficiency", "flops_profiler", "tensorboard", "wandb", "csv_monitor",
           "comms_logger", "elasticity", "amp", "hybrid_engine", "quantize_training", "sparse_attention",
           "progressive_layer_drop", "curriculum_learning", "comet", "aio", "checkpoint", "pipeline",
           "gradient_clipping", "steps_per_print"}
# Template placeholders: switches on (the feature the template exists for), sizes plausible.
PLACEHOLDERS: dict[str, Any] = {"BATCH_SIZE_PER_GPU": 8, "GB_SIZE": 32, "MB_SIZE": 4, "LTD_MIN": 128, "LTD_STEP": 100,
                                "QuantW_FORWARD": False, "SPARSE_PRUNING_BLOCK_PATTERN": "4x1",
                                "SPARSE_PRUNING_EXCLUDED_MODULES": ["classifier", "pooler"], "S_DENSE_RATIO": 0.5,
                                "R_DENSE_RATIO": 0.5, "H_DENSE_RATIO": 0.5}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def is_deepspeed(config: Any) -> bool:
    """A dict with DeepSpeed's keys (a tokenizer vocabulary has some of them too, among thousands)."""
    return isinstance(config, dict) and bool(DS_KEYS & set(config)) and len(config) < 100


def name_for(source: str, path: str, suffix: str = "") -> str:
    path = path.removesuffix(".json").replace("/", "__")
    return f"{source}--{path}{'--' + suffix if suffix else ''}.json"


def write(name: str, config: dict[str, Any], written: dict[str, str], origin: str) -> None:
    (HERE / name).write_text(json.dumps(config, indent=2) + "\n")
    written[name] = origin


def fill_template(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token in ("true", "false", "null"):
            return match.group(0)
        return ": " + json.dumps(PLACEHOLDERS.get(token, True if "ENABLE" in token else 8))

    return re.sub(r":\s*([A-Za-z][A-Za-z0-9_]*)\b(?=\s*[,}\n])", value, text)


def json_files(repo: Path, source: str, written: dict[str, str], skipped: list[str]) -> None:
    for path in git(repo, "ls-tree", "-r", "HEAD", "--name-only").split("\n"):
        if not path.endswith(".json"):
            continue
        text = git(repo, "show", f"HEAD:{path}")
        try:
            config = json.loads(text)
        except json.JSONDecodeError:
            try:
                config = json.loads(fill_template(text))
            except json.JSONDecodeError:
                skipped.append(f"{source}:{path} (not JSON)")
                continue
        if is_deepspeed(config):
            write(name_for(source, path), config, written, f"{source}:{path}")
        else:
            skipped.append(f"{source}:{path} (not a DeepSpeed config)")


def doc_blocks(repo: Path, written: dict[str, str], skipped: list[str]) -> None:
    paths = [p for p in git(repo, "ls-tree", "-r", "HEAD", "--name-only").split("\n")
             if p.startswith("docs/") and p.endswith(".md")]
    for path in paths:
        text = git(repo, "show", f"HEAD:{path}")
        for number, block in enumerate(re.findall(r"```json\n(.*?)```", text, flags=re.S), start=1):
            body = block.strip().rstrip(",")
            body = body if body.startswith("{") else f"{{{body}}}"
            # DeepSpeed reads config files with hjson, which takes trailing commas.
            candidates = [body, re.sub(r",(\s*[}\]])", r"\1", body)]
            config = None
            for candidate in candidates:
                try:
                    config = json.loads(candidate)
                    break
                except json.JSONDecodeError:
                    continue
            if config is None:
                skipped.append(f"DeepSpeed:{path} json block {number} (a schematic, not JSON)")
            elif is_deepspeed(config):
                write(name_for("DeepSpeed", path, f"block{number:02d}"), config, written,
                      f"DeepSpeed:{path} (```json block {number})")


def _module(repo: Path, path: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run a file's top-level function and constant definitions (imports skipped)."""
    tree = ast.parse(git(repo, "show", f"HEAD:{path}"))
    tree.body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Assign))]
    exec(compile(tree, path, "exec"), namespace)  # DeepSpeedExamples' own config builders
    return namespace


def _dict_at(repo: Path, path: str, line: int, names: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the dict literal that starts at ``line`` with ``names`` for its variables."""
    tree = ast.parse(git(repo, "show", f"HEAD:{path}"))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.Dict) and n.lineno == line)
    return eval(compile(ast.Expression(node), path, "eval"), names)  # the same: the examples' own literals


def inline(repo: Path, written: dict[str, str]) -> None:
    """The config dicts DeepSpeedExamples' Python builds, with its defaults and the
    variants its run scripts pass (features switched on where a flag exists)."""
    stubs = {"dist": types.SimpleNamespace(get_world_size=lambda: 8),
             "get_accelerator": lambda: types.SimpleNamespace(device_count=lambda: 8)}
    chat = "applications/DeepSpeed-Chat/dschat/utils/ds_utils.py"
    ns = _module(repo, chat, dict(stubs))
    variants = {
        "train-offload-bf16-stage2": ns["get_train_ds_config"](offload=True, dtype="bf16", stage=2),
        "train-fp16-stage3-hybrid-tensorboard": ns["get_train_ds_config"](
            offload=False, dtype="fp16", stage=3, enable_hybrid_engine=True, enable_tensorboard=True,
            tb_path="step3_tensorboard", tb_name="ds_actor"),
        "train-bf16-stage3-mixed-precision-lora": ns["get_train_ds_config"](
            offload=False, dtype="bf16", stage=3, enable_mixed_precision_lora=True),
        "eval-offload-fp16-stage3": ns["get_eval_ds_config"](offload=True, dtype="fp16", stage=3),
    }
    for suffix, config in variants.items():
        write(name_for("DeepSpeedExamples", chat, suffix), config, written, f"DeepSpeedExamples:{chat} ({suffix})")
    visual = "applications/DeepSpeed-VisualChat/utils/ds_utils.py"
    ns = _module(repo, visual, {})
    args = types.SimpleNamespace(precision="bf16", enable_tensorboard=True, output_dir="out")
    for suffix, config in {"train-offload-bf16-stage3": ns["get_train_ds_config"](args, offload=True, stage=3),
                           "eval-stage0": ns["get_eval_ds_config"](offload=False)}.items():
        write(name_for("DeepSpeedExamples", visual, suffix), config, written,
              f"DeepSpeedExamples:{visual} ({suffix})")
    torch = types.SimpleNamespace(half="half", float16="float16", bfloat16="bfloat16")
    literals = [
        ("inference/huggingface/text-generation/inference-test.py", 42,
         {"args": types.SimpleNamespace(batch_size=1), "data_type": "half", "torch": torch}),
        ("inference/huggingface/zero_inference/run_model.py", 81,
         {"args": types.SimpleNamespace(batch_size=8), "dtype": "float16", "torch": torch, "hidden_size": 4096}),
        ("training/HelloDeepSpeed/train_bert_ds.py", 783, {"batch_size": 8, "dtype": "bf16"}),
        ("training/cifar/cifar10_deepspeed.py", 119, {"args": types.SimpleNamespace(dtype="fp16", stage=0)}),
        ("training/offload_states/offload_states.py", 126, {}),
    ]
    for path, line, names in literals:
        write(name_for("DeepSpeedExamples", path), _dict_at(repo, path, line, names), written,
              f"DeepSpeedExamples:{path} (line {line})")


def main() -> None:
    examples, deepspeed = Path(sys.argv[1]), Path(sys.argv[2])
    for old in HERE.glob("*.json"):
        old.unlink()
    written: dict[str, str] = {}
    skipped: list[str] = []
    json_files(examples, "DeepSpeedExamples", written, skipped)
    inline(examples, written)
    json_files(deepspeed, "DeepSpeed", written, skipped)
    doc_blocks(deepspeed, written, skipped)
    commits = {name: git(repo, "rev-parse", "HEAD").strip() for name, repo in
               (("microsoft/DeepSpeedExamples", examples), ("microsoft/DeepSpeed", deepspeed))}
    (HERE / "SOURCES.json").write_text(json.dumps({"commits": commits, "configs": written, "skipped": skipped},
                                                  indent=2) + "\n")
    print(f"{len(written)} configs written, {len(skipped)} files or blocks skipped")


if __name__ == "__main__":
    main()
