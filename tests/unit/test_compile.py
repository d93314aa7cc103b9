"""torch.compile through the Accelerator: parity with eager, unwrap/save unchanged, errors."""

import pytest
import torch
from safetensors.torch import load_file

from surge import Accelerator, TorchDynamoPlugin
from surge.testing.parity import BlockModel, make_dataset, reference_run, surge_run


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compiled_training_matches_eager(backend, tmp_path):
    data = make_dataset(32)
    reference = reference_run(data, global_batch=8, model_fn=BlockModel)
    acc = Accelerator(dynamo_backend=backend, gradient_accumulation_steps=2)
    got = surge_run(acc, data, per_process_batch=4, model_fn=BlockModel)
    assert max((a - b).abs().max().item() for a, b in zip(reference, got, strict=True)) < 1e-5
    compiled = acc.prepare_model(BlockModel())
    assert type(compiled).__name__ == "OptimizedModule"
    inner = acc.unwrap_model(compiled, keep_torch_compile=False)
    assert type(inner) is BlockModel and "_orig_mod" not in "".join(acc.get_state_dict(compiled))
    acc.save_model(compiled, tmp_path / "export")
    assert set(load_file(tmp_path / "export" / "model.safetensors")) == set(inner.state_dict())


def test_compiled_model_checkpoints_under_plain_names(tmp_path):
    acc = Accelerator(dynamo_backend="aot_eager")
    model = acc.prepare_model(BlockModel())
    inner = acc.unwrap_model(model, keep_torch_compile=False)
    want = {name: value.clone() for name, value in inner.state_dict().items()}
    x = torch.randn(4, 8)
    out = model(x)
    acc.save_state(tmp_path / "ckpt")
    saved = load_file(tmp_path / "ckpt" / "model_0.safetensors")
    assert "_orig_mod" not in "".join(saved)
    assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
    with torch.no_grad():
        for p in inner.parameters():
            p.zero_()
    acc.load_state(tmp_path / "ckpt")
    got = inner.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(model(x), out)  # the compiled module computes with the loaded values


def test_dynamo_settings_and_errors():
    assert Accelerator(dynamo_backend="no").dynamo_plugin is None
    assert Accelerator(dynamo_backend="INDUCTOR").dynamo_plugin.backend == "inductor"
    plugin = TorchDynamoPlugin(backend="aot_eager", mode="max-autotune-no-cudagraphs", fullgraph=True)
    assert Accelerator(dynamo_plugin=plugin).dynamo_plugin.compile_kwargs() == {
        "backend": "aot_eager", "fullgraph": True, "dynamic": None, "mode": "max-autotune-no-cudagraphs"}
    with pytest.raises(ValueError, match=r"dynamo_backend='turbo' is not a torch.compile backend; use one of"):
        Accelerator(dynamo_backend="turbo")
    with pytest.raises(ValueError, match=r"TorchDynamoPlugin.mode='fastest' is not supported"):
        TorchDynamoPlugin(mode="fastest")
    with pytest.raises(TypeError, match=r"dynamo_plugin=.* must be a TorchDynamoPlugin"):
        Accelerator(dynamo_plugin={"backend": "inductor"})
