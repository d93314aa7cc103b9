"""surge.checkpointing: DeepSpeed's deepspeed.checkpointing API (see [Note: DeepSpeed's checkpoint])."""

import logging

import pytest
import torch
from torch import nn

import surge
from surge import Accelerator, DeepSpeedPlugin
from surge.deepspeed import checkpointing as ckpt


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """Each test starts unconfigured, with an empty RNG tracker (both are process-wide)."""
    monkeypatch.setattr(ckpt, "_STATE", ckpt._State())
    monkeypatch.setattr(ckpt, "_RNG_TRACKER", ckpt.CudaRNGStatesTracker())


class Block(nn.Module):
    def __init__(self, tracked_dropout=False):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.dropout = nn.Dropout(0.5)
        self.tracked_dropout = tracked_dropout

    def forward(self, x, scale):
        h = torch.tanh(self.linear(x)) * scale
        if self.tracked_dropout:  # Megatron's model-parallel dropout
            with ckpt.get_cuda_rng_tracker().fork():
                h = self.dropout(h)
        return self.dropout(h) + x


def _grads(checkpoint, *, device="cpu", tracked=False, input_grad=True, seed=0):
    torch.manual_seed(0)
    blocks = nn.ModuleList(Block(tracked) for _ in range(3)).to(device)
    x = torch.randn(4, 8, device=device, requires_grad=input_grad)
    torch.manual_seed(seed)
    if tracked:
        ckpt.model_parallel_cuda_manual_seed(seed)
    h = x
    for block in blocks:
        h = checkpoint(block, h, 0.5) if checkpoint else block(h, 0.5)
    h.pow(2).sum().backward()
    grads = [p.grad.clone() for p in blocks.parameters()]
    return grads + ([x.grad.clone()] if input_grad else [])


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_deepspeed_module_path():
    import surge as deepspeed

    assert deepspeed.checkpointing is ckpt and surge.deepspeed.checkpointing is ckpt
    assert deepspeed.checkpointing.checkpoint is ckpt.checkpoint
    assert not deepspeed.checkpointing.is_configured()


@pytest.mark.parametrize("cpu", [False, True])
def test_gradients_equal_no_checkpointing_with_dropout(cpu):
    ckpt.configure(None, checkpoint_in_cpu=cpu)
    reference = _grads(None)
    assert _equal(_grads(ckpt.checkpoint), reference)
    assert not _equal(_grads(ckpt.checkpoint, seed=1), reference)  # dropout is really drawn


def test_the_model_parallel_rng_tracker_is_replayed_in_backward():
    reference = _grads(None, tracked=True)
    assert _equal(_grads(ckpt.checkpoint, tracked=True), reference)
    state = ckpt.get_cuda_rng_tracker().get_states()
    assert list(state) == ["model-parallel-rng"]
    with pytest.raises(ValueError, match="already exists"):
        ckpt.get_cuda_rng_tracker().add("model-parallel-rng", 99)


def test_parameters_get_gradients_when_no_input_needs_one():
    # DeepSpeed's reentrant checkpoint leaves them without (a plain error, not reproduced): torch's
    # non-reentrant one keeps the region's parameters in the graph.
    reference = _grads(None, input_grad=False)
    got = _grads(ckpt.checkpoint, input_grad=False)
    assert _equal(got, reference) and all(g.abs().sum() > 0 for g in got)
    assert _equal(_grads(ckpt.non_reentrant_checkpoint, input_grad=False), reference)


def test_only_the_region_inputs_are_saved_for_backward():
    saved = []
    block = Block()
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = ckpt.checkpoint(block, x, 0.5)
    assert saved == [torch.Size([0])]  # torch's checkpoint keeps the region's own: only the zero-size anchor here
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        block(x, 0.5)
    assert len(saved) > 2  # without checkpointing every intermediate is kept
    out.sum().backward()


