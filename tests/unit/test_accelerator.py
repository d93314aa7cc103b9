"""The Accelerator on one process: prepare, step, unwrap, save, several instances."""

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, DistributedType, PartialState
from surge.data.loader import PreparedDataLoader
from surge.optim import AcceleratedOptimizer, AcceleratedScheduler
from surge.utils import set_seed


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def data(n=16):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g))


def test_prepare_returns_objects_in_order_and_leaves_others_alone():
    acc = Accelerator()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    loader = DataLoader(data(), batch_size=4)
    tokenizer = {"vocab": 3}
    out = acc.prepare(sched, tokenizer, loader, opt, model, "text", None)
    assert isinstance(out[0], AcceleratedScheduler) and out[1] is tokenizer
    assert isinstance(out[2], PreparedDataLoader) and isinstance(out[3], AcceleratedOptimizer)
    assert out[4] is model and out[5] == "text" and out[6] is None
    assert out[0].optimizers == [out[3]]
    assert acc.prepare(model) is model  # one object: no tuple
    assert acc.prepare(out[3]) is out[3]  # preparing twice is harmless


def test_device_placement_list_must_match():
    acc = Accelerator()
    with pytest.raises(ValueError, match="one bool per object"):
        acc.prepare(tiny(), device_placement=[True, False])


def test_prepare_single_methods_check_types():
    acc = Accelerator()
    with pytest.raises(TypeError, match=r"torch.nn.Module; got str"):
        acc.prepare_model("model")
    with pytest.raises(TypeError, match=r"torch.optim.Optimizer; got list"):
        acc.prepare_optimizer([])
    with pytest.raises(TypeError, match="DataLoader; got list"):
        acc.prepare_data_loader([1, 2])


