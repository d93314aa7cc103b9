"""The Accelerator's other HF Accelerate names (issue 16, "Missing public API"), one process.

Their two-process behaviour (triggers, reduce max/min, join_uneven_inputs, comm hooks,
sync_each_batch) is checked in tests/distributed/test_api_ranks.py.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge import Accelerator
from surge.state import AcceleratorState, GradientState, PartialState
from surge.unsupported import UnsupportedError
from surge.utils import (
    DDPCommunicationHookType,
    DistributedDataParallelKwargs,
    DistributedType,
    GradientAccumulationPlugin,
    PrecisionType,
    ProfileKwargs,
)


def _linear():
    torch.manual_seed(0)
    return nn.Linear(1, 1, bias=False)


def test_enums_have_accelerates_members_and_values():
    import accelerate.utils as hf

    for ours, theirs in ((DistributedType, hf.DistributedType), (PrecisionType, hf.PrecisionType),
                         (DDPCommunicationHookType, hf.DDPCommunicationHookType),
                         (surge.utils.ComputeEnvironment, hf.ComputeEnvironment),
                         (surge.utils.DynamoBackend, hf.DynamoBackend), (surge.utils.RNGType, hf.RNGType)):
        assert {m.name: m.value for m in ours} == {m.name: m.value for m in theirs}, ours
    assert DistributedType.XLA == "XLA" and "fp16" in PrecisionType and str(PrecisionType.BF16) == "bf16"
    assert "power_sgd" in DDPCommunicationHookType and DDPCommunicationHookType.list()[0] == "no"


def test_accelerator_state_reads_the_accelerator_and_the_environment():
    acc = Accelerator(mixed_precision="bf16")
    for state in (acc.state, AcceleratorState()):  # the latter reads the most recent Accelerator
        assert state.distributed_type == DistributedType.NO and state.num_processes == 1
        assert state.process_index == 0 and state.local_process_index == 0 and state.is_main_process
        assert state.device == torch.device("cpu") and state.mixed_precision == "bf16"
        assert state.deepspeed_plugin is None and state.fsdp_plugin is None and not state.use_distributed
        assert state.initialized
    with pytest.raises(ValueError, match=r"mixed_precision='fp16'.*'bf16'"):
        AcceleratorState(mixed_precision="fp16")
    AcceleratorState._reset_state()
    alone = AcceleratorState()
    assert not alone.initialized and alone.mixed_precision == "no" and alone.num_processes == 1
    assert AcceleratorState(deepspeed_plugin=surge.DeepSpeedPlugin(zero_stage=2)).distributed_type == "DEEPSPEED"
    with pytest.raises(UnsupportedError, match="Megatron-LM"):
        AcceleratorState(megatron_lm_plugin=object())
    assert isinstance(acc.gradient_state, GradientState) and PartialState().initialized


def test_gradient_accumulation_plugin_and_its_exclusion():
    plugin = GradientAccumulationPlugin(num_steps=3, sync_each_batch=True)
    acc = Accelerator(gradient_accumulation_plugin=plugin)
    assert acc.gradient_accumulation_steps == 3 and acc.gradient_state.sync_each_batch
    assert acc.gradient_state.plugin_kwargs["sync_with_dataloader"] is True
    both = Accelerator(gradient_accumulation_plugin=plugin, gradient_accumulation_steps=1)  # 1 is allowed, as there
    assert both.gradient_accumulation_steps == 3
    with pytest.raises(ValueError, match="only the plugin"):
        Accelerator(gradient_accumulation_plugin=plugin, gradient_accumulation_steps=2)
    with pytest.raises(TypeError, match="GradientAccumulationPlugin"):
        Accelerator(gradient_accumulation_plugin={"num_steps": 2})
    with pytest.raises(ValueError, match="num_steps=0"):
        GradientAccumulationPlugin(num_steps=0)


def _sgd_run(acc, xs, epochs=1):
    """w after SGD(lr=1) on loss = w * x per sample; returns w after each optimizer step."""
    model = _linear()
    with torch.no_grad():
        model.weight.fill_(0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(torch.tensor(xs).view(-1, 1)), batch_size=1)
    model, opt, loader = acc.prepare(model, opt, loader)
    seen = []
    for _ in range(epochs):
        for (x,) in loader:
            with acc.accumulate(model):
                acc.backward(model(x).sum())
                opt.step()
                if acc.sync_gradients:
                    seen.append(round(model.weight.item(), 6))
                opt.zero_grad()
    return seen


def test_short_last_cycle_true_mean_by_default_and_accelerates_numbers_on_request():
    xs = [1.0, 3.0, 8.0]  # two micro-batches per step: the last cycle has one
    assert _sgd_run(Accelerator(gradient_accumulation_steps=2), xs) == [-2.0, -10.0]  # means (1+3)/2, then 8
    accelerate = Accelerator(gradient_accumulation_steps=2, accumulation_divisor="num_steps")
    assert _sgd_run(accelerate, xs) == [-2.0, -6.0]  # 8 / 2, as Accelerate divides
    with pytest.raises(ValueError, match="accumulation_divisor='tokens'"):
        Accelerator(accumulation_divisor="tokens")


def test_sync_with_dataloader_false_runs_cycles_across_epochs():
    xs = [1.0, 3.0, 8.0]
    plugin = GradientAccumulationPlugin(num_steps=2, sync_with_dataloader=False)
    # Steps at micro-batches 2, 4 and 6 of two epochs: (1+3)/2, (8+1)/2, (3+8)/2.
    assert _sgd_run(Accelerator(gradient_accumulation_plugin=plugin), xs, epochs=2) == [-2.0, -6.5, -12.0]
    assert _sgd_run(Accelerator(gradient_accumulation_steps=2), xs, epochs=2) == [-2.0, -10.0, -12.0, -20.0]


def test_adjust_scheduler_changes_no_schedule():
    lrs = []
    for adjust in (True, False):
        acc = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=2, adjust_scheduler=adjust))
        model = _linear()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
        model, opt, sched = acc.prepare(model, opt, sched)
        got = []
        for _ in range(4):
            with acc.accumulate(model):
                acc.backward(model(torch.ones(1, 1)).sum())
                opt.step()
                sched.step()
                opt.zero_grad()
            got.append(sched.get_last_lr()[0])
        lrs.append(got)
    assert lrs[0] == lrs[1] == [1.0, 0.5, 0.5, 1 / 3]


def test_reduce_max_min_on_one_process_and_utils_reduce_defaults_to_mean():
    import inspect

    from surge.utils import operations, reduce

    x = torch.tensor([1.0, -2.0])
    acc = Accelerator()
    assert torch.equal(acc.reduce(x, "max"), x) and torch.equal(acc.reduce(x, "min", scale=2.0), 2 * x)
    assert reduce is operations.reduce and inspect.signature(reduce).parameters["reduction"].default == "mean"
    assert inspect.signature(acc.reduce).parameters["reduction"].default == "sum"


def test_unwrap_model_keeps_torch_compile_without_changing_the_prepared_model():
    acc = Accelerator()
    inner = _linear()
    wrapped = torch.compile(nn.DataParallel(inner), backend="eager")
    kept = acc.unwrap_model(wrapped)
    assert type(kept).__name__ == "OptimizedModule" and kept._orig_mod is inner
    assert isinstance(wrapped._orig_mod, nn.DataParallel)  # the prepared model still runs through its wrapper
    assert acc.unwrap_model(wrapped, keep_torch_compile=False) is inner
    assert surge.utils.extract_model_from_parallel(wrapped, keep_torch_compile=False) is inner
    plain = torch.compile(inner, backend="eager")
    assert acc.unwrap_model(plain) is plain and "_orig_mod.weight" in acc.unwrap_model(plain).state_dict()


def test_profile_writes_each_process_trace(tmp_path):
    handler = ProfileKwargs(activities=["cpu"], record_shapes=True, output_trace_dir=str(tmp_path / "trace"))
    acc = Accelerator(kwargs_handlers=[handler])
    assert acc.profile_handler is handler
    with acc.profile() as prof:
        torch.ones(8, 8) @ torch.ones(8, 8)
    assert any("mm" in e.key for e in prof.key_averages())
    assert os.listdir(tmp_path / "trace") == ["profile_0.json"]
    assert "traceEvents" in json.loads((tmp_path / "trace" / "profile_0.json").read_text())
    traces = []
    schedule = ProfileKwargs(schedule_option={"wait": 0, "warmup": 1, "active": 1, "repeat": 1},
                             on_trace_ready=traces.append)
    with Accelerator().profile(schedule) as prof:
        for _ in range(3):
            torch.ones(2) + 1
            prof.step()
    assert traces == [prof]  # the schedule's one active span was handed over
    with pytest.raises(ValueError, match="activities"):
        ProfileKwargs(activities=["tpu"])


def test_ddp_kwargs_comm_hook_values():
    kwargs = DistributedDataParallelKwargs(comm_hook="fp16", comm_wrapper=DDPCommunicationHookType.BF16,
                                           comm_state_option={"matrix_approximation_rank": 2})
    assert kwargs.comm_hook is DDPCommunicationHookType.FP16 and kwargs.comm_wrapper is DDPCommunicationHookType.BF16
    assert kwargs.to_kwargs() == {}  # the hook is registered, not passed to DistributedDataParallel
    with pytest.raises(ValueError, match="comm_wrapper='power_sgd'"):
        DistributedDataParallelKwargs(comm_wrapper="power_sgd")
    with pytest.raises(ValueError, match="comm_hook='int8'"):
        DistributedDataParallelKwargs(comm_hook="int8")


def test_single_process_triggers_join_and_sync_helpers():
    acc = Accelerator()
    assert not acc.check_trigger()
    acc.set_trigger()
    assert acc.check_trigger() and not acc.check_trigger()
    model = acc.prepare(_linear())
    with acc.join_uneven_inputs([model], even_batches=False), acc.trigger_sync_in_backward(model):
        acc.backward(model(torch.ones(1, 1)).sum())
    assert model.weight.grad is not None


def test_synchronize_rng_states_names():
    surge.synchronize_rng_states(["torch", "generator"], generator=torch.Generator())  # one process: nothing to do
    with pytest.raises(UnsupportedError, match="XLA"):
        surge.synchronize_rng_states(["xla"])
    with pytest.raises(ValueError, match=r"generator=<torch\.Generator>"):
        surge.synchronize_rng_states(["generator"])


def test_debug_launcher_runs_the_function_on_two_processes(tmp_path):
    def work(folder):
        acc = Accelerator()
        total = acc.reduce(torch.tensor(acc.process_index + 1), "sum").item()
        with open(os.path.join(folder, f"rank{acc.process_index}"), "w") as f:
            f.write(f"{acc.state.num_processes} {acc.distributed_type.value} {total}")

    surge.debug_launcher(work, args=(str(tmp_path),), num_processes=2)
    assert sorted(os.listdir(tmp_path)) == ["rank0", "rank1"]
    assert {(tmp_path / n).read_text() for n in ("rank0", "rank1")} == {"2 MULTI_CPU 3"}


def test_notebook_launcher_one_process_and_its_errors():
    calls = []
    surge.notebook_launcher(calls.append, args=("ran",), num_processes=1)
    assert calls == ["ran"]
    with pytest.raises(ValueError, match="num_processes"):
        surge.notebook_launcher(calls.append, args=("x",))
    with pytest.raises(ValueError, match="mixed_precision='fp32'"):
        surge.notebook_launcher(calls.append, num_processes=2, mixed_precision="fp32")


def test_accelerate_utils_paths_and_helpers(tmp_path):
    from surge.utils import operations, write_basic_config
    from surge.utils.memory import find_executable_batch_size, release_memory

    assert find_executable_batch_size is surge.find_executable_batch_size
    a, b = release_memory(object(), object())
    assert a is None and b is None
    batch = {"x": torch.ones(3, 2, dtype=torch.bfloat16), "y": [torch.zeros(3)]}
    assert operations.find_batch_size(batch) == 3 and operations.convert_to_fp32(batch)["x"].dtype == torch.float32
    assert operations.concatenate([batch, batch])["y"][0].shape == (6,)
    assert operations.recursively_apply(lambda t: t + 1, batch)["y"][0].sum() == 3
    with pytest.raises(TypeError, match="unsupported type str"):
        operations.recursively_apply(lambda t: t, {"a": "text"}, error_on_other_type=True)
    assert not surge.utils.is_torch_xla_available() and surge.utils.is_cuda_available() == torch.cuda.is_available()
    with pytest.raises(UnsupportedError, match="install_xla needs TPU/XLA execution"):
        surge.utils.install_xla()
    path = tmp_path / "cfg.yaml"
    assert write_basic_config("bf16", save_location=path) == path
    assert "mixed_precision: bf16" in path.read_text()
    assert write_basic_config("fp16", save_location=path) is False  # never overwritten
    assert "mixed_precision: bf16" in path.read_text()
