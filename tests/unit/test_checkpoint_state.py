"""save_state / load_state in one process: round trip, exact resume with shuffling and
dropout, background (async) saves, corrupted files, and merge-weights offline."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, ProjectConfiguration
from surge.checkpoint import training
from surge.checkpoint.merge import merge_weights
from surge.utils import set_seed


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.drop = nn.Linear(8, 16), nn.Dropout(0.3)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.inp(x))))


class Counter:
    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def setup(project=None, **kwargs):
    acc = Accelerator(project_config=ProjectConfiguration(project, automatic_checkpoint_naming=True, **kwargs)
                      if project is not None else None)
    set_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(40, 8, generator=g), torch.randn(40, 1, generator=g))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    model, opt, loader, sched = acc.prepare(model, opt, DataLoader(data, batch_size=4, shuffle=True), sched)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, opt, loader, sched, counter


def train(acc, model, opt, loader, sched, counter, epochs=2, stop_after=None, on_stop=None):
    start, skip = loader.epoch, loader.resume_batches
    for _ in range(start, epochs):
        batches = acc.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for x, y in batches:
            loss = nn.functional.mse_loss(model(x), y)
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            counter.seen += 1
            if counter.seen == stop_after:
                return on_stop()
    return None


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_round_trip_restores_everything(tmp_path):
    acc, model, opt, loader, sched, counter = setup()
    train(acc, model, opt, loader, sched, counter, epochs=1)
    path = acc.save_state(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "surge_checkpoint.json").read_text())
    assert manifest["world_size"] == 1 and not manifest["sharded"] and manifest["models"] == 1
    assert set(manifest["files"]) == {"model_0.safetensors", "optimizer_0.pt", "state.pt"}
    want, momentum, lr = params(model), opt.state_dict()["state"][0]["momentum_buffer"].clone(), sched.get_last_lr()
    fresh = setup()
    assert fresh[0].load_state(path) == path
    _, model2, opt2, loader2, sched2, counter2 = fresh
    assert all(torch.equal(v, want[k]) for k, v in params(model2).items())
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], momentum)
    assert sched2.get_last_lr() == lr and counter2.seen == counter.seen == 10 and loader2.epoch == 1


def test_exact_resume_mid_epoch_with_shuffling_and_dropout(tmp_path):
    """Stopped mid-second-epoch, resumed from the checkpoint: bit-identical."""
    full = setup()
    train(*full, epochs=3)
    cut = setup(tmp_path)
    train(*cut, epochs=3, stop_after=14, on_stop=cut[0].save_state)
    set_seed(123)  # the resumed run must not depend on the RNG it starts with
    resumed = setup(tmp_path)
    resumed[0].load_state()
    assert resumed[3].epoch == 1 and resumed[3].resume_batches == 4
    train(*resumed, epochs=3)
    assert resumed[5].seen == full[5].seen == 30
    assert all(torch.equal(v, params(full[1])[k]) for k, v in params(resumed[1]).items())


def test_resume_one_liner_is_a_no_op_without_a_checkpoint_and_continues_the_loader(tmp_path):
    """``load_state(missing_ok=True)`` + a plain loop: a first run starts fresh, a second
    continues mid-epoch (the loader skips the batches already seen by itself) and ends
    bit-identical to an uninterrupted run."""
    def run(acc, model, opt, loader, sched, counter, stop_after=None):
        for _ in range(loader.epoch, 3):
            for x, y in loader:
                acc.backward(nn.functional.mse_loss(model(x), y))
                opt.step()
                sched.step()
                opt.zero_grad()
                counter.seen += 1
                if counter.seen == stop_after:
                    acc.save_state()
                    return

    full = setup()
    run(*full)
    first = setup(tmp_path)
    assert first[0].load_state(missing_ok=True) is None
    assert first[3].epoch == 0 and first[3].resume_batches == 0
    run(*first, stop_after=14)
    second = setup(tmp_path)
    assert second[0].load_state(missing_ok=True).endswith("checkpoint_0")
    assert second[3].epoch == 1 and second[3].resume_batches == 4
    run(*second)
    assert second[5].seen == full[5].seen == 30
    assert all(torch.equal(v, params(full[1])[k]) for k, v in params(second[1]).items())
    with pytest.raises(TypeError, match="missing_ok"):
        second[0].load_state(missing_ok="yes")


def test_no_checkpoint_without_missing_ok_names_the_fix(tmp_path):
    acc = setup(tmp_path)[0]
    with pytest.raises(ValueError, match=r"no complete checkpoint under .*missing_ok=True"):
        acc.load_state()


def test_the_accumulation_cycle_position_is_saved_and_a_mid_cycle_save_warns(tmp_path):
    acc = Accelerator(gradient_accumulation_steps=3)
    model = acc.prepare(nn.Linear(2, 1))
    for _ in range(4):  # cycle 1 closes at 3; the 4th micro-step opens cycle 2
        with acc.accumulate(model):
            pass
    with pytest.warns(UserWarning, match="micro-step 1 of an accumulation cycle of 3"):
        path = acc.save_state(tmp_path / "mid")
    again = Accelerator(gradient_accumulation_steps=3)
    again.prepare(nn.Linear(2, 1))
    again.load_state(path)
    assert (again.gradient_state.step, again.gradient_state.cycle_step) == (4, 1)
    syncs = []
    for _ in range(2):
        with again.accumulate():
            syncs.append(again.sync_gradients)
    assert syncs == [False, True]  # the resumed cycle closes where the original one would


def test_async_save_writes_the_state_of_the_moment_while_training_goes_on(tmp_path, monkeypatch):
    acc, model, opt, loader, sched, counter = setup(tmp_path)
    train(acc, model, opt, loader, sched, counter, epochs=1)
    release = threading.Event()
    real = training.replace_directory

    def held(staging, directory):
        assert release.wait(30)
        real(staging, directory)

    monkeypatch.setattr(training, "replace_directory", held)
    want = params(model)
    path = acc.save_state(async_save=True)
    assert path.endswith("checkpoint_0") and not os.path.exists(path)  # not there until complete
    train(acc, model, opt, loader, sched, counter, epochs=2)  # training changes the weights meanwhile
    assert not all(torch.equal(v, want[k]) for k, v in params(model).items())
    release.set()
    assert acc.wait_for_checkpoint() == path and acc.wait_for_checkpoint() is None
    saved = load_file(os.path.join(path, "model_0.safetensors"))
    assert all(torch.equal(saved[k], want[k]) for k in want)


def test_async_saves_wait_for_each_other_and_prune_after_completion(tmp_path):
    acc, model, opt, loader, sched, counter = setup(tmp_path, total_limit=2)
    for _ in range(3):
        train(acc, model, opt, loader, sched, counter, epochs=loader.epoch + 1)
        acc.save_state(async_save=True)
    acc.end_training()
    visible = sorted(n for n in os.listdir(tmp_path / "checkpoints") if not n.startswith("."))
    assert visible == ["checkpoint_1", "checkpoint_2"]  # the pruned one is hidden at once, deleted in a thread
    want = params(model)
    fresh = setup(tmp_path)
    assert fresh[0].load_state().endswith("checkpoint_2")
    assert all(torch.equal(v, want[k]) for k, v in params(fresh[1]).items())


def test_a_failed_async_save_is_reported_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    acc, *_ = setup(tmp_path)
    first = acc.save_state()

    def broken(staging, directory):
        raise OSError("disk full")

    monkeypatch.setattr(training, "replace_directory", broken)
    acc.save_state(async_save=True)
    with pytest.raises(RuntimeError,
                       match=r"background save of checkpoint .*checkpoint_1.* failed: OSError: disk full"):
        acc.wait_for_checkpoint()
    monkeypatch.undo()
    assert setup(tmp_path)[0].load_state() == first


def test_async_save_rejects_non_bool(tmp_path):
    acc, *_ = setup(tmp_path)
    with pytest.raises(TypeError, match="async_save"):
        acc.save_state(async_save="yes")


def test_corrupted_files_are_named(tmp_path):
    acc, *_ = setup()
    path = acc.save_state(tmp_path / "ckpt")
    with open(os.path.join(path, "optimizer_0.pt"), "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match=r"optimizer_0\.pt.* corrupted or truncated"):
        setup()[0].load_state(path)
    (tmp_path / "ckpt" / "surge_checkpoint.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"surge_checkpoint\.json.* corrupted"):
        setup()[0].load_state(path)


# -- merge-weights ------------------------------------------------------------------------


def test_merge_weights_from_a_full_checkpoint(tmp_path):
    acc, model, *_ = setup()
    path = acc.save_state(tmp_path / "ckpt")
    assert merge_weights(path, tmp_path / "out") == ["model.safetensors"]
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert merged.keys() == model.state_dict().keys()
    assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())
    assert merge_weights(path, tmp_path / "half", dtype="bfloat16", max_shard_size=300) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    index = json.loads((tmp_path / "half" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(merged)
    shard = load_file(tmp_path / "half" / index["weight_map"]["inp.weight"])
    assert shard["inp.weight"].dtype == torch.bfloat16


def test_merge_weights_reads_dcp_offline(tmp_path):
    """A DCP directory written by one process reads back whole with no process group."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {"a.weight": torch.randn(4, 3), "b.bias": torch.arange(5)}, "step": 3}
    with warnings.catch_warnings():  # DCP warns that there is no process group: one process is the case here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    merge_weights(tmp_path / "dcp", tmp_path / "out")
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert set(merged) == {"model.a.weight", "model.b.bias"}
    assert torch.equal(merged["model.a.weight"], state["model"]["a.weight"])