def test_quick_start_matches_plain_pytorch():
    ref = tiny()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in DataLoader(data(), batch_size=4):
        nn.functional.mse_loss(ref(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad()

    acc = Accelerator()
    model = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt, loader = acc.prepare(model, opt, DataLoader(data(), batch_size=4))
    for x, y in loader:
        acc.backward(nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()
    for a, b in zip(ref.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_wrapper_behaves_like_the_optimizer():
    acc = Accelerator()
    model = tiny()
    raw = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    opt = acc.prepare(raw)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is raw.param_groups and opt.defaults is raw.defaults
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert opt.state is raw.state and len(opt.state) == 4
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == 1e-3
    opt.param_groups[0]["lr"] = 5e-4
    assert raw.param_groups[0]["lr"] == 5e-4
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # An LR scheduler can be built on the prepared optimizer and is advanced by its step.
    sched = acc.prepare(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1)))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    assert sched.get_last_lr() == [pytest.approx(5e-4 / 2)]
    assert opt.step_was_skipped is False and acc.optimizer_step_was_skipped is False
    fresh = torch.optim.AdamW(tiny().parameters())
    fresh_wrapped = acc.prepare(fresh)
    fresh_wrapped.load_state_dict(sd)
    assert fresh.state_dict()["param_groups"][0]["lr"] == 1e-3


def test_unwrap_and_state_dict():
    acc = Accelerator()
    model = acc.prepare(tiny())
    assert acc.unwrap_model(model) is model
    compiled = torch.compile(model)
    assert acc.unwrap_model(compiled, keep_torch_compile=False) is model
    assert acc.unwrap_model(compiled) is compiled  # Accelerate's default keeps the compiled module
    assert acc.get_state_dict(model).keys() == model.state_dict().keys()


def test_save_model_equals_unwrapped_state_dict(tmp_path):
    acc = Accelerator()
    model = acc.prepare(tiny())
    acc.save_model(model, tmp_path / "final")
    loaded = load_file(tmp_path / "final" / "model.safetensors")
    expected = acc.unwrap_model(model).state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    acc.save_model(model, tmp_path / "sharded", max_shard_size=100)
    files = sorted(os.listdir(tmp_path / "sharded"))
    assert "model.safetensors.index.json" in files and len(files) > 2
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    merged = {}
    for f in set(index["weight_map"].values()):
        merged.update(load_file(tmp_path / "sharded" / f))
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


def test_save_model_loads_with_transformers_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    acc = Accelerator()
    prepared = acc.prepare(model)
    for shard in ("10GB", 4000):
        out = tmp_path / str(shard)
        acc.save_model(prepared, out, max_shard_size=shard)
        assert {"config.json", "generation_config.json"} <= set(os.listdir(out))
        again = transformers.LlamaForCausalLM.from_pretrained(out)
        expected = acc.unwrap_model(prepared).state_dict()
        got = again.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_save_is_atomic_and_main_process_only(tmp_path):
    acc = Accelerator()
    acc.save({"a": torch.ones(2)}, tmp_path / "obj.pt")
    assert torch.equal(torch.load(tmp_path / "obj.pt", weights_only=True)["a"], torch.ones(2))
    acc.save({"w": torch.zeros(3)}, tmp_path / "w.safetensors", safe_serialization=True)
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.zeros(3))
    assert sorted(os.listdir(tmp_path)) == ["obj.pt", "w.safetensors"]


def test_several_accelerators_in_one_process():
    a = Accelerator(gradient_accumulation_steps=2)
    with pytest.raises(ValueError):
        Accelerator(mixed_precision="fp12")  # a failed constructor corrupts nothing
    b = Accelerator(gradient_accumulation_steps=4, even_batches=False)
    assert (a.gradient_accumulation_steps, b.gradient_accumulation_steps) == (2, 4)
    assert a.gradient_state is not b.gradient_state and a.even_batches and not b.even_batches
    assert a.distributed_type == DistributedType.NO == "NO"


def test_topology_helpers_on_one_process(capsys):
    acc = Accelerator()
    assert (acc.num_processes, acc.process_index, acc.is_main_process, acc.is_local_main_process) == (1, 0, True, True)
    assert acc.device == torch.device("cpu")
    acc.wait_for_everyone()
    with acc.main_process_first():
        pass
    with acc.split_between_processes([1, 2, 3]) as mine:
        assert mine == [1, 2, 3]
    acc.print("hello")
    assert capsys.readouterr().out == "hello\n"
    assert acc.on_main_process(lambda: 5)() == 5
    assert acc.on_process(lambda: 6, process_index=1)() is None
    state = PartialState()
    assert state.num_processes == 1 and "NO" in repr(state)


def test_collectives_on_one_process():
    acc = Accelerator()
    x = torch.arange(3.0)
    assert torch.equal(acc.gather(x), x)
    assert acc.gather(torch.tensor(2.0)).shape == (1,)
    nested = acc.gather({"a": [x, x[:1]]})
    assert torch.equal(nested["a"][1], x[:1])
    assert torch.equal(acc.reduce(x, "mean"), x)
    assert acc.reduce(torch.tensor([3]), "mean").dtype == torch.float64
    assert torch.equal(acc.pad_across_processes(x), x)
    assert torch.equal(acc.reduce(x, "max"), x) and torch.equal(acc.reduce(x, "min"), x)
    with pytest.raises(ValueError, match="reduction='prod'"):
        acc.reduce(x, "prod")
    with pytest.raises(TypeError, match="gather_object"):
        acc.gather({"a": 1})


def test_set_seed_is_reproducible():
    import random

    import numpy as np

    set_seed(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_seed(123)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    with pytest.raises(TypeError, match="seed='1'"):
        set_seed("1")


def test_ddp_options_are_accepted_on_one_process():
    from surge.utils import DistributedDataParallelKwargs

    acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    model = copy.deepcopy(tiny())
    assert acc.prepare(model) is model


def test_closure_result_and_reduce_none():
    acc = Accelerator()
    model = nn.Linear(1, 1)
    opt = acc.prepare(torch.optim.SGD(model.parameters(), lr=0.1))

    def closure():
        opt.zero_grad()
        loss = model(torch.ones(1, 1)).sum()
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(acc.reduce(x, "none", scale=2.0), x * 2)
