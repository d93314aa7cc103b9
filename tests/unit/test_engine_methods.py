"""The DeepSpeed engine on one process: attributes forwarded to the model, DeepSpeed's
accessors with DeepSpeed's values, several backward calls, no_sync, a boundary set by
hand, the monitor sections, steps_per_print."""

import csv
import logging
import os
import warnings

import pytest
import torch
from torch import nn

import surge
from surge.deepspeed.monitor import Monitor
from surge.unsupported import UnsupportedError

SGD = {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}}
BASE = {"train_micro_batch_size_per_gpu": 4, "optimizer": SGD}


class WithExtras(nn.Module):
    """A model with its own methods and attributes, as a transformers model has."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)
        self.name_or_path = "tiny"
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x)

    def generate(self, x, scale=1.0):
        return self.linear(x) * scale

    def step(self):  # the engine's own step() wins over the model's
        raise AssertionError("the model's step was called")


def _initialize(config=None, model=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a monitor section ds_config still calls unhonoured
        return surge.initialize(model=model if model is not None else WithExtras(), config=config or BASE, **kwargs)


def _data(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)


def test_unknown_attributes_are_the_models():
    engine, *_ = _initialize()
    x, _ = _data(0)
    assert torch.equal(engine.generate(x, scale=2.0), engine.module.linear(x) * 2.0)
    assert engine.name_or_path == "tiny" and engine.linear is engine.module.linear
    engine(x)
    assert engine.calls == 1  # the engine's forward ran the model's
    engine.backward(engine(x).sum())
    engine.step()  # the engine's step, not the model's
    assert engine.global_steps == 1
    assert engine.config is not None and engine.config["optimizer"] == SGD  # DeepSpeed's engine.config: its config
    with pytest.raises(AttributeError, match="'Engine' object has no attribute 'nope', and neither has its module"):
        _ = engine.nope
    assert not hasattr(engine, "__nope__")
    assert [n for n, _ in engine.named_parameters()] == ["module.linear.weight", "module.linear.bias"]


def test_generate_of_a_transformers_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    engine, *_ = _initialize(model=transformers.LlamaForCausalLM(cfg))
    ids = torch.tensor([[1, 2, 3]])
    out = engine.generate(ids, max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5) and engine.module.config.vocab_size == 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer transformers rename it
        engine.gradient_checkpointing_enable()  # DeepSpeed-Chat calls it on the engine
        assert engine.module.is_gradient_checkpointing


def test_accessors_answer_as_deepspeed():
    config = {**BASE, "train_batch_size": 8, "steps_per_print": 2, "wall_clock_breakdown": True,
              "gradient_clipping": 1.5, "zero_optimization": {"stage": 1}}
    engine, optimizer, _, _ = _initialize(config)
    assert (engine.train_batch_size(), engine.train_micro_batch_size_per_gpu(),
            engine.gradient_accumulation_steps()) == (8, 4, 2)
    assert engine.zero_optimization_stage() == 1 and engine.zero_optimization()
    assert not engine.zero_optimization_partition_gradients() and not engine.zero_offload_optimizer()
    assert engine.steps_per_print() == 2 and engine.wall_clock_breakdown() is True
    assert engine.gradient_clipping() == 1.5 and not engine.fp16_enabled() and not engine.bfloat16_enabled()
    assert (engine.dp_world_size, engine.mp_world_size, engine.world_size, engine.global_rank) == (1, 1, 1, 0)
    assert engine.optimizer_name() == "SGD" and engine.get_lr() == [0.1] and engine.get_mom() == [0.9]
    assert optimizer.cur_scale == 1.0 and optimizer.loss_scale == 1.0 and engine.loss_scale() == 0
    assert engine.get_loss_scale() == 1.0 and not engine.dynamic_loss_scale()
    assert engine.get_global_grad_norm() is None  # before the first step, as DeepSpeed
    assert engine.module is engine.accelerator.unwrap_model(engine.module)

    adam, *_ = _initialize({**BASE, "optimizer": {"type": "Adam", "params": {"lr": 0.1}}})
    assert adam.optimizer_name() == "adam" and adam.get_mom() == [(0.9, 0.999)]  # DeepSpeed lowercases its own

    defaults, *_ = _initialize()
    assert defaults.steps_per_print() is None and defaults.wall_clock_breakdown() is False
    assert defaults.gradient_clipping() == 0.0
    assert defaults.train_batch_size() == 4 and defaults.zero_optimization_stage() == 0


def test_counters_boundary_and_grad_norm():
    engine, *_ = _initialize({**BASE, "gradient_accumulation_steps": 2})
    seen = []
    for i in range(4):
        x, y = _data(i)
        seen.append(engine.is_gradient_accumulation_boundary())
        loss = nn.functional.mse_loss(engine(x), y)
        returned = engine.backward(loss)
        assert returned.item() == pytest.approx(loss.item() / 2)  # as DeepSpeed: the divided loss
        if i == 3:
            expected = torch.cat([p.grad.reshape(-1) for p in engine.module.parameters()]).norm().item()
        engine.step()
    assert seen == [False, True, False, True]
    assert (engine.global_steps, engine.global_samples, engine.micro_steps) == (2, 16, 4)
    assert engine.get_global_grad_norm() == pytest.approx(expected)  # measured without clipping


@pytest.mark.parametrize("precision, scale, static", [
    ({"fp16": {"enabled": True, "initial_scale_power": 8}}, 256.0, 0.0),
    ({"fp16": {"enabled": True, "loss_scale": 64}}, 64.0, 64.0),
    ({"bf16": {"enabled": True}}, 1.0, 1.0),
])
def test_loss_scale_names(precision, scale, static):
    engine, optimizer, _, _ = _initialize({**BASE, **precision})
    assert optimizer.cur_scale == scale and engine.get_loss_scale() == scale and engine.cur_scale == scale
    assert engine.loss_scale() == static and engine.dynamic_loss_scale() == (static == 0.0)
    assert engine.fp16_enabled() == ("fp16" in precision) and engine.bfloat16_enabled() == ("bf16" in precision)
    assert engine.bf16_enabled() == engine.bfloat16_enabled()
    assert optimizer.overflow is False


def _plain_grads(losses_per_step):
    model = WithExtras()
    for losses in losses_per_step:
        sum(fn(model) for fn in losses).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_several_backward_calls_add_their_gradients():
    engine, *_ = _initialize({**BASE, "gradient_accumulation_steps": 2, "optimizer": {"type": "SGD",
                                                                                       "params": {"lr": 0.0}}})
    (x1, y1), (x2, y2), (x3, y3) = _data(1), _data(2), _data(3)
    engine.backward(nn.functional.mse_loss(engine(x1), y1))
    engine.backward(nn.functional.mse_loss(engine(x2), y2))
    engine.step()
    out = engine(torch.cat([x3, x1]))
    engine.backward(nn.functional.mse_loss(out[:4], y3), retain_graph=True)
    assert engine.is_gradient_accumulation_boundary()
    engine.backward(nn.functional.mse_loss(out[4:], y1))
    got = [p.grad.clone() for p in engine.module.parameters()]
    want = _plain_grads([[lambda m, x=x, y=y: nn.functional.mse_loss(m(x), y) / 2
                          for x, y in ((x1, y1), (x2, y2), (x3, y3), (x1, y1))]])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want, strict=True))
    engine.step()
    assert engine.global_steps == 1 and engine.micro_steps == 2


def test_no_sync_and_a_boundary_set_by_hand():
    engine, *_ = _initialize({**BASE, "gradient_accumulation_steps": 2})
    (x1, y1), (x2, y2) = _data(1), _data(2)
    with engine.no_sync():
        loss = nn.functional.mse_loss(engine(x1), y1)
        assert engine.backward(loss) is loss  # not divided, no micro-step counted (DeepSpeed)
        with pytest.raises(RuntimeError, match=r"inside engine\.no_sync"):
            engine.step()
        with pytest.raises(RuntimeError, match="already active"), engine.no_sync():
            pass
    assert engine.micro_steps == 0 and not engine.is_gradient_accumulation_boundary()
    want = _plain_grads([[lambda m: nn.functional.mse_loss(m(x1), y1)]])
    assert all(torch.allclose(p.grad, w) for p, w in zip(engine.module.parameters(), want, strict=True))

    engine, *_ = _initialize({**BASE, "gradient_accumulation_steps": 4})
    engine.set_gradient_accumulation_boundary(False)
    assert not engine.is_gradient_accumulation_boundary()
    engine.backward(nn.functional.mse_loss(engine(x1), y1))
    engine.set_gradient_accumulation_boundary(True)
    assert engine.is_gradient_accumulation_boundary()
    engine.backward(nn.functional.mse_loss(engine(x2), y2))
    engine.step()
    assert engine.global_steps == 1  # the step was taken after 2 micro-batches, not 4
    with pytest.raises(TypeError, match="takes True, False or None"):
        engine.set_gradient_accumulation_boundary(1)


class Recorder:
    def __init__(self):
        self.events = []

    def log(self, values, step=None):
        self.events.extend((name, value, step) for name, value in values.items())

    def finish(self):
        self.events.append("finished")


def test_monitor_events_at_each_boundary(tmp_path):
    config = {**BASE, "gradient_accumulation_steps": 2, "fp16": {"enabled": True, "initial_scale_power": 4},
              "tensorboard": {"enabled": True, "output_path": str(tmp_path), "job_name": "job"}}
    engine, *_ = _initialize(config)
    assert engine.monitor.enabled and os.path.isdir(tmp_path / "job")  # TensorBoard's event files go there
    recorder = Recorder()
    engine.monitor.trackers.append(recorder)
    losses = []
    for i in range(4):
        x, y = _data(i)
        loss = nn.functional.mse_loss(engine(x), y)
        losses.append(loss.item())
        engine.backward(loss)
        engine.step()
    names = [e[0] for e in recorder.events]
    assert names == ["Train/Samples/train_loss", "Train/Samples/lr", "Train/Samples/loss_scale"] * 2
    first_loss, lr, scale = recorder.events[:3]
    assert first_loss[2] == 0 and lr[2] == 8 and scale == ("Train/Samples/loss_scale", 16.0, 8)
    assert first_loss[1] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-3)
    assert recorder.events[3][2] == 8 and recorder.events[3][1] == pytest.approx((losses[2] + losses[3]) / 2,
                                                                                 rel=1e-3)
    engine.monitor.write_events([("Eval/loss", 0.5, 3)])  # scripts write their own events
    assert recorder.events[-1] == ("Eval/loss", 0.5, 3)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "job"))
    engine.destroy()
    assert recorder.events[-1] == "finished" and engine.monitor.trackers == []

    quiet, *_ = _initialize()
    assert not quiet.monitor.enabled and quiet.monitor.trackers == []
    quiet.monitor.write_events([("x", 1.0, 0)])  # nothing to write to: no error


def test_csv_monitor_files_as_deepspeed_writes_them(tmp_path):
    monitor = Monitor({"csv_monitor": {"enabled": True, "output_path": str(tmp_path), "job_name": "run"}},
                      is_main_process=True)
    monitor.write_events([("Train/Samples/train_loss", 0.5, 4), ("Train/Samples/lr", torch.tensor(0.1), 4)])
    monitor.write_events([("Train/Samples/train_loss", 0.25, 8)])
    with open(tmp_path / "run" / "Train_Samples_train_loss.csv") as f:
        assert list(csv.reader(f)) == [["step", "train_loss"], ["4", "0.5"], ["8", "0.25"]]
    with open(tmp_path / "run" / "Train_Samples_lr.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "lr"] and rows[1][0] == "4" and float(rows[1][1]) == pytest.approx(0.1)
    elsewhere = Monitor({"csv_monitor": {"enabled": True, "output_path": str(tmp_path)}}, is_main_process=False)
    assert elsewhere.enabled and elsewhere.trackers == []  # enabled everywhere; written by the main process
    with pytest.raises(UnsupportedError, match="no Comet integration"):
        Monitor({"comet": {"enabled": True}}, is_main_process=True)
    assert not Monitor({"wandb": {"enabled": False}}, is_main_process=True).enabled


def test_steps_per_print_logs_progress(caplog):
    engine, *_ = _initialize({**BASE, "steps_per_print": 2})
    with caplog.at_level(logging.INFO, logger="surge.deepspeed"):
        for i in range(4):
            x, y = _data(i)
            engine.backward(nn.functional.mse_loss(engine(x), y))
            engine.step()
    lines = [r.getMessage() for r in caplog.records if r.name == "surge.deepspeed"]
    assert lines == ["step=2, skipped=0, lr=[0.1], mom=[0.9]", "step=4, skipped=0, lr=[0.1], mom=[0.9]"]


def test_save_fp16_model_and_destroy(tmp_path):
    engine, *_ = _initialize({**BASE, "bf16": {"enabled": True}})
    assert engine.save_fp16_model(tmp_path) is True
    weights = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert weights["linear.weight"].dtype == torch.bfloat16
    engine.destroy()
    engine.train()
    assert engine.training and engine.module.training
    engine.eval()
    assert not engine.training and not engine.module.training


def test_client_optimizer_and_scheduler_win_over_the_config():
    model = WithExtras()
    client = torch.optim.Adam(model.parameters(), lr=0.5)
    config = {**BASE, "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 0.5, "warmup_num_steps": 2,
                                                                   "warmup_type": "linear"}}}
    with pytest.warns(UserWarning, match=r"optimizer passed is used and the config's optimizer section \('SGD'\)"):
        engine, optimizer, _, scheduler = surge.initialize(model=model, optimizer=client, config=config)
    assert optimizer.optimizer is client and engine.optimizer_name() == "Adam"
    assert engine.get_mom() == [(0.9, 0.999)] and scheduler.scheduler.optimizer is client
    own = torch.optim.lr_scheduler.LambdaLR(client, lambda step: 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, _, scheduler = surge.initialize(model=model, optimizer=client, lr_scheduler=own, config=config)
    assert sum("lr_scheduler passed is used and the config's scheduler section ('WarmupLR')" in str(w.message)
               for w in caught) == 1
    assert scheduler.scheduler is own
