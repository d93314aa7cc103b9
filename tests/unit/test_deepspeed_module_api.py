"""DeepSpeed's module-level API on one process: the accelerator abstraction (CPU, CUDA with
torch.cuda patched, MPS), deepspeed.comm's signatures against DeepSpeed's, init_distributed,
surge.zero without sharding, and DummyOptim/DummyScheduler training with the config's sections."""

import ast
import inspect
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

import surge
import surge.comm as ds_comm
from surge.deepspeed.cpu_accelerator import CpuAccelerator
from surge.deepspeed.cuda_accelerator import CudaAccelerator
from surge.deepspeed.device_abstraction import get_accelerator, set_accelerator
from surge.deepspeed.mps_accelerator import MpsAccelerator
from surge.process_group import destroy_process_group, group_timeout
from surge.unsupported import UnsupportedError

# deepspeed/comm/comm.py at microsoft/DeepSpeed 38327e07 (read with the search tools): every public
# function a script may call, with its parameters in order and their defaults.
DEEPSPEED_COMM = {
    "configure": "deepspeed_config=None, enabled=None, prof_all=None, prof_ops=None, verbose=None, debug=None",
    "is_initialized": "",
    "destroy_process_group": "group=None",
    "new_group": "ranks",
    "is_available": "",
    "broadcast": "tensor, src, group=None, async_op=False, prof=False, log_name='broadcast', debug=get_caller_func()",
    "broadcast_object_list": "object_list, src, group=None, device=None",
    "all_gather": "tensor_list, tensor, group=None, async_op=False, prof=False, log_name='all_gather', "
                  "debug=get_caller_func()",
    "has_reduce_scatter_tensor": "",
    "reduce_scatter_fn": "output_tensor, tensor, op=ReduceOp.SUM, group=None, async_op=False, prof=False, "
                         "debug=get_caller_func()",
    "reduce_scatter_tensor": "output_tensor, tensor, op=ReduceOp.SUM, group=None, async_op=False, prof=False, "
                             "log_name='reduce_scatter_tensor', debug=get_caller_func()",
    "all_gather_into_tensor": "output_tensor, tensor, group=None, async_op=False, prof=False, "
                              "log_name='all_gather_into_tensor', debug=get_caller_func()",
    "has_all_gather_into_tensor": "",
    "allgather_fn": "output_tensor, input_tensor, group=None, async_op=False, debug=get_caller_func()",
    "all_to_all_single": "output, tensor, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False, "
                         "prof=False, log_name='all_to_all_single', debug=get_caller_func()",
    "all_to_all": "output_tensor_list, input_tensor_list, group=None, async_op=False",
    "send": "tensor, dst, group=None, tag=0, prof=False, log_name='send', debug=get_caller_func()",
    "recv": "tensor, src=None, group=None, tag=0, prof=False, log_name='recv', debug=get_caller_func()",
    "isend": "tensor, dst, group=None, tag=0, prof=False, log_name='isend', debug=get_caller_func()",
    "irecv": "tensor, src=None, group=None, tag=0, prof=False, log_name='irecv', debug=get_caller_func()",
    "gather": "tensor, gather_list=None, dst=0, group=None, async_op=False, prof=False, log_name='gather', "
              "debug=get_caller_func()",
    "scatter": "tensor, scatter_list=None, src=0, group=None, async_op=False, prof=False, log_name='scatter', "
               "debug=get_caller_func()",
    "barrier": "group=None, async_op=False, device_ids=None, prof=False, log_name='barrier', debug=get_caller_func()",
    "monitored_barrier": "group=None, timeout=None, wait_all_ranks=False, prof=False, log_name='monitored_barrier', "
                         "debug=get_caller_func()",
    "log_summary": "show_straggler=False",
    "reduce": "tensor, dst, op=ReduceOp.SUM, group=None, async_op=False, prof=False, log_name='reduce', "
              "debug=get_caller_func()",
    "reduce_scatter": "output, input_list, op=ReduceOp.SUM, group=None, async_op=False, prof=False, "
                      "log_name='reduce_scatter', debug=get_caller_func()",
    "has_all_reduce_coalesced": "",
    "has_coalescing_manager": "",
    "all_gather_coalesced": "output_tensors, input_tensors, group=None, async_op=False",
    "all_reduce": "tensor, op=ReduceOp.SUM, group=None, async_op=False, prof=False, log_name='all_reduce', "
                  "debug=get_caller_func()",
    "inference_all_reduce": "tensor, op=ReduceOp.SUM, group=None, async_op=False, prof=False, log_name='all_reduce', "
                            "debug=get_caller_func()",
    "all_reduce_coalesced": "tensors, op=ReduceOp.SUM, group=None, async_op=False, prof=False, "
                            "log_name='all_reduce', debug=get_caller_func()",
    "get_world_group": "",
    "get_world_size": "group=None",
    "get_rank": "group=None",
    "get_local_rank": "",
    "get_global_rank": "group=None, group_rank=0",
    "get_all_ranks_from_group": "group=None",
    "initialize_mesh_device": "mesh_shape, mesh_dim_names",
    "init_distributed": "dist_backend=None, auto_mpi_discovery=True, distributed_port=TORCH_DISTRIBUTED_DEFAULT_PORT, "
                        "verbose=True, timeout=default_pg_timeout, init_method=None, dist_init_required=None, "
                        "config=None, rank=-1, world_size=-1",
}
# Defaults that are DeepSpeed objects, and what surge uses for them.
SURGE_DEFAULT = {"ReduceOp.SUM": ds_comm.ReduceOp.SUM, "TORCH_DISTRIBUTED_DEFAULT_PORT": 29500,
                 "get_caller_func()": None, "default_pg_timeout": None}


