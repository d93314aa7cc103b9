"""Run-time advice (surge/advice.py): each warning fires once, at the user's line, and
never for correct code; ``warnings="off"`` (argument or config key) silences them all."""

from __future__ import annotations

import linecache
import warnings
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from surge import Accelerator, advice
from surge.advice import SurgeAdvice


@pytest.fixture(autouse=True)
def _fresh_advice():
    advice.forget_given()
    yield
    advice.forget_given()


def _prepared(**kwargs):
    acc = Accelerator(cpu=True, **kwargs)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def _loss(model):
    return model(torch.randn(3, 4)).pow(2).mean()


def _advice(records):
    return [r for r in records if issubclass(r.category, SurgeAdvice)]


def _at_line(record, text):
    """The warning is located at this file, on a line holding ``text``, and its message
    names that file:line."""
    assert record.filename == __file__
    assert text in linecache.getline(__file__, record.lineno)
    assert f"[{__file__}:{record.lineno}]" in str(record.message)


@pytest.fixture
def records():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


# -- 1. gradients made without accelerator.backward --------------------------------------------


def test_loss_backward_with_accumulation_warns_once_at_the_step(records):
    acc, model, opt = _prepared(gradient_accumulation_steps=2)
    for _ in range(6):
        with acc.accumulate(model):
            _loss(model).backward()
            opt.step()  # the line named
            opt.zero_grad()
    found = [r for r in _advice(records) if "accelerator.backward was not called" in str(r.message)]
    assert len(found) == 1
    _at_line(found[0], "opt.step()  # the line named")
    assert "gradient_accumulation_steps=2" in str(found[0].message)
    assert "accelerator.backward(loss)" in str(found[0].message)


def test_loss_backward_under_fp16_warns(records):
    _, model, opt = _prepared(mixed_precision="fp16")  # a loss scaler on the CPU too
    _loss(model).backward()
    with pytest.raises(AssertionError, match="_scale is None"):  # torch's GradScaler, after the advice
        opt.step()  # unscaled gradients
    (found,) = _advice(records)
    _at_line(found, "opt.step()  # unscaled gradients")
    assert "mixed_precision='fp16' scales the loss" in str(found.message)
    advice.forget_given()
    records.clear()
    acc, model, opt = _prepared(mixed_precision="fp16")
    for _ in range(3):
        acc.backward(_loss(model))
        opt.step()
        opt.zero_grad()
    assert _advice(records) == []


def test_loss_backward_is_fine_when_nothing_depends_on_it(records):
    _, model, opt = _prepared()  # no accumulation, no loss scaler: the gradients are right
    for _ in range(3):
        _loss(model).backward()
        opt.step()
        opt.zero_grad()
    assert _advice(records) == []


def test_correct_accumulation_loop_gives_no_advice(records):
    acc, model, opt = _prepared(gradient_accumulation_steps=3)
    for _ in range(2):  # two "epochs" of 7 micro-batches: the last cycle of each is short
        for _ in range(7):
            with acc.accumulate(model):
                acc.backward(_loss(model))
                opt.step()
                opt.zero_grad()
    opt.step()  # a stray step with no new backward and no gradients: nothing to say
    assert _advice(records) == []


# -- 2. stepping outside accumulate() -----------------------------------------------------------


def test_step_on_every_micro_batch_outside_accumulate_warns_once(records):
    acc, model, opt = _prepared(gradient_accumulation_steps=4)
    for _ in range(8):
        acc.backward(_loss(model))
        opt.step()  # every micro-batch
        opt.zero_grad()
    found = _advice(records)
    assert len(found) == 1, [str(r.message) for r in found]
    _at_line(found[0], "opt.step()  # every micro-batch")
    message = str(found[0].message)
    assert "gradient_accumulation_steps=4" in message and "accelerator.accumulate(model)" in message


