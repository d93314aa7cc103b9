"""save/load_fsdp_model, save/load_fsdp_optimizer and merge_fsdp_weights on one process
(Accelerate's file layout; the 2-process checks are in tests/distributed/test_sharding.py)."""

import os

import pytest
import torch
from safetensors.torch import load_file

from surge import Accelerator, FullyShardedDataParallelPlugin
from surge.testing.parity import BlockModel
from surge.utils import load_fsdp_model, load_fsdp_optimizer, merge_fsdp_weights, save_fsdp_model, save_fsdp_optimizer

FULL = FullyShardedDataParallelPlugin(state_dict_type="FULL_STATE_DICT")
SHARDED = FullyShardedDataParallelPlugin(state_dict_type="SHARDED_STATE_DICT")


def trained(acc):
    model = BlockModel()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    acc.backward(model(torch.ones(2, 8)).sum())
    opt.step()
    return model, opt


def fresh(acc):
    model = BlockModel(seed=5)
    return acc.prepare(model, torch.optim.Adam(model.parameters(), lr=0.1))


def same_optimizer_state(a, b):
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k][n], sb[k][n]) for k in sa for n in sa[k])


@pytest.mark.parametrize("plugin", [FULL, SHARDED], ids=["full", "sharded"])
def test_model_and_optimizer_round_trip(tmp_path, plugin):
    acc = Accelerator()
    model, opt = trained(acc)
    save_fsdp_model(plugin, acc, model, tmp_path, model_index=1)
    save_fsdp_optimizer(plugin, acc, opt, model, tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert names == (["optimizer.bin", "pytorch_model_fsdp_1.bin"] if plugin is FULL
                     else ["optimizer_0", "pytorch_model_fsdp_1"])
    other, other_opt = fresh(acc)
    load_fsdp_model(plugin, acc, other, tmp_path, model_index=1)
    load_fsdp_optimizer(plugin, acc, other_opt, other, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    assert same_optimizer_state(opt, other_opt)
    if plugin is FULL:
        saved = torch.load(tmp_path / "pytorch_model_fsdp_1.bin", weights_only=True)
        assert saved.keys() == model.state_dict().keys()


def test_merge_fsdp_weights_writes_one_model(tmp_path):
    acc = Accelerator()
    model, _ = trained(acc)
    save_fsdp_model(SHARDED, acc, model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="pytorch_model_fsdp_0 rather than being one"):
        merge_fsdp_weights(tmp_path / "ckpt", tmp_path / "out")
    merge_fsdp_weights(tmp_path / "ckpt" / "pytorch_model_fsdp_0", tmp_path / "out")
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged.keys() == model.state_dict().keys()  # {"model": ...} unwrapped, as Accelerate does
    assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())
    merge_fsdp_weights(tmp_path / "ckpt" / "pytorch_model_fsdp_0", tmp_path / "bin", safe_serialization=False,
                       remove_checkpoint_dir=True)
    assert os.listdir(tmp_path / "bin") == ["pytorch_model.bin"]
    assert not (tmp_path / "ckpt" / "pytorch_model_fsdp_0").exists()


def test_accelerates_merge_reads_what_surge_saved(tmp_path):
    utils = pytest.importorskip("accelerate.utils")
    acc = Accelerator()
    model, _ = trained(acc)
    save_fsdp_model(SHARDED, acc, model, tmp_path / "ckpt")
    utils.merge_fsdp_weights(str(tmp_path / "ckpt" / "pytorch_model_fsdp_0"), str(tmp_path / "theirs"))
    theirs = load_file(tmp_path / "theirs" / "model.safetensors")
    assert theirs.keys() == model.state_dict().keys()
    assert all(torch.equal(theirs[k], v) for k, v in model.state_dict().items())


def test_unavailable_modes_are_refused(tmp_path):
    acc = Accelerator()
    model, _ = trained(acc)
    with pytest.raises(ValueError, match="use_dcp=False"):
        save_fsdp_model(SHARDED, acc, model, tmp_path, use_dcp=False)
    with pytest.raises(ValueError, match="adapter_only=True"):
        load_fsdp_model(FULL, acc, model, tmp_path, adapter_only=True)
    with pytest.raises(ValueError, match="does not exist"):
        load_fsdp_model(FULL, acc, model, tmp_path)
