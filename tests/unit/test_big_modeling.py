"""init_empty_weights / init_on_device (surge.big_modeling, Accelerate's names)."""

import pytest
import torch
from torch import nn

import surge
from surge.big_modeling import init_empty_weights, init_on_device


def test_empty_weights_put_parameters_on_meta_and_keep_buffers():
    with surge.init_empty_weights():
        model = nn.Sequential(nn.Linear(1000, 1000), nn.BatchNorm1d(1000))
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())  # computed, not loaded: real by default (as Accelerate)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.shape == (1000, 1000)
    with init_empty_weights(include_buffers=True):
        model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert not nn.Linear(2, 2).weight.is_meta  # the patch is gone after the block


def test_parameters_keep_class_flags_and_attributes():
    class Tagged(nn.Parameter):
        pass

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            frozen = nn.Parameter(torch.ones(2), requires_grad=False)
            frozen._is_hf_initialized = True
            self.frozen = frozen
            self.tagged = Tagged(torch.ones(2))

    with init_on_device(torch.device("meta")):
        layer = Layer()
    assert layer.frozen.is_meta and not layer.frozen.requires_grad and layer.frozen._is_hf_initialized
    assert type(layer.tagged) is Tagged and layer.tagged.is_meta


def test_init_on_device_and_errors_restore_the_patch():
    register = nn.Module.register_parameter
    with pytest.raises(RuntimeError, match="boom"), init_on_device("cpu"):
        assert nn.Module.register_parameter is not register
        raise RuntimeError("boom")
    assert nn.Module.register_parameter is register
    with init_on_device("cpu", include_buffers=True):
        assert nn.Linear(2, 2).weight.device.type == "cpu"
    with pytest.raises(TypeError, match="include_buffers='yes'"), init_on_device("cpu", include_buffers="yes"):
        pass