@pytest.fixture(autouse=True)
def _fresh_accelerator():
    set_accelerator(None)
    yield
    set_accelerator(None)


@pytest.fixture
def group_cleanup():
    yield
    destroy_process_group()


# -- the accelerator abstraction ---------------------------------------------------------------


def test_cpu_accelerator_answers_as_deepspeeds():
    acc = surge.accelerator.get_accelerator()
    assert acc is surge.get_accelerator() is surge.deepspeed.get_accelerator() is get_accelerator()
    assert isinstance(acc, CpuAccelerator) and acc._name == "cpu"
    assert acc.device_name() == acc.device_name(3) == acc.current_device_name() == "cpu"
    assert acc.current_device() == 0 and acc.device_count() == 1 and acc.device(0) is None
    assert acc.is_available() and acc.is_bf16_supported() and not acc.is_fp16_supported()
    assert acc.supported_dtypes() == [torch.float, torch.bfloat16]
    assert acc.communication_backend_name() == "gloo"
    assert acc.is_synchronized_device() and acc.use_host_timers() and acc.resolves_data_dependency()
    assert acc.handles_memory_backpressure()
    assert acc.synchronize() is None and acc.set_device(0) is None and acc.empty_cache() is None
    acc.manual_seed(123)
    assert acc.initial_seed() == 123 and acc.random() is torch.random
    acc.manual_seed_all(7)
    assert torch.initial_seed() == 7 and acc.default_generator(0) is torch.default_generator
    state = acc.get_rng_state()
    first = torch.rand(1)
    acc.set_rng_state(state)
    assert torch.equal(torch.rand(1), first)
    assert acc.Stream is None and acc.Event is None and acc.current_stream() is None
    with acc.stream(None):
        pass
    assert 0 < acc.memory_allocated() <= acc.max_memory_allocated() and acc.memory_reserved() > 0
    acc.reset_peak_memory_stats()
    assert set(acc.memory_stats()) == {"allocated_bytes.all.current", "allocated_bytes.all.peak"}
    assert acc.total_memory() >= acc.available_memory() > 0
    t = torch.ones(2)
    assert acc.pin_memory(t) is t and not acc.is_pinned(t) and acc.on_accelerator(t)
    assert acc.BFloat16Tensor is torch.BFloat16Tensor and acc.LongTensor is torch.LongTensor
    assert acc.amp() is torch.cpu.amp
    assert acc.lazy_call(lambda: 5) == 5
    env = {}
    acc.set_visible_devices_envs(env, [0, 2])
    assert env == {"CUDA_VISIBLE_DEVICES": "0,2"}


def test_cpu_device_count_and_current_device_come_from_the_launcher(monkeypatch):
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    acc = CpuAccelerator()
    assert acc.current_device() == 1 and acc.device_count() == 2


def test_compiled_ops_are_refused_clearly():
    acc = get_accelerator()
    builder = acc.create_op_builder("CPUAdamBuilder")
    assert builder.NAME == "CPUAdamBuilder" and not builder.is_compatible()
    assert isinstance(builder, acc.get_op_builder("CPUAdamBuilder"))
    with pytest.raises(UnsupportedError, match=r"'CPUAdamBuilder' is not part of surge.*torch\.optim"):
        builder.load()