def test_merge_weights_follows_latest(tmp_path):
    acc, model, *_ = setup()
    acc.save_state(tmp_path / "run" / "global_step7")
    (tmp_path / "run" / "latest").write_text("global_step7")
    merge_weights(tmp_path / "run", tmp_path / "out")
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["out.bias"], model.state_dict()["out.bias"])


def test_merge_weights_errors(tmp_path):
    acc, *_ = setup()
    path = acc.save_state(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a checkpoint"):
        merge_weights(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="is not a directory"):
        merge_weights(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match=r"model index 1 is out of range: .* holds 1 model"):
        merge_weights(path, tmp_path / "out", model_index=1)
    with pytest.raises(ValueError, match="inside the checkpoint"):
        merge_weights(path, os.path.join(path, "merged"))
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        merge_weights(path, tmp_path / "out", dtype="int8")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latest").write_text("global_step9")
    with pytest.raises(ValueError, match="names 'global_step9', which is not a directory"):
        merge_weights(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_weights_cli_one_line_errors(tmp_path):
    acc, _model, *_ = setup()
    path = acc.save_state(tmp_path / "ckpt")
    ok = subprocess.run(["surge", "merge-weights", path, str(tmp_path / "out"), "--dtype",
                         "float16"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "wrote model.safetensors" in ok.stdout
    assert load_file(tmp_path / "out" / "model.safetensors")["inp.weight"].dtype == torch.float16
    bad = subprocess.run(["surge", "merge-weights", str(tmp_path / "nope"), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "is not a directory" in bad.stderr


def test_saving_before_the_first_step_changes_nothing(tmp_path):
    """torch creates a fresh optimizer's state with a zero-gradient step (Adam's step
    count becomes 1): a save before the first step must not change this run or a resumed one."""

    def run(save=None, load=None):
        acc = Accelerator()
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)
        if save is not None:
            acc.save_state(save)
            assert not opt.state  # the live optimizer is still fresh
        if load is not None:
            acc.load_state(load)
        for _ in range(2):
            acc.backward(model(torch.ones(2, 3)).pow(2).mean())
            opt.step()
            opt.zero_grad()
        return model.weight.detach().clone()

    plain = run()
    assert torch.equal(run(save=tmp_path / "c"), plain)
    assert torch.equal(run(load=tmp_path / "c"), plain)


def test_a_parameter_without_gradients_saves_and_resumes(tmp_path):
    """A trainable parameter that never receives a gradient (an unused pooler) has no
    optimizer state: the checkpoint loads, and the parameter still has none after it."""

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.pooler = nn.Linear(3, 1), nn.Linear(3, 3)

        def forward(self, x):
            return self.body(x)

    def run(save=None, load=None):
        acc = Accelerator()
        torch.manual_seed(0)
        model = Pooled()
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)
        if load is not None:
            acc.load_state(load)
            assert model.pooler.weight not in opt.state  # as in the run that saved it
        for step in range(0 if load is None else 2, 4):
            if step == 2 and save is not None:
                acc.save_state(save)
            acc.backward(model(torch.full((2, 3), float(step))).pow(2).mean())
            opt.step()
            opt.zero_grad()
        return model.body.weight.detach().clone()

    whole = run(save=tmp_path / "c")
    assert torch.equal(run(load=tmp_path / "c"), whole)
