"""The ``accelerate.utils`` helpers and Accelerator queries added in the issue 16 sweep
(docs/migrating.md, "Accelerate names surge does not provide"): each behaves as HF
Accelerate's, compared with the installed Accelerate where it runs on this machine."""

from __future__ import annotations

import io
import logging
import os
import sys
import types
from contextlib import nullcontext

import pytest
import torch
from torch import nn

import surge.utils as su
from surge import Accelerator
from surge.unsupported import UnsupportedError

hf = pytest.importorskip("accelerate.utils")


class Net(nn.Module):
    """Embedding tied to the head, two same-class blocks, a (non-)persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(8, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.head = nn.Linear(4, 8, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(4, dtype=torch.float16))
        self.register_buffer("mask", torch.ones(2, dtype=torch.bool), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.head(h)


# -- constants, environment, versions ----------------------------------------------------------


def test_checkpoint_file_names_are_accelerates_and_name_what_the_reader_reads(tmp_path):
    names = ["MODEL_NAME", "SAFE_MODEL_NAME", "OPTIMIZER_NAME", "SCHEDULER_NAME", "SAMPLER_NAME", "SCALER_NAME",
             "RNG_STATE_NAME", "WEIGHTS_NAME", "WEIGHTS_PATTERN_NAME", "WEIGHTS_INDEX_NAME", "SAFE_WEIGHTS_NAME",
             "SAFE_WEIGHTS_PATTERN_NAME", "SAFE_WEIGHTS_INDEX_NAME", "PROFILE_PATTERN_NAME"]
    assert {n: getattr(su, n) for n in names} == {n: getattr(hf, n) for n in names}
    assert su.constants.SAFE_WEIGHTS_NAME == "model.safetensors"
    from surge.checkpoint.accelerate_format import is_accelerate_checkpoint

    (tmp_path / f"{su.OPTIMIZER_NAME}.bin").write_bytes(b"")
    assert is_accelerate_checkpoint(tmp_path)


@pytest.mark.parametrize("text", ["y", "YES", "t", "True", "on", "1", "n", "No", "f", "false", "OFF", "0"])
def test_str_to_bool_as_accelerate(text):
    assert su.str_to_bool(text) == hf.str_to_bool(text)
    assert su.str_to_bool(text, to_bool=True) is hf.str_to_bool(text, to_bool=True)


def test_str_to_bool_rejects_other_strings():
    with pytest.raises(ValueError, match="'maybe'"):
        su.str_to_bool("maybe")


def test_env_parsers_as_accelerate(monkeypatch):
    monkeypatch.setenv("SURGE_T_FLAG", "yes")
    monkeypatch.setenv("SURGE_T_NEG", "-1")
    monkeypatch.setenv("SURGE_T_INT", "7")
    monkeypatch.delenv("SURGE_T_UNSET", raising=False)
    for module in (su, hf):
        assert module.parse_flag_from_env("SURGE_T_FLAG") is True
        assert module.parse_flag_from_env("SURGE_T_UNSET", True) is True
        assert module.parse_choice_from_env("SURGE_T_FLAG") == "yes"
        assert module.parse_choice_from_env("SURGE_T_UNSET", "fp16") == "fp16"
        assert module.get_int_from_env(["SURGE_T_UNSET", "SURGE_T_NEG", "SURGE_T_INT"], 3) == 7
        assert module.get_int_from_env(["SURGE_T_UNSET"], 3) == 3
    monkeypatch.setenv("SURGE_T_INT", "seven")
    with pytest.raises(ValueError, match="SURGE_T_INT='seven'"):
        su.get_int_from_env(["SURGE_T_INT"], 0)


def test_patch_environment_sets_upper_case_keys_and_restores(monkeypatch):
    monkeypatch.setenv("SURGE_T_KEEP", "old")
    monkeypatch.delenv("SURGE_T_NEW", raising=False)
    with su.patch_environment(surge_t_keep=1, SURGE_T_NEW="x"):
        assert os.environ["SURGE_T_KEEP"] == "1" and os.environ["SURGE_T_NEW"] == "x"
    assert os.environ["SURGE_T_KEEP"] == "old" and "SURGE_T_NEW" not in os.environ


def test_clear_environment_empties_then_restores_exactly():
    before = dict(os.environ)
    with su.clear_environment():
        assert dict(os.environ) == {}
        os.environ["SURGE_T_SET_INSIDE"] = "1"
    assert dict(os.environ) == before


def test_purge_accelerate_environment_restores_accelerate_and_surge_variables(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")

    @su.purge_accelerate_environment
    def sets() -> str:
        os.environ["ACCELERATE_MIXED_PRECISION"] = "fp16"
        os.environ["ACCELERATE_T_NEW"] = "1"
        os.environ["SURGE_T_NEW"] = "1"
        return "done"

    assert sets() == "done"
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "ACCELERATE_T_NEW" not in os.environ and "SURGE_T_NEW" not in os.environ

    @su.purge_accelerate_environment
    class Base:
        def test_sets(self) -> None:
            os.environ["ACCELERATE_T_CLASS"] = "1"

    class Child(Base):
        def test_child(self) -> None:
            os.environ["ACCELERATE_T_CHILD"] = "1"

    Child().test_sets()
    Child().test_child()
    assert "ACCELERATE_T_CLASS" not in os.environ and "ACCELERATE_T_CHILD" not in os.environ


def test_are_libraries_initialized():
    assert su.are_libraries_initialized("torch", "surge_no_such_library") == ["torch"]


def test_compare_versions_as_accelerate():
    from packaging.version import Version

    for op in (">", ">=", "==", "!=", "<=", "<"):
        for required in ("1.0", "2.6", "99.0"):
            assert su.compare_versions("torch", op, required) == hf.compare_versions("torch", op, required)
            assert su.is_torch_version(op, required) == hf.is_torch_version(op, required)
        assert su.compare_versions(Version("1.2"), op, "1.10") == hf.compare_versions(Version("1.2"), op, "1.10")
    with pytest.raises(ValueError, match="'=>'"):
        su.compare_versions("torch", "=>", "2.0")


def test_availability_checks():
    assert su.is_pytest_available() and su.is_import_timer_available() == bool(hf.is_import_timer_available())
    assert su.is_lomo_available() == bool(hf.is_lomo_available())
    assert su.is_bnb_available() == bool(hf.is_bnb_available())
    assert su.is_bitsandbytes_multi_backend_available() == bool(hf.is_bitsandbytes_multi_backend_available())
    assert su.is_xccl_available() == bool(hf.is_xccl_available())
    assert su.is_torchao_available() == bool(hf.is_torchao_available())
    assert not su.is_transformer_engine_mxfp8_available() and not su.is_habana_gaudi1()


def test_torchao_and_deepspeed_required():
    @su.torchao_required
    def needs_ao() -> int:
        return 1

    if su.is_torchao_available():
        assert needs_ao() == 1
    else:
        with pytest.raises(ImportError, match="pip install torchao"):
            needs_ao()

    @su.deepspeed_required
    def needs_ds() -> int:
        return 2

    from surge.state import AcceleratorState, is_initialized

    AcceleratorState._reset_state()
    assert not is_initialized() and needs_ds() == 2  # no Accelerator: runs, as in Accelerate
    acc = Accelerator()
    assert is_initialized()
    with pytest.raises(ValueError, match="needs_ds needs DeepSpeed"):
        needs_ds()
    del acc
    AcceleratorState._reset_state()
    assert not is_initialized()


def test_check_os_kernel_warns_below_5_5(monkeypatch, caplog):
    import platform

    fake = platform.uname()._replace(system="Linux", release="4.19.0-generic")
    monkeypatch.setattr(platform, "uname", lambda: fake)
    with caplog.at_level(logging.WARNING):
        su.check_os_kernel()
    assert "4.19.0" in caplog.text and "5.5.0" in caplog.text
    caplog.clear()
    monkeypatch.setattr(platform, "uname", lambda: fake._replace(release="6.1.0"))
    with caplog.at_level(logging.WARNING):
        su.check_os_kernel()
    assert caplog.text == ""


# -- model sizes and tied weights -------------------------------------------------------------


def test_dtype_byte_size_as_accelerate():
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool,
              torch.uint8, torch.float8_e4m3fn, su.CustomDtype.INT4, su.CustomDtype.INT2, su.CustomDtype.FP8]
    for dtype in dtypes:
        theirs = hf.CustomDtype(dtype.value) if isinstance(dtype, su.CustomDtype) else dtype
        assert su.dtype_byte_size(dtype) == hf.dtype_byte_size(theirs), dtype


@pytest.mark.parametrize("size", [123, "1GB", "1GiB", "2.5MB", "3MiB", "4KB", "5KiB", "8Gb", "8mb", "10kb"])
def test_convert_file_size_to_int_as_accelerate(size):
    assert su.convert_file_size_to_int(size) == hf.convert_file_size_to_int(size)


@pytest.mark.parametrize("size", ["12", "GB", "1TB", -1, 1.5])
def test_convert_file_size_to_int_rejects(size):
    with pytest.raises(ValueError, match="not a size"):
        su.convert_file_size_to_int(size)


def test_module_sizes_as_accelerate():
    model = Net()
    for kwargs in ({}, {"dtype": torch.float16}, {"dtype": "bfloat16"}, {"buffers_only": True},
                   {"special_dtypes": {"blocks.0.weight": torch.int8}}):
        assert dict(su.compute_module_sizes(model, **kwargs)) == dict(hf.compute_module_sizes(model, **kwargs))
    assert su.calculate_maximum_sizes(model) == hf.calculate_maximum_sizes(model)
    for kwargs in ({}, {"recurse": True}, {"recurse": True, "remove_non_persistent": True},
                   {"include_buffers": False}):
        ours, theirs = list(su.named_module_tensors(model, **kwargs)), list(hf.named_module_tensors(model, **kwargs))
        assert [(n, id(t)) for n, t in ours] == [(n, id(t)) for n, t in theirs]
    for fqns in (False, True):
        ours, theirs = (f(model, return_fqns=fqns) for f in (su.get_module_children_bottom_up,
                                                            hf.get_module_children_bottom_up))
        assert [x if fqns else id(x) for x in ours] == [x if fqns else id(x) for x in theirs]


def test_find_and_retie_tied_parameters():
    model = Net()
    model.blocks[1].weight = model.blocks[0].weight
    assert sorted(su.find_tied_parameters(model)) == [["blocks.0.weight", "blocks.1.weight"],
                                                       ["embed.weight", "head.weight"]]
    assert sorted(su.find_tied_parameters(model)) == sorted(hf.find_tied_parameters(model))  # theirs: set order
    tied = su.find_tied_parameters(model)
    model.head.weight = nn.Parameter(torch.zeros(8, 4, device="meta"))  # the link broken, as by a hook
    su.retie_parameters(model, tied)
    assert model.head.weight is model.embed.weight


def test_ensure_weights_retied_keeps_named_ties_after_reinitialising():
    model = Net()
    model._tied_weights_keys = ["head.weight"]

    def reinit(module: nn.Module) -> nn.Module:
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.zeros_like(param)))
        return module

    assert su.ensure_weights_retied(reinit, Net(), torch.device("cpu")) is reinit  # nothing tied by name
    init = su.ensure_weights_retied(reinit, model, torch.device("cpu"))
    init(model.embed)
    init(model.head)
    assert model.head.weight is model.embed.weight


def test_check_tied_parameters_in_config():
    class Config:
        tie_word_embeddings = True

    class PreTrainedModel(nn.Module):  # named as transformers' base class
        config = Config()

        def get_output_embeddings(self) -> nn.Module:
            return nn.Linear(1, 1)

    class Tied(PreTrainedModel):
        pass

    for model in (Tied(), Net()):
        assert su.check_tied_parameters_in_config(model) == hf.check_tied_parameters_in_config(model)
    assert su.check_tied_parameters_in_config(Tied()) and not su.check_tied_parameters_in_config(Net())


def test_storage_ids_and_safetensors_cleaning_as_accelerate():
    model = Net()
    w = model.embed.weight
    assert su.id_tensor_storage(w) == hf.id_tensor_storage(model.head.weight)
    assert su.id_tensor_storage(w) != su.id_tensor_storage(model.blocks[0].weight)
    ours = su.clean_state_dict_for_safetensors(model.state_dict())  # Accelerate's needs its PartialState to log
    assert list(ours) == ["scale", "embed.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                          "blocks.1.bias"]
    ours = su.extract_submodules_state_dict(model.state_dict(), ["blocks.1", "embed"])
    assert list(ours) == list(hf.extract_submodules_state_dict(model.state_dict(), ["blocks.1", "embed"]))
    assert list(ours) == ["blocks.1.weight", "blocks.1.bias", "embed.weight"]


def test_get_max_memory():
    found = su.get_max_memory()
    assert found["cpu"] > 0 and list(found)[-1] == "cpu"
    assert su.get_max_memory({"cpu": "1GiB", "disk": 5, "mps": "1KB"}) == {"mps": 1000, "cpu": 2**30, "disk": 5}
    with pytest.raises(ValueError, match="'tpu'"):
        su.get_max_memory({"tpu": 1})


# -- files ------------------------------------------------------------------------------------


def test_save_writes_atomically_on_the_main_process(tmp_path, monkeypatch):
    path = tmp_path / "obj.pt"
    su.save({"a": torch.ones(2)}, path)
    assert torch.equal(su.load(path)["a"], torch.ones(2))

    def broken(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        su.save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(su.load(path)["a"], torch.ones(2))  # the old file, whole
    assert os.listdir(tmp_path) == ["obj.pt"]


def test_save_safetensors_drops_aliases_and_load_state_dict_reads_both_formats(tmp_path):
    model = Net()
    su.save(model.state_dict(), tmp_path / "model.safetensors", safe_serialization=True)
    loaded = su.load_state_dict(str(tmp_path / "model.safetensors"))
    assert "head.weight" not in loaded and torch.equal(loaded["embed.weight"], model.embed.weight)
    assert set(loaded) == set(hf.load_state_dict(str(tmp_path / "model.safetensors")))
    on_cpu = su.load_state_dict(str(tmp_path / "model.safetensors"), device_map={"": "cpu"})
    assert on_cpu["embed.weight"].device.type == "cpu"
    su.save(model.state_dict(), tmp_path / "model.bin")
    assert set(su.load_state_dict(str(tmp_path / "model.bin"))) == set(model.state_dict())
    buffer = io.BytesIO()
    su.save({"a": torch.ones(1)}, buffer, safe_serialization=True)
    from safetensors.torch import load

    assert torch.equal(load(buffer.getvalue())["a"], torch.ones(1))
    with pytest.raises(TypeError, match="dict of tensors"):
        su.save([torch.ones(1)], tmp_path / "x.safetensors", safe_serialization=True)


class _Payload:
    pass


def test_load_is_weights_only(tmp_path):
    torch.save({"obj": _Payload()}, tmp_path / "unsafe.pt")
    with pytest.raises(Exception, match=r"weights_only|Weights only"):
        su.load(tmp_path / "unsafe.pt")
    assert isinstance(su.load(tmp_path / "unsafe.pt", weights_only=False)["obj"], _Payload)


# -- nested data ------------------------------------------------------------------------------


def test_data_structure_round_trip():
    data = {"x": torch.ones(2, 3), "y": [torch.zeros(4, dtype=torch.int64)]}
    structure = su.get_data_structure(data)
    assert structure["x"] == su.TensorInformation(shape=torch.Size([2, 3]), dtype=torch.float32)
    assert su.is_tensor_information(structure["y"][0]) and not su.is_tensor_information(data["x"])
    rebuilt = su.initialize_tensors(structure)
    assert rebuilt["x"].shape == (2, 3) and rebuilt["y"][0].dtype == torch.int64


@pytest.mark.parametrize(("batch", "processes"), [(3, 4), (5, 4), (8, 4), (9, 4), (2, 8), (7, 3)])
def test_pad_input_tensors_as_accelerate(batch, processes):
    t = torch.arange(batch * 2, dtype=torch.float32).reshape(batch, 2)
    assert torch.equal(su.pad_input_tensors(t, batch, processes), hf.pad_input_tensors(t, batch, processes))


def test_convert_outputs_to_fp32_and_nested_tensor_padding():
    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x.half(), "ids": x.long()}

    wrapped = su.convert_outputs_to_fp32(forward)
    out = wrapped(torch.ones(2))
    assert out["out"].dtype == torch.float32 and out["ids"].dtype == torch.int64
    assert wrapped.__wrapped__.model_forward is forward
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.warns(su.CannotPadNestedTensorWarning):
        assert su.pad_across_processes(nested) is nested


# -- compilation, precision -------------------------------------------------------------------


def test_compile_regions_compiles_each_repeated_block():
    from torch._dynamo.eval_frame import OptimizedModule

    model = Net()
    compiled = su.compile_regions(model, backend="eager")
    assert all(isinstance(b, OptimizedModule) for b in compiled.blocks)
    assert isinstance(compiled.embed, OptimizedModule) and compiled._orig_mod is model
    assert su.has_compiled_regions(compiled) and not su.has_compiled_regions(model)
    assert not isinstance(model.blocks[0], OptimizedModule)  # the original is unchanged
    x = torch.tensor([[1, 2]])
    assert torch.equal(compiled(x), model(x))
    assert not su.model_has_dtensor(model)
    in_place = Net()
    su.compile_regions_deepspeed(in_place, backend="eager")
    assert in_place.blocks[0]._compiled_call_impl is not None and in_place.head._compiled_call_impl is not None


def test_grad_scaler_and_mixed_precision_context():
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    assert isinstance(su.get_grad_scaler(su.DistributedType.FSDP), ShardedGradScaler)
    with pytest.warns(UserWarning, match="CUDA is not available") if not torch.cuda.is_available() else nullcontext():
        assert type(su.get_grad_scaler()) is torch.amp.GradScaler
    with pytest.raises(TypeError, match="bogus"):  # kwargs go to the scaler
        su.get_grad_scaler(bogus=1)
    acc = Accelerator(mixed_precision="bf16")
    with su.get_mixed_precision_context_manager(native_amp=True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with su.get_mixed_precision_context_manager(native_amp=False):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    del acc


def test_fp8_recipes():
    from surge.config.accelerator_config import AcceleratorConfig
    from surge.config.kwargs import AORecipeKwargs

    for name in ("FP8RecipeKwargs", "TERecipeKwargs", "MSAMPRecipeKwargs"):
        with pytest.raises(UnsupportedError, match=name):
            getattr(su, name)()
    if not su.is_torchao_available():
        with pytest.raises(ImportError, match="pip install torchao"):
            AORecipeKwargs()
    recipe = AORecipeKwargs(config=object())
    assert AcceleratorConfig.from_handlers([recipe], mixed_precision="fp8").fp8_recipe is recipe
    with pytest.raises(ValueError, match="mixed_precision='no'"):
        AcceleratorConfig.from_handlers([recipe])
    assert Accelerator().fp8_backend == su.FP8BackendType.NO == "NO"


def test_convert_model_to_fp8_ao_skips_first_and_last_linear_layers(monkeypatch):
    calls = {}

    def convert_to_float8_training(model, module_filter_fn, config):
        calls["kept"] = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and module_filter_fn(m, n)]
        calls["config"] = config

    fake = types.ModuleType("torchao.float8")
    fake.convert_to_float8_training = convert_to_float8_training
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.float8", fake)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8), nn.Linear(8, 16), nn.Linear(16, 16))
    su.convert_model_to_fp8_ao(model, config="cfg")
    assert calls == {"kept": ["1"], "config": "cfg"}  # 2 and 3 are not multiples of 16; 0 and 4 first/last
    assert not su.filter_first_and_last_linear_layers(nn.Linear(16, 8), "x")
    assert su.filter_first_and_last_linear_layers(nn.Linear(16, 16), "x")
    assert not su.has_ao_layers(model)


# -- the Accelerator's queries ----------------------------------------------------------------


def test_accelerator_queries(tmp_path):
    from surge.utils import ProjectConfiguration

    acc = Accelerator(project_config=ProjectConfiguration(project_dir=str(tmp_path), iteration=3))
    assert acc.save_iteration == 3 and acc.should_save_model and acc.pipeline_parallel_rank == 0
    assert acc.is_fsdp2 is False
    model = nn.Linear(1, 1)
    assert not acc.verify_device_map(model)
    model.hf_device_map = {"a": 0, "b": "cpu"}
    assert acc.verify_device_map(model)

    @acc.on_local_process(local_process_index=0)
    def here() -> str:
        return "ran"

    @acc.on_local_process(local_process_index=1)
    def elsewhere() -> str:
        return "ran"

    assert here() == "ran" and elsewhere() is None
    with pytest.raises(ValueError, match="learning rate"):
        acc.lomo_backward(torch.ones(()), None)
    with pytest.raises(ValueError, match="no LOMO optimizer"):
        acc.lomo_backward(torch.ones(()), 0.1)
    acc.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    if not su.is_lomo_available():
        with pytest.raises(ImportError, match="pip install lomo-optim"):
            acc.lomo_backward(torch.ones(()), 0.1)