def test_detection_follows_deepspeed(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    with pytest.raises(ValueError, match=r"DS_ACCELERATOR='xpu'.*'cuda', 'cpu', 'mps'"):
        get_accelerator()
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert isinstance(get_accelerator(), CpuAccelerator)
    monkeypatch.delenv("DS_ACCELERATOR")
    set_accelerator(None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert isinstance(get_accelerator(), CudaAccelerator)
    mine = MpsAccelerator()
    set_accelerator(mine)
    assert get_accelerator() is mine
    with pytest.raises(TypeError, match="needs a DeepSpeedAccelerator"):
        set_accelerator("cuda")


def test_cuda_accelerator_answers_as_deepspeeds(monkeypatch):
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "current_device", lambda: 1)
    monkeypatch.setattr(cuda, "device_count", lambda: 4)
    monkeypatch.setattr(cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: 10)
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: 20)
    monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: 30)
    monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (40, 100))
    acc = CudaAccelerator()
    assert acc.device_name() == "cuda" and acc.device_name(2) == "cuda:2"
    assert acc.current_device() == 1 and acc.current_device_name() == "cuda:1" and acc.device_count() == 4
    assert acc.communication_backend_name() == "nccl" and not acc.is_synchronized_device()
    assert not acc.use_host_timers() and not acc.resolves_data_dependency()
    assert not acc.is_bf16_supported() and not acc.is_fp16_supported()
    monkeypatch.setenv("DS_ALLOW_DEPRECATED_FP16", "1")
    assert acc.is_fp16_supported() and acc.supported_dtypes() == [torch.float, torch.half]
    monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(cuda, "is_bf16_supported", lambda: True)
    assert acc.supported_dtypes() == [torch.float, torch.half, torch.bfloat16] and acc.is_triton_supported()
    assert (acc.memory_allocated(), acc.max_memory_allocated(), acc.memory_reserved()) == (10, 20, 30)
    assert acc.memory_cached() == 30 and acc.available_memory() == 40
    assert acc.Stream is torch.cuda.Stream and acc.Event is torch.cuda.Event and acc.amp() is torch.cuda.amp
    half = acc.HalfTensor
    assert half.keywords == {"dtype": torch.half, "device": "cuda"} and half.func is torch.tensor
    assert not acc.on_accelerator(torch.ones(1))
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    assert acc.is_bf16_supported() and acc.is_fp16_supported()  # DeepSpeed's answer without a device
    assert acc.export_envs() == ["NCCL"]


def test_mps_accelerator_answers_as_deepspeeds():
    acc = MpsAccelerator()
    assert acc.device_name() == "mps" and acc.device_name(0) == "mps:0" and acc.current_device_name() == "mps:0"
    assert acc.current_device() == torch.device("mps", 0) and acc.device_count() == 1
    assert acc.communication_backend_name() is None and acc.supported_dtypes() == [torch.float]
    assert not acc.is_bf16_supported() and not acc.is_fp16_supported() and acc.amp() is None
    assert acc.total_memory() is None and acc.memory_reserved() is None and acc.HalfTensor is None
    assert acc.Stream is None and not acc.on_accelerator(torch.ones(1))


# -- deepspeed.comm ----------------------------------------------------------------------------


def _parameters(text):
    names, defaults = [], {}
    for part in filter(None, (p.strip() for p in text.split(", "))):
        name, _, default = part.partition("=")
        names.append(name)
        if default:
            defaults[name] = SURGE_DEFAULT[default] if default in SURGE_DEFAULT else ast.literal_eval(default)
    return names, defaults


@pytest.mark.parametrize("name", sorted(DEEPSPEED_COMM))
def test_comm_functions_have_deepspeeds_signatures(name):
    import surge.comm as dist_mod
    from surge import comm

    assert comm is dist_mod and name in comm.__all__
    names, defaults = _parameters(DEEPSPEED_COMM[name])
    signature = inspect.signature(getattr(comm, name))
    assert list(signature.parameters) == names
    for param, default in defaults.items():
        assert signature.parameters[param].default == default, param


def test_rank_queries_answer_from_the_launcher_without_a_group(monkeypatch):
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    assert (ds_comm.get_rank(), ds_comm.get_world_size(), ds_comm.get_local_rank()) == (1, 2, 1)
    assert (ds_comm.get_world_rank_from_launcher(), ds_comm.get_local_rank_from_launcher()) == (1, 1)
    assert not ds_comm.is_initialized() and ds_comm.is_available()