def _kept_by(monkeypatch, device, cpu):
    """(device of each saved input, device it was kept on) for one checkpointed block."""
    kept = []
    pack = ckpt._pack_on_cpu

    def spy(tensor):
        packed = pack(tensor)
        kept.append((tensor.device.type, packed[1].device.type))
        return packed

    monkeypatch.setattr(ckpt, "_pack_on_cpu", spy)
    config = {"train_batch_size": 1, "activation_checkpointing": {"cpu_checkpointing": cpu}}
    ckpt.configure(None, deepspeed_config=config)
    block = Block().to(device)
    x = torch.randn(4, 8, device=device, requires_grad=True)
    ckpt.checkpoint(block, x, 0.5).sum().backward()
    assert x.grad is not None and x.grad.device.type == device
    return kept


def test_cpu_checkpointing_keeps_the_saved_inputs_in_cpu_memory(monkeypatch):
    assert _kept_by(monkeypatch, "cpu", cpu=False) == []  # the saved-tensor hooks are not installed
    assert ("cpu", "cpu") in _kept_by(monkeypatch, "cpu", cpu=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_checkpointing_moves_cuda_activations_to_the_cpu(monkeypatch):
    assert ("cuda", "cpu") in _kept_by(monkeypatch, "cuda", cpu=True)
    ckpt.configure(None, checkpoint_in_cpu=True)
    assert _equal([g.cpu() for g in _grads(ckpt.checkpoint, device="cuda")],
                  [g.cpu() for g in _grads(None, device="cuda")])


def test_configure_reads_the_section_then_the_arguments(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"train_batch_size": 8, "activation_checkpointing": {"partition_activations": true, '
                    '"contiguous_memory_optimization": true, "number_checkpoints": 4, "profile": true}}')
    ckpt.configure(None, deepspeed_config=str(path), checkpoint_in_cpu=True, num_checkpoints=6)
    settings = ckpt._STATE.settings
    assert ckpt.is_configured() and settings.partition_activations and settings.contiguous_memory_optimization
    assert (settings.number_checkpoints, settings.cpu_checkpointing, settings.profile) == (6, True, True)
    ckpt.configure(None)  # DeepSpeed's configure starts from the defaults each time
    assert ckpt._STATE.settings == ckpt.ActivationCheckpointingSettings()
    with pytest.raises(ValueError, match="needs partition_activations"):
        ckpt.configure(None, contiguous_checkpointing=True, num_checkpoints=2)
    with pytest.raises(ValueError, match="needs number_checkpoints"):
        ckpt.configure(None, partition_activations=True, contiguous_checkpointing=True)
    ckpt.set_num_layers(3)
    ckpt.partition_activations_in_checkpoint(True)
    assert (ckpt._STATE.settings.number_checkpoints, ckpt._STATE.settings.partition_activations) == (3, True)
    ckpt.reset()


def test_the_mpu_gives_the_tensor_parallel_rank():
    class Mpu:
        def get_model_parallel_rank(self):
            return 1

    ckpt.configure(Mpu())
    ckpt.model_parallel_cuda_manual_seed(10)
    with ckpt.get_cuda_rng_tracker().fork():
        drawn = torch.rand(3)
    torch.manual_seed(10 + 2718 + 1)
    assert torch.equal(drawn, torch.rand(3))


def test_profile_logs_both_passes_and_no_grad_just_calls(caplog):
    ckpt.configure(None, profile=True, synchronize=True)
    block = Block()
    with caplog.at_level(logging.INFO, logger="surge.checkpointing"):
        ckpt.checkpoint(block, torch.randn(2, 8, requires_grad=True), 1.0).sum().backward()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["checkpointed forward", "checkpointed backward"]
    with torch.no_grad():
        assert not ckpt.checkpoint(block, torch.randn(2, 8), 1.0).requires_grad


def test_the_config_section_checkpoints_nothing_by_itself():
    # As in DeepSpeed: the model's own checkpoint calls do it; surge's per-block switch is separate.
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 0},
              "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True}}
    plugin = DeepSpeedPlugin(hf_ds_config=config)
    assert plugin.activation_checkpointing is False
    calls = []
    model = nn.Sequential(nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))
    model[0][0].register_forward_hook(lambda *_: calls.append(1))
    acc = Accelerator(deepspeed_plugin=plugin)
    prepared = acc.prepare(model)
    acc.backward(prepared[0][1](prepared[0][0](torch.randn(2, 4))).sum())
    assert calls == [1]  # ran once: not recomputed in backward
