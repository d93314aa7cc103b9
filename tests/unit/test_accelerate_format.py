"""load_state reads checkpoints written by HF Accelerate's save_state (built here in
one process with Accelerate's own Accelerator), refuses pickles it cannot load safely
and layouts it does not read; save/load-state pre-hooks with Accelerate's contract."""

from __future__ import annotations

import os
import pickle
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import surge
from surge.checkpoint.accelerate_format import is_accelerate_checkpoint, load_pickle

accelerate = pytest.importorskip("accelerate")


@pytest.fixture
def hf():
    """HF Accelerate's Accelerator class; its process-wide state is reset afterwards."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield accelerate.Accelerator
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


class Counter:
    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def build(acc, counter=None):
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.2), nn.Linear(6, 2)), nn.Linear(3, 1)]
    opts = [torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9),
            torch.optim.Adam(models[1].parameters(), lr=0.01)]
    sched = torch.optim.lr_scheduler.LambdaLR(opts[0], lambda s: 1 / (1 + s))
    out = acc.prepare(*models, *opts, sched)
    if counter is not None:
        acc.register_for_checkpointing(counter)
    return out


def train(acc, m0, m1, o0, o1, sched, counter, steps):
    draws = []
    for _ in range(steps):
        # the random streams Accelerate saves: torch (dropout, noise), Python, NumPy
        x = torch.randn(5, 4) + random.random() + float(np.random.rand())
        acc.backward(m0(x).pow(2).mean() + m1(torch.randn(5, 3)).pow(2).mean())
        for o in (o0, o1):
            o.step()
            o.zero_grad()
        sched.step()
        counter.seen += 1
        draws.append(float(x.sum()))
    return draws


def params(*models):
    return [p.detach().clone() for m in models for p in m.parameters()]


@pytest.mark.parametrize("safe", [True, False])
def test_surge_continues_an_accelerate_checkpoint_exactly(hf, tmp_path, safe):
    acc = hf(cpu=True)
    counter = Counter()
    objs = build(acc, counter)
    train(acc, *objs, counter, 3)
    acc.save_state(str(tmp_path), safe_serialization=safe)
    expected = train(acc, *objs, counter, 3)
    reference, ref_lr = params(objs[0], objs[1]), objs[4].get_last_lr()
    names = set(os.listdir(tmp_path))
    assert {"optimizer.bin", "optimizer_1.bin", "scheduler.bin", "random_states_0.pkl",
            "custom_checkpoint_0.pkl"} <= names
    assert {"model.safetensors", "model_1.safetensors"} <= names if safe else {"pytorch_model.bin",
                                                                               "pytorch_model_1.bin"} <= names
    assert is_accelerate_checkpoint(tmp_path)

    ours = surge.Accelerator(cpu=True)
    counter2 = Counter()
    objs2 = build(ours, counter2)
    assert ours.load_state(str(tmp_path)) == str(tmp_path)
    assert counter2.seen == 3
    assert train(ours, *objs2, counter2, 3) == expected  # same random draws
    assert all(torch.equal(a, b) for a, b in zip(reference, params(objs2[0], objs2[1]), strict=True))
    assert objs2[4].get_last_lr() == ref_lr


def test_optimizer_state_maps_by_position_and_a_stateless_parameter_stays_stateless(hf, tmp_path):
    """Accelerate's optimizer file is keyed by position; a parameter that never got a
    gradient has no state there and gets none here."""
    acc = hf(cpu=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))  # [1] is never used
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    acc.backward(model[0](torch.ones(1, 2)).sum())
    opt.step()
    acc.save_state(str(tmp_path))

    ours = surge.Accelerator(cpu=True)
    torch.manual_seed(1)
    model2 = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    model2, opt2 = ours.prepare(model2, opt2)
    ours.load_state(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters(), strict=True))
    saved, loaded = opt.state_dict(), opt2.state_dict()
    assert sorted(loaded["state"]) == sorted(saved["state"]) == [0, 1]
    for i in (0, 1):
        assert torch.equal(loaded["state"][i]["exp_avg"], saved["state"][i]["exp_avg"])


def test_an_accelerate_checkpoint_that_does_not_fit_is_refused(hf, tmp_path):
    acc = hf(cpu=True)
    acc.prepare(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    acc.save_state(str(tmp_path))
    ours = surge.Accelerator(cpu=True)
    model = nn.Linear(2, 2)
    ours.prepare(model, torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1))
    with pytest.raises(ValueError, match="holds optimizer state for param groups of \\[2\\]"):
        ours.load_state(str(tmp_path))
    ours2 = surge.Accelerator(cpu=True)
    ours2.prepare(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="do not fit model 0"):
        ours2.load_state(str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no weights for model 0"):
        ours2.load_state(str(tmp_path))


class Opaque:
    pass


@pytest.mark.parametrize("value", [Fraction(1, 3), Opaque(), np.arange(3.0)])
def test_pickles_that_are_not_plain_values_are_refused(tmp_path, value):
    """Only tensors, plain values and NumPy's RNG state load; a float64 array is not
    in the allow-list either (only the RNG's uint32 keys are)."""
    path = str(tmp_path / "custom_checkpoint_0.pkl")
    torch.save({"value": value}, path)
    with pytest.raises(ValueError, match=r"weights_only=True.*Convert it"):
        load_pickle(path)


def test_rng_state_files_load_and_nothing_runs(tmp_path):
    path = str(tmp_path / "random_states_0.pkl")
    torch.save({"step": 3, "random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()}, path)
    states = load_pickle(path)
    assert states["step"] == 3 and states["numpy_random_seed"][1].dtype == np.uint32
    with open(path, "wb") as f:  # a pickle that would run code when loaded without weights_only
        pickle.dump({"x": os.system}, f, protocol=2)
    with pytest.raises(ValueError, match="refused"):
        load_pickle(path)


def test_custom_object_pickles_are_checked_and_counted(hf, tmp_path):
    acc = hf(cpu=True)
    acc.prepare(nn.Linear(2, 2))
    acc.register_for_checkpointing(Counter())
    acc.save_state(str(tmp_path))
    ours = surge.Accelerator(cpu=True)
    ours.prepare(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="1 custom_checkpoint"):
        ours.load_state(str(tmp_path))
    torch.save({"seen": Fraction(1, 2)}, tmp_path / "custom_checkpoint_0.pkl")
    ours.register_for_checkpointing(Counter())
    with pytest.raises(ValueError, match=r"fractions\.Fraction"):
        ours.load_state(str(tmp_path))


@pytest.mark.parametrize("layout", ["pytorch_model", "pytorch_model_fsdp_0", "pytorch_model_fsdp_0_rank0.bin"])
def test_deepspeed_and_sharded_fsdp_layouts_are_refused_with_the_conversion(tmp_path, layout):
    torch.save({}, tmp_path / "random_states_0.pkl")
    if layout.endswith(".bin"):
        torch.save({}, tmp_path / layout)
    else:
        os.mkdir(tmp_path / layout)
    ours = surge.Accelerator(cpu=True)
    ours.prepare(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="zero_to_fp32" if layout == "pytorch_model" else "FULL_STATE_DICT"):
        ours.load_state(str(tmp_path))


def test_fsdp_full_state_dict_files_load(tmp_path):
    """FSDP's FULL_STATE_DICT: pytorch_model_fsdp.bin and a name-keyed optimizer.bin."""
    torch.manual_seed(0)
    src = nn.Linear(2, 2)
    opt = torch.optim.Adam(src.parameters(), lr=0.1)
    src(torch.ones(1, 2)).sum().backward()
    opt.step()
    torch.save(src.state_dict(), tmp_path / "pytorch_model_fsdp.bin")
    state = opt.state_dict()
    names = ["weight", "bias"]
    torch.save({"state": {names[i]: v for i, v in state["state"].items()},
                "param_groups": [{**g, "params": names} for g in state["param_groups"]]}, tmp_path / "optimizer.bin")
    ours = surge.Accelerator(cpu=True)
    model = nn.Linear(2, 2)
    model, opt2 = ours.prepare(model, torch.optim.Adam(model.parameters(), lr=0.5))
    with pytest.warns(UserWarning, match="no random_states_0.pkl"):
        ours.load_state(str(tmp_path))
    assert torch.equal(model.weight, src.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert opt2.param_groups[0]["lr"] == 0.1


def test_state_hooks_skip_what_they_save_themselves(tmp_path):
    """Accelerate's contract in surge's own format: a save hook that removes an entry
    from `weights` skips that model's weights (its own file lands in the finished
    checkpoint); a load hook that removes a model skips loading it; handles remove."""
    acc = surge.Accelerator(cpu=True)
    torch.manual_seed(0)
    a, b = acc.prepare(nn.Linear(2, 2), nn.Linear(3, 3))
    calls = []

    def save_hook(models, weights, output_dir):
        calls.append(("save", len(models), [sorted(w) for w in weights]))
        torch.save(models[0].state_dict(), os.path.join(output_dir, "first.pt"))
        weights.pop(0)

    def load_hook(models, input_dir):
        calls.append(("load", len(models), input_dir))
        models.pop(0).load_state_dict(torch.load(os.path.join(input_dir, "first.pt"), weights_only=True))

    handles = [acc.register_save_state_pre_hook(save_hook), acc.register_load_state_pre_hook(load_hook)]
    out = str(tmp_path / "ckpt")
    acc.save_state(out)
    assert calls == [("save", 2, [["bias", "weight"], ["bias", "weight"]])]
    files = set(os.listdir(out))
    assert "first.pt" in files and "model_0.safetensors" in files and "model_1.safetensors" not in files
    saved = params(a, b)
    with torch.no_grad():
        for p in [*a.parameters(), *b.parameters()]:
            p.zero_()
    acc.load_state(out)
    assert calls[-1] == ("load", 2, out)
    assert all(torch.equal(x, y) for x, y in zip(saved, params(a, b), strict=True))
    for handle in handles:
        handle.remove()
    acc.save_state(out)
    assert len(calls) == 2 and "model_1.safetensors" in os.listdir(out)


def test_a_save_hook_may_only_remove_weights(tmp_path):
    acc = surge.Accelerator(cpu=True)
    acc.prepare(nn.Linear(2, 2))
    acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.__setitem__(0, {}))
    with pytest.raises(ValueError, match="may only remove entries"):
        acc.save_state(str(tmp_path / "c"))
    assert not os.path.exists(tmp_path / "c")
    with pytest.raises(TypeError, match="callable"):
        acc.register_load_state_pre_hook("not a hook")


def test_automatic_naming_resumes_the_newest_finished_accelerate_checkpoint(hf, tmp_path):
    from accelerate.utils import ProjectConfiguration as HFProject

    acc = hf(cpu=True, project_config=HFProject(str(tmp_path), automatic_checkpoint_naming=True))
    model = acc.prepare(nn.Linear(2, 2))
    for _ in range(2):
        with torch.no_grad():
            model.weight.add_(1.0)
        acc.save_state()
    want = model.weight.detach().clone()
    os.makedirs(tmp_path / "checkpoints" / "checkpoint_2")  # a save that never got anywhere
    torch.save({}, tmp_path / "checkpoints" / "checkpoint_2" / "optimizer.bin")
    ours = surge.Accelerator(cpu=True, project_config=surge.ProjectConfiguration(str(tmp_path),
                                                                                 automatic_checkpoint_naming=True))
    model2 = ours.prepare(nn.Linear(2, 2))
    assert ours.load_state() == str(tmp_path / "checkpoints" / "checkpoint_1")
    assert torch.equal(model2.weight, want)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_saved_once_by_accelerate_load(hf, tmp_path):
    """safetensors keeps one name of tied weights (Accelerate drops head.weight)."""
    torch.manual_seed(0)
    acc = hf(cpu=True)
    model = acc.prepare(Tied())
    acc.save_state(str(tmp_path))
    torch.manual_seed(1)
    ours = surge.Accelerator(cpu=True)
    model2 = ours.prepare(Tied())
    ours.load_state(str(tmp_path))
    assert torch.equal(model2.emb.weight, model.emb.weight) and model2.head.weight is model2.emb.weight
