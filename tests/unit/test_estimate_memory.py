"""`surge estimate-memory` in `accelerate estimate-memory`'s form, checked against
Accelerate's own functions on the same local config (in-process: no launch, no download)."""

import json
import sys
import types

import pytest

from surge.commands.main import main

transformers = pytest.importorskip("transformers")
estimate = pytest.importorskip("accelerate.commands.estimate")

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "gpt2-tied": lambda: transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=32, n_layer=2, n_head=2),
}


def surge_out(capsys, *argv):
    code = main(["estimate-memory", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.fixture
def accelerate_offline(monkeypatch):
    """Accelerate asks the Hub about every model name first; for a local directory the
    answer is "a transformers model" (what the Hub says of one), so no network is needed."""
    monkeypatch.setattr(estimate, "verify_on_hub",
                        lambda repo, token=None: types.SimpleNamespace(config={}, library_name="transformers"))


@pytest.mark.parametrize("kind", CONFIGS)
def test_same_numbers_and_table_as_accelerate(tmp_path, capsys, accelerate_offline, kind):
    CONFIGS[kind]().save_pretrained(tmp_path)
    dtypes = ["float32", "float16", "int8", "int4"]
    args = estimate.estimate_command_parser().parse_args([str(tmp_path), "--library_name", "transformers",
                                                          "--dtypes", *dtypes])
    theirs = estimate.gather_data(args)
    estimate.estimate_command(args)
    printed = capsys.readouterr().out
    their_table = printed[printed.index("┌"):].strip()  # after "Loading pretrained config ..."

    ours = json.loads(surge_out(capsys, tmp_path, "--library_name", "transformers", "--dtypes", *dtypes, "--json"))
    assert [[s["dtype"], s["largest_layer"], s["total_size"], s["training_adam"]] for s in ours["sizes"]] == [
        [dtype, layer, total, None if max(training.values()) == -1 else max(training.values())]
        for dtype, layer, total, training in theirs]
    assert ours["model"] == str(tmp_path) and ours["rows"][0]["strategy"] == "DDP"
    # The table, character for character (the tmp path makes the title wider than the columns), then surge's.
    table = surge_out(capsys, tmp_path, "--dtypes", *dtypes)
    assert table.startswith(their_table + "\n"), table
    assert "Model-state memory per process" in table.removeprefix(their_table)


def test_config_file_bfloat16_and_the_existing_model_form(tmp_path, capsys):
    CONFIGS["llama"]().save_pretrained(tmp_path)
    positional = json.loads(surge_out(capsys, tmp_path / "config.json", "--dtypes", "float16", "bfloat16", "--json"))
    half, bf16 = positional["sizes"]
    assert bf16 | {"dtype": "float16"} == half  # 2 bytes like float16 (Accelerate's CLI does not offer bfloat16)
    flag = json.loads(surge_out(capsys, "--model", tmp_path, "--json"))
    assert flag["parameters"] == positional["parameters"] and [s["dtype"] for s in flag["sizes"]] == [
        "float32", "float16", "int8", "int4"]
    assert "sizes" not in json.loads(surge_out(capsys, "--params", "7e9", "--json"))


@pytest.mark.parametrize("argv, message", [
    (["meta-llama/Llama-2-7b-hf"], ("is not a local path: surge estimate-memory reads local model directories and "
                                   "config.json files and downloads nothing")),
    (["--params", "7e9", "--dtypes", "int8"], "--dtypes, --library_name and --trust_remote_code describe a model"),
])
def test_what_cannot_be_estimated_is_one_line(capsys, argv, message):
    assert main(["estimate-memory", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_timm_architectures_are_built_on_meta_without_weights(capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    calls = []

    def create_model(name, pretrained, **kwargs):
        calls.append((name, pretrained, torch.empty(0).device.type))
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))

    fake = types.SimpleNamespace(is_model=lambda name: name == "tiny_net", create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake)
    out = json.loads(surge_out(capsys, "tiny_net", "--library_name", "timm", "--dtypes", "float32", "--json"))
    assert calls == [("tiny_net", False, "meta")]
    assert out["sizes"][0]["total_size"] == (8 * 16 + 16 + 16 * 4 + 4) * 4  # float32
    assert out["sizes"][0]["largest_layer"] == (8 * 16 + 16) * 4
    assert main(["estimate-memory", "not_a_net", "--library_name", "timm"]) == 1
    assert "neither a timm architecture" in capsys.readouterr().err


def test_per_process_memory_of_a_mesh(tmp_path, capsys):
    """--dp_shard_size / --sp_size / --tp_size: the Llama plan's split parameters divided by
    tp, everything then by dp_shard x sp (fp32 parameters and gradients, Adam state); the
    4-process test (tests/distributed/test_tensor_parallel_ranks.py) measures the formula."""
    from surge.memory import count_parameters, mesh_model_state_bytes, tensor_parallel_parameters

    CONFIGS["llama"]().save_pretrained(tmp_path)
    report = json.loads(surge_out(capsys, tmp_path, "--json", "--dp_shard_size", 2, "--sp_size", 2, "--tp_size", 2))
    mesh = report["mesh"]
    assert (mesh["layout"], mesh["num_processes"], mesh["shard"]) == ("dp_shard 2 x sp 2 x tp 2", 8, 4)
    with __import__("torch").device("meta"):
        model = transformers.LlamaModel(CONFIGS["llama"]())
    # Every linear layer of the 2 blocks and the embedding split; the 5 norms (64 each) stay whole.
    assert mesh["tp_parameters"] == count_parameters(model) - 5 * 64 == tensor_parallel_parameters(model)
    whole = report["parameters"]
    assert mesh["gpu_gb"] * 1e9 == pytest.approx(((whole - 320) / 2 + 320) * (4 + 4 + 8) / 4)
    assert mesh_model_state_bytes(1000, 600, tp=2, shard=4, optimizer_state_bytes=4) == (400 + 300) * 12 / 4
    text = surge_out(capsys, tmp_path, "--tp_size", 2, "--dp_shard_size", 4)
    assert "N-D mesh dp_shard 4 x tp 2 (8 processes)" in " ".join(text.split())
    cp = json.loads(surge_out(capsys, tmp_path, "--json", "--cp_size", 2, "--tp_size", 2))["mesh"]
    assert (cp["layout"], cp["num_processes"], cp["shard"]) == ("cp 2 x tp 2", 4, 2)  # cp shards like dp_shard
    assert main(["estimate-memory", "--params", "1e9", "--tp_size", "2"]) == 1
    assert "--tp_size needs the model" in capsys.readouterr().err