def test_init_distributed_starts_one_process_and_is_then_a_no_op(group_cleanup):
    assert ds_comm.get_rank() == 0 and ds_comm.get_world_size() == 1 and not ds_comm.is_initialized()
    with pytest.raises(RuntimeError, match="dist_init_required=False"):
        surge.init_distributed(dist_init_required=False)
    with pytest.raises(ValueError, match="give both"):
        surge.init_distributed(rank=0)
    surge.init_distributed()
    assert dist.is_initialized() and dist.get_world_size() == 1 and dist.get_backend() == "gloo"
    assert group_timeout() == timedelta(minutes=30)  # DeepSpeed's default
    world = dist.group.WORLD
    surge.init_distributed(dist_backend="nccl", timeout=timedelta(seconds=1))  # a group runs: nothing happens
    surge.init_distributed(dist_init_required=False)
    assert dist.group.WORLD is world and dist.get_backend() == "gloo"
    t = torch.tensor([2.0, 3.0])
    for op, want in ((ds_comm.ReduceOp.SUM, [2.0, 3.0]), (ds_comm.ReduceOp.MAX, [2.0, 3.0]),
                     (dist.ReduceOp.PRODUCT, [2.0, 3.0])):
        ds_comm.all_reduce(t, op=op)
        assert t.tolist() == want
    with pytest.raises(ValueError, match="UNUSED is not a reduction"):
        ds_comm.all_reduce(t, op=ds_comm.ReduceOp.UNUSED)
    assert ds_comm.get_all_ranks_from_group() == [0] and ds_comm.get_global_rank(None, 0) == 0
    ds_comm.destroy_process_group()
    assert not ds_comm.is_initialized() and group_timeout() is None


def test_a_collective_without_a_group_starts_it(monkeypatch, group_cleanup):
    monkeypatch.setenv("DEEPSPEED_TIMEOUT", "5")
    t = torch.ones(2)
    ds_comm.broadcast(t, src=0)
    assert ds_comm.is_initialized() and group_timeout() == timedelta(minutes=5)
    ds_comm.barrier()
    works = ds_comm.all_reduce_coalesced([torch.ones(1), torch.ones(2)], async_op=True)
    assert works.wait()


def test_init_distributed_refuses_a_backend_it_cannot_run():
    with pytest.raises(ValueError, match="backend='ccl' is not supported"):
        surge.init_distributed(dist_backend="ccl", rank=0, world_size=2)
    assert not dist.is_initialized()


# -- deepspeed.zero without sharding -----------------------------------------------------------


def test_zero_api_on_one_process(group_cleanup):
    with surge.zero.Init(enabled=False):
        a = nn.Linear(2, 2)
    with surge.zero.Init(config_dict_or_path={"zero_optimization": {"stage": 2}}):
        b = nn.Linear(2, 2)
    assert not dist.is_initialized()  # neither Init had anything to do
    torch.manual_seed(0)
    with surge.zero.Init():  # one process: built as usual (DeepSpeed starts a group, so does surge)
        c = nn.Linear(2, 2)
    torch.manual_seed(0)
    assert torch.equal(c.weight, nn.Linear(2, 2).weight) and dist.is_initialized()
    for model in (a, b, c):
        with surge.zero.GatheredParameters(model.parameters(), modifier_rank=0), torch.no_grad():
            model.weight.fill_(1.0)
        assert model.weight.sum().item() == 4.0
    with surge.zero.GatheredParameters(a.weight, enabled=False), surge.zero.GatheredParameters("not a parameter"):
        pass
    surge.zero.register_external_parameter(a, a.weight)
    with pytest.raises(RuntimeError, match=r"not a torch\.nn\.Parameter"):
        surge.zero.register_external_parameter(a, torch.ones(1))
    assert surge.zero.ZeroParamStatus.NOT_AVAILABLE.value == 2 and surge.zero.ZeroParamType.PARTITIONED.value == 2
    with pytest.raises(ValueError, match="does not quantize"):
        surge.zero.Init(zero_quantized_weights=True)


# -- DummyOptim / DummyScheduler: the config's sections train ----------------------------------


def test_dummy_optim_and_scheduler_train_with_the_config_sections():
    from surge.deepspeed.schedulers import WarmupLR
    from surge.utils import DummyOptim, DummyScheduler

    config = {"zero_optimization": {"stage": 0}, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.1, "betas": [0.8, 0.9]}},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": "auto",
                                                           "warmup_num_steps": "auto"}}}
    accelerator = surge.Accelerator(deepspeed_plugin=surge.DeepSpeedPlugin(hf_ds_config=config))
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    reference = nn.Linear(4, 1)
    reference.load_state_dict(model.state_dict())
    dummy = DummyOptim(model.parameters(), lr=0.01)
    model, opt, sched = accelerator.prepare(model, dummy, DummyScheduler(dummy, warmup_num_steps=3))
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.1, betas=(0.8, 0.9))
    ref_sched = WarmupLR(ref_opt, warmup_min_lr=0.0, warmup_max_lr=0.01, warmup_num_steps=3)
    data = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(1))
    for x in data:
        accelerator.backward(model(x).pow(2).mean())
        opt.step()
        sched.step()
        opt.zero_grad()
        reference(x).pow(2).mean().backward()
        ref_opt.step()
        ref_sched.step()
        ref_opt.zero_grad()
    assert sched.get_last_lr() == ref_sched.get_last_lr()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-7)
