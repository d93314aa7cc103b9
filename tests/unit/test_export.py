"""Model export: safetensors files, shards with an index, atomic replacement."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from surge.checkpoint.atomic import atomic_write
from surge.checkpoint.export import parse_size, save_weights


@pytest.mark.parametrize(
    "value, size", [(100, 100), ("10GB", 10**10), ("5MB", 5 * 10**6), ("2GiB", 2 * 2**30), ("1.5kb", 1500), ("7", 7)]
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value, err", [("lots", ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)])
def test_parse_size_errors(value, err):
    with pytest.raises(err, match="max_shard_size="):
        parse_size(value)


def state(n=6):
    torch.manual_seed(0)
    return {f"layer{i}.weight": torch.randn(32, 32) for i in range(n)}


def test_single_file(tmp_path):
    sd = state()
    assert save_weights(sd, tmp_path) == ["model.safetensors"]
    loaded = load_file(tmp_path / "model.safetensors")
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temporary leftovers


def test_shards_and_index(tmp_path):
    sd = state()
    files = save_weights(sd, tmp_path, max_shard_size=2 * 32 * 32 * 4)
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 32 * 32 * 4
    assert set(index["weight_map"]) == set(sd)
    merged = {}
    for f in files[:-1]:
        merged.update(load_file(tmp_path / f))
    assert all(torch.equal(merged[k], sd[k]) for k in sd)


def test_resave_removes_stale_shards_after_writing(tmp_path):
    sd = state()
    save_weights(sd, tmp_path, max_shard_size=2 * 32 * 32 * 4)
    (tmp_path / "tokenizer.json").write_text("{}")
    save_weights(sd, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "tokenizer.json"]


def test_pickle_format(tmp_path):
    sd = state(2)
    assert save_weights(sd, tmp_path, safe_serialization=False) == ["pytorch_model.bin"]
    loaded = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_tied_weights_are_written_once(tmp_path):
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    save_weights(model.state_dict(), tmp_path)
    loaded = load_file(tmp_path / "model.safetensors")
    assert list(loaded) == ["emb.weight"]


def test_views_of_one_storage_are_copied(tmp_path):
    base = torch.arange(12.0)
    save_weights({"a": base[:6], "b": base[6:]}, tmp_path)
    loaded = load_file(tmp_path / "model.safetensors")
    assert loaded["a"].tolist() == list(range(6)) and loaded["b"].tolist() == list(range(6, 12))


def test_file_as_directory_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        save_weights(state(1), tmp_path / "f")


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "obj.pt"
    torch.save({"v": 1}, target)

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["obj.pt"]


def test_new_directory_appears_whole(tmp_path):
    target = tmp_path / "model"
    save_weights(state(), target, max_shard_size=2 * 32 * 32 * 4)
    assert os.listdir(tmp_path) == ["model"]  # staged beside it, renamed in one step
    assert len(os.listdir(target)) == 4