def test_manual_accumulation_with_no_sync_gives_no_advice(records):
    acc, model, opt = _prepared(gradient_accumulation_steps=2)
    for i in range(9):  # steps every 2 micro-batches, and once after a short last cycle
        if i % 2 == 0 and i != 8:
            with acc.no_sync(model):
                acc.backward(_loss(model))
        else:
            acc.backward(_loss(model))
            opt.step()
            opt.zero_grad()
    assert _advice(records) == []


# -- 3. a prepared model moved after prepare ----------------------------------------------------


def test_model_moved_after_prepare_warns_once(records):
    acc, model, opt = _prepared()
    acc.backward(_loss(model))
    opt.step()
    model.to(torch.float64)  # a dtype change is not a move
    opt.zero_grad()
    acc.backward(model(torch.randn(3, 4, dtype=torch.float64)).pow(2).mean())
    opt.step()
    assert _advice(records) == []
    model.to("meta")
    opt.step()  # detected here
    opt.step()
    found = _advice(records)
    assert len(found) == 1
    _at_line(found[0], "opt.step()  # detected here")
    assert "on meta, but accelerator.prepare placed them on cpu" in str(found[0].message)


# -- 6. full precision on a GPU with bf16 ---------------------------------------------------------


def test_fp32_on_a_bf16_gpu_warns_at_construction(records, monkeypatch):
    monkeypatch.setattr(advice, "_bf16_capable", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake A100")
    Accelerator(cpu=True)  # the constructor line
    Accelerator(cpu=True, mixed_precision="no")
    found = _advice(records)
    assert len(found) == 1
    _at_line(found[0], "Accelerator(cpu=True)  # the constructor line")
    assert "Fake A100" in str(found[0].message) and 'mixed_precision="bf16"' in str(found[0].message)


def test_bf16_check_reads_the_gpu(monkeypatch):
    assert not advice._bf16_capable(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert advice._bf16_capable(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert not advice._bf16_capable(torch.device("cuda", 0))


def test_bf16_already_on_gives_no_advice(records, monkeypatch):
    monkeypatch.setattr(advice, "_bf16_capable", lambda device: True)
    Accelerator(cpu=True, mixed_precision="bf16")
    assert _advice(records) == []


# -- silencing ----------------------------------------------------------------------------------


def _every_mistake(**kwargs):
    _, model, opt = _prepared(gradient_accumulation_steps=2, **kwargs)
    for _ in range(4):
        _loss(model).backward()
        opt.step()
        opt.zero_grad()
    model.to("meta")
    opt.step()


def test_warnings_off_silences_everything(records, monkeypatch):
    monkeypatch.setattr(advice, "_bf16_capable", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake")
    _every_mistake(warnings="off")
    assert _advice(records) == []
    advice.forget_given()
    _every_mistake()
    assert len(_advice(records)) == 4  # bf16, backward, accumulate, moved


def test_config_key_warnings_off(records, monkeypatch, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("warnings: off\n")  # YAML 1.1 reads it as false
    monkeypatch.setenv("SURGE_CONFIG_FILE", str(path))
    _every_mistake()
    assert _advice(records) == []


def test_filtering_the_category_silences(monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=SurgeAdvice)
        _every_mistake()
    assert not _advice(caught)


def test_bad_setting_is_named():
    with pytest.raises(ValueError, match=r"warnings='loud' must be \"on\" or \"off\""):
        Accelerator(cpu=True, warnings="loud")


# -- 5. a collective save some processes never entered (pure: a fake store) ----------------------


class _Store:
    """The bits of a c10d store check_all_arrived uses; rank 1 never arrives."""

    def __init__(self):
        self.keys = {"k/rank0": b"1"}
        self.waits = []

    def wait(self, keys, timeout):
        self.waits.append(timeout)
        raise RuntimeError("timeout")

    def check(self, keys):
        return all(k in self.keys for k in keys)


def test_arrival_note_names_the_missing_process(records, monkeypatch):
    monkeypatch.setattr(advice, "ARRIVAL_NOTE_S", 0.5)
    store = _Store()
    with pytest.raises(RuntimeError, match="timeout"):
        advice.wait_naming_missing(store, "k", SimpleNamespace(world_size=2, rank=0), 3.0, "save_state")
    assert store.waits == [timedelta(seconds=0.5), timedelta(seconds=2.5)]
    (found,) = _advice(records)
    message = str(found.message)
    assert "processes [0] called it and [1] did not" in message
    assert "accelerator.is_main_process" in message and "Every process must call it" in message


def test_arrival_note_only_from_the_lowest_arrived_process(records, monkeypatch):
    monkeypatch.setattr(advice, "ARRIVAL_NOTE_S", 0.5)
    store = _Store()
    store.keys = {"k/rank0": b"1", "k/rank1": b"1"}
    with pytest.raises(RuntimeError):
        advice.wait_naming_missing(store, "k", SimpleNamespace(world_size=3, rank=1), 1.0, "save_state")
    assert _advice(records) == []


def test_call_site_skips_surge_and_torch():
    filename, line = advice.call_site()
    assert filename == __file__ and "advice.call_site()" in linecache.getline(__file__, line)


def test_advice_does_not_keep_a_freed_model_alive():
    import gc
    import weakref

    acc, model, opt = _prepared()
    inner = weakref.ref(model)
    acc.free_memory()
    del model, opt
    gc.collect()
    assert inner() is None
    assert acc.gradient_state.advice is not None  # still watching whatever is prepared next


def test_many_ranks_are_shortened():
    assert advice._ranks([0, 1]) == "[0, 1]"
    assert advice._ranks(list(range(100))) == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, ...] (100 in all)"


class _BatchStore:
    """A store holding the other processes' first-batch fingerprints."""

    def __init__(self, values):
        self.values = values
        self.waited = []

    def set(self, key, value):
        self.values[key] = value.encode()

    def wait(self, keys, timeout):
        self.waited += keys

    def get(self, key):
        return self.values[key]


def _batch_advice(monkeypatch, world_size, tp_size, others):
    """The main process of ``world_size`` (tensor-parallel groups of ``tp_size``) comparing
    its batch with ``others`` (rank -> the batch that rank saw)."""
    import torch.distributed.distributed_c10d as c10d

    acc = SimpleNamespace(
        topology=SimpleNamespace(world_size=world_size, rank=0, is_main_process=True),
        plan=SimpleNamespace(parallelism=SimpleNamespace(non_data_parallel_size=tp_size) if tp_size > 1 else None))
    checks = advice.Advice(acc)
    nxt = advice.Advice._exchanges + 1
    store = _BatchStore({f"surge/advice/batch/{nxt}/{r}": advice._fingerprint(b).encode() for r, b in others.items()})
    monkeypatch.setattr(c10d, "_get_default_store", lambda: store)
    checks._compare_batches(torch.ones(2, 3), (__file__, 1))
    return store


def test_only_data_parallel_peers_are_compared(records, monkeypatch):
    same, other = torch.ones(2, 3), torch.zeros(2, 3)
    # 4 processes in tensor-parallel pairs: rank 1 shares rank 0's batch by design; rank 2 is its peer.
    store = _batch_advice(monkeypatch, 4, 2, {1: same, 2: other, 3: other})
    assert [k.rsplit("/", 1)[1] for k in store.waited] == ["2"]
    assert _advice(records) == []
    store = _batch_advice(monkeypatch, 4, 2, {1: other, 2: same, 3: other})
    assert "same on all 2 data-parallel processes" in str(_advice(records)[0].message)


def test_pure_tensor_parallel_compares_nothing(records, monkeypatch):
    store = _batch_advice(monkeypatch, 2, 2, {1: torch.ones(2, 3)})
    assert store.waited == [] and _advice(records) == []
