"""Four gloo processes: tensor parallelism composed with FSDP2 (dp_shard 2 x tp 2), with
Ulysses sequence parallelism (tp 2 x sp 2) and with ring-attention context parallelism
(tp 2 x cp 2; also dp_shard 2 x cp 2) trains a tiny transformers Llama like one
process on the same global batch (fp32, SGD with momentum, <= 1e-5), from the model's own
plan and from a user's plan."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from surge import Accelerator, FullyShardedDataParallelPlugin, ParallelismConfig
from surge.testing import distributed_test

pytestmark = pytest.mark.distributed

STEPS, GLOBAL_BATCH, SEQ = 3, 8, 8


def _llama(heads: int = 8, kv_heads: int = 4, attention: str = "eager") -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32,
                         attn_implementation=attention)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (STEPS * GLOBAL_BATCH, SEQ), generator=g)


def _reference() -> dict[str, torch.Tensor]:
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for batch in _data().split(GLOBAL_BATCH):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        out[name] = t.full_tensor() if hasattr(t, "full_tensor") else t
    return out


def _train(pc: ParallelismConfig) -> tuple[Accelerator, dict[str, torch.Tensor]]:
    """Train under ``pc``; the q_proj weight is checked to be sharded over both dims."""
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin())
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH // pc.data_parallel_size)
    model, opt, loader = acc.prepare(model, opt, loader)
    for batch in loader:
        acc.backward(model(input_ids=batch, labels=batch).loss)
        opt.step()
        opt.zero_grad()
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.device_mesh.mesh_dim_names == ("shard", "tp") and q.to_local().shape == (8, 32), q.to_local().shape
    _check_memory_formula(model, opt, pc)
    return acc, _full(model)


def _check_memory_formula(model: nn.Module, opt: Any, pc: ParallelismConfig) -> None:
    """What this rank holds (parameters, gradients, SGD momentum: the local shards) is
    surge.memory's per-rank formula for the mesh (what `surge estimate-memory --tp_size`
    prints), to the byte."""
    from surge.memory import (
        count_parameters,
        measured_model_state_bytes,
        mesh_model_state_bytes,
        tensor_parallel_parameters,
    )

    whole = _llama()
    for p in model.parameters():  # gradients exist between backward and zero_grad: make them
        p.grad = torch.zeros_like(p)
    measured = measured_model_state_bytes(model, opt)["total"]
    opt.zero_grad()
    expected = mesh_model_state_bytes(count_parameters(whole), tensor_parallel_parameters(whole, pc.tp_plan),
                                      tp=pc.tp_size, shard=pc.shard_size, optimizer_state_bytes=4)
    assert measured == expected, (measured, expected)


def _compare(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert ref.keys() == got.keys()
    diff = max((ref[n] - got[n]).abs().max().item() for n in ref)
    assert diff <= 1e-5, diff


def check_llama_plan_dp_shard_2_x_tp_2():
    ref = _reference()
    acc, got = _train(ParallelismConfig(dp_shard_size=2, tp_size=2))
    rank = dist.get_rank()
    assert (acc.tensor_parallel_rank, acc.data_parallel_shard_rank) == (rank % 2, rank // 2)
    assert acc.torch_device_mesh.mesh_dim_names == ("dp_shard", "tp")
    assert (ref["lm_head.weight"] - _llama().lm_head.weight).abs().max() > 1e-2  # training moved it
    _compare(ref, got)


def check_user_plan_strings_and_styles():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {"model.layers.*.self_attn.q_proj": ColwiseParallel(), "model.layers.*.self_attn.k_proj": "colwise",
            "model.layers.*.self_attn.v_proj": "colwise", "model.layers.*.self_attn.o_proj": RowwiseParallel(),
            "model.layers.*.mlp.gate_proj": "colwise", "model.layers.*.mlp.up_proj": "colwise",
            "model.layers.*.mlp.down_proj": "rowwise"}
    ref = _reference()
    _, got = _train(ParallelismConfig(dp_shard_size=2, tp_size=2, tp_plan=plan))
    _compare(ref, got)


def check_bf16_and_fp16_run_close_to_fp32():
    """bf16 and fp16 (FSDP2's low-precision parameters, fp32 gradient reduction; fp16 with its
    loss scaler unscaling DTensor gradients) compose with tp: each trains within its rounding
    of the fp32 reference (an unscaled fp16 step would be 65536 times too large)."""
    ref = _reference()
    for precision, low, high in (("bf16", 1e-5, 5e-3), ("fp16", 1e-6, 5e-4)):
        pc = ParallelismConfig(dp_shard_size=2, tp_size=2)
        acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin(),
                          mixed_precision=precision)
        model = _llama()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH // 2)
        model, opt, loader = acc.prepare(model, opt, loader)
        _steps(acc, model, opt, list(loader))
        got = _full(model)
        diff = max((ref[n] - got[n]).abs().max().item() for n in ref)
        assert low < diff < high, (precision, diff)  # measured: bf16 2.2e-4, fp16 1.4e-5


def check_tp_needs_fsdp_and_an_unsplit_model():
    """tp with dp_shard needs an FSDP plugin; FSDP x tp refuses a model split already (as
    transformers' tp_plan="auto" leaves it, on a mesh of its own) instead of splitting it twice."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    try:
        Accelerator(parallelism_config=ParallelismConfig(dp_shard_size=2, tp_size=2))
    except ValueError as error:
        assert "fsdp_plugin" in str(error), error
    else:
        raise AssertionError("tp_size=2 without FSDP was accepted")
    model = _llama()
    parallelize_module(model, init_device_mesh("cpu", (4,), mesh_dim_names=("tp",)),
                       {"model.layers.0.self_attn.q_proj": ColwiseParallel()})
    acc = Accelerator(parallelism_config=ParallelismConfig(dp_shard_size=2, tp_size=2),
                      fsdp_plugin=FullyShardedDataParallelPlugin())
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj.weight is split already .* Load the model "
                                         r"whole"):
        acc.prepare(model)


def check_loss_parallel():
    """TorchTensorParallelConfig(loss_parallel=True): the head's logits stay split over the
    vocabulary (a DTensor) and the model's own cross-entropy runs on them; the training is
    one process's, with num_items_in_batch (the Trainer's form) counting dp processes only."""
    from torch.distributed.tensor import DTensor

    from surge.utils import TorchTensorParallelConfig

    ref = _reference()
    pc = ParallelismConfig(dp_shard_size=2, tp_size=2, tp_handler=TorchTensorParallelConfig(loss_parallel=True))
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin(), nonfinite="skip")
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH // 2)
    model, opt, loader = acc.prepare(model, opt, loader)
    for step, batch in enumerate(loader):
        out = model(input_ids=batch, labels=batch)
        assert isinstance(out.logits, DTensor) and out.logits.to_local().shape[-1] == 32  # half the vocabulary
        if step % 2:
            acc.backward(out.loss)
        else:  # the Trainer's form: this process's token sum, over every data-parallel process's tokens
            tokens = batch.shape[0] * (batch.shape[1] - 1)
            acc.backward(out.loss * tokens, num_items_in_batch=tokens * 2)
        opt.step()
        opt.zero_grad()
    _compare(ref, _full(model))
    # The non-finite guard reads the (DTensor) loss and the gradient shards: a NaN loss on one
    # tp rank skips the step on every rank.
    before = _full(model)
    out = model(input_ids=_data()[:4], labels=_data()[:4])
    acc.backward(out.loss * (float("nan") if dist.get_rank() == 1 else 1.0))
    opt.step()
    opt.zero_grad()
    assert acc.optimizer_step_was_skipped
    _compare(before, _full(model))


def _clipped_reference() -> tuple[dict[str, torch.Tensor], list[float]]:
    """One process on the global batches, clipping at 0.5: final parameters and norms."""
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    norms = []
    for batch in _data().split(GLOBAL_BATCH):
        model(input_ids=batch, labels=batch).loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())
        opt.step()
        opt.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, norms


def check_tp_alone_with_clipping_and_a_presplit_model():
    """tp 4 on 4 processes, no plugin: every rank reads the global batch, the split weights
    are quarters, clipping sees the whole model's norm; a model already split (as
    transformers' tp_plan="auto" leaves it) is taken as it is."""
    ref, norms = _clipped_reference()
    acc = Accelerator(parallelism_config=ParallelismConfig(tp_size=4))
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH)
    model, opt, loader = acc.prepare(model, opt, loader)
    assert model.model.layers[0].mlp.up_proj.weight.to_local().shape == (16, 32)
    got = []
    for batch in loader:
        acc.backward(model(input_ids=batch, labels=batch).loss)
        got.append(acc.clip_grad_norm_(model.parameters(), 0.5).item())
        opt.step()
        opt.zero_grad()
    _compare(ref, _full(model))
    assert max(abs(a - b) for a, b in zip(norms, got, strict=True)) < 1e-5, (norms, got)
    again = Accelerator(parallelism_config=ParallelismConfig(tp_size=4))
    assert again.prepare(model) is model  # split already: left as it is


def check_accumulation_clipping_and_metrics():
    """Accumulation 2, clipping at 0.5 (the norm over the whole model, DTensor-aware), and
    gather_for_metrics returning each sample once."""
    ref, norms = _clipped_reference()

    pc = ParallelismConfig(dp_shard_size=2, tp_size=2)
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin(),
                      gradient_accumulation_steps=2)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH // 4)
    model, opt, loader = acc.prepare(model, opt, loader)
    got_norms, seen = [], []
    for batch in loader:
        with acc.accumulate(model):
            acc.backward(model(input_ids=batch, labels=batch).loss)
            if acc.sync_gradients:
                got_norms.append(acc.clip_grad_norm_(model.parameters(), 0.5).item())
            opt.step()
            opt.zero_grad()
        seen.append(acc.gather_for_metrics(batch))
    _compare(ref, _full(model))
    assert max(abs(a - b) for a, b in zip(norms, got_norms, strict=True)) < 1e-5, (norms, got_norms)
    gathered = torch.cat(seen)
    assert gathered.shape == _data().shape and sorted(map(tuple, gathered.tolist())) == sorted(
        map(tuple, _data().tolist()))


def _prepared(pc: ParallelismConfig, project_dir: str) -> tuple[Accelerator, nn.Module, Any, Any]:
    fsdp = FullyShardedDataParallelPlugin() if pc.tp_size < pc.total_size else None  # tp alone: no plugin
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=fsdp, project_dir=project_dir)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH // pc.data_parallel_size)
    model, opt, loader = acc.prepare(model, opt, loader)
    return acc, model, opt, loader


def _resume_under_sequence_parallel(folder: str, project_dir: str, ref: dict[str, torch.Tensor]) -> None:
    from surge.parallel import sequence_parallel_loss

    pc = ParallelismConfig(tp_size=2, sp_size=2)
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin(), project_dir=project_dir)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(list(_data()), batch_size=GLOBAL_BATCH,
                                         collate_fn=lambda rows: {"input_ids": torch.stack(rows),
                                                                  "labels": torch.stack(rows)})
    model, opt, loader = acc.prepare(model, opt, loader)
    acc.load_state(folder)
    group = acc.torch_device_mesh["sp"].get_group()
    for batch in list(loader)[1:]:
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        acc.backward(sequence_parallel_loss(logits, batch["shift_labels"], group))
        opt.step()
        opt.zero_grad()
    _compare(ref, _full(model))


def _steps(acc: Accelerator, model: nn.Module, opt: Any, batches: list[torch.Tensor]) -> None:
    for batch in batches:
        acc.backward(model(input_ids=batch, labels=batch).loss)
        opt.step()
        opt.zero_grad()


def check_save_state_and_reshard_into_4_x_1():
    """A 2 x 2 save_state resumes at 2 x 2, at dp_shard 4 x tp 1, at tp 4 alone (no data
    parallelism: the TensorParallel strategy) and at dp_shard 1 x tp 2 (with sp 2 on the
    other two processes: Ulysses), each continuing exactly as one uninterrupted process."""
    ref = _reference()
    holder = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder)
    folder = os.path.join(holder[0], "ckpt")
    acc, model, opt, loader = _prepared(ParallelismConfig(dp_shard_size=2, tp_size=2), holder[0])
    batches = list(loader)
    _steps(acc, model, opt, batches[:1])
    acc.save_state(folder)
    for pc in (ParallelismConfig(dp_shard_size=2, tp_size=2), ParallelismConfig(dp_shard_size=4),
               ParallelismConfig(tp_size=4)):
        acc, model, opt, loader = _prepared(pc, holder[0])
        acc.load_state(folder)
        _steps(acc, model, opt, list(loader)[1:])
        _compare(ref, _full(model))
    assert acc.strategy.name == "tp" and acc.tensor_parallel_rank == dist.get_rank()
    # tp alone saves too: its checkpoint loads at dp_shard 4, its export is the full model.
    final = os.path.join(holder[0], "final")
    acc.save_state(final)
    acc.save_model(model, os.path.join(holder[0], "export"))
    acc, model, opt, loader = _prepared(ParallelismConfig(dp_shard_size=4), holder[0])
    acc.load_state(final)
    _compare(ref, _full(model))
    _resume_under_sequence_parallel(folder, holder[0], ref)
    acc, model, opt, loader = _prepared(ParallelismConfig(dp_shard_size=2, tp_size=2), holder[0])
    acc.load_state(folder)
    acc.save_model(model, os.path.join(holder[0], "export_tp"))
    full = _full(model)
    dist.barrier()
    if dist.get_rank() == 0:
        from safetensors.torch import load_file

        written = load_file(os.path.join(holder[0], "export_tp", "model.safetensors"))
        assert set(written) >= set(full) - {"lm_head.weight"}, sorted(set(full) - set(written))
        assert max((written[n] - full[n]).abs().max().item() for n in written) == 0.0
        alone = load_file(os.path.join(holder[0], "export", "model.safetensors"))  # from tp 4
        assert max((alone[n] - ref[n]).abs().max().item() for n in alone) <= 1e-5
        shutil.rmtree(holder[0])


def _labelled(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.stack(rows)
    labels = ids.clone()
    labels[::3, -3:] = -100  # some sequences end in ignored tokens: the shards count different tokens
    return {"input_ids": ids, "labels": labels}


def check_tp_2_x_sp_2():
    """tp 2 x sp 2: every rank reads the one global batch, keeps its half of each sequence
    (Ulysses: all-to-all over the heads its tensor-parallel rank holds), and FSDP2 averages
    gradients over the sp ranks. 8 query / 4 key-value heads: 2 / 1 per rank."""
    from surge.parallel import sequence_parallel_loss

    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for rows in _data().split(GLOBAL_BATCH):
        model(**_labelled(list(rows))).loss.backward()
        opt.step()
        opt.zero_grad()
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}

    pc = ParallelismConfig(tp_size=2, sp_size=2)
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin())
    rank = dist.get_rank()
    assert acc.torch_device_mesh.mesh_dim_names == ("sp", "tp")
    assert (acc.tensor_parallel_rank, acc.torch_device_mesh.get_local_rank("sp")) == (rank % 2, rank // 2)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(list(_data()), batch_size=GLOBAL_BATCH, collate_fn=_labelled)
    model, opt, loader = acc.prepare(model, opt, loader)
    group = acc.torch_device_mesh["sp"].get_group()
    losses = []
    for batch in loader:
        assert batch["input_ids"].shape == (GLOBAL_BATCH, SEQ // 2) and "labels" not in batch
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        loss = sequence_parallel_loss(logits, batch["shift_labels"], group)
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert len(losses) == STEPS and len({round(v, 6) for v in acc.gather(torch.tensor(losses[-1:])).tolist()}) == 1
    _compare(ref, _full(model))


def check_hsdp_x_sp():
    """dp_replicate 2 x sp 2 under FSDP (HSDP: shard over the sp pair, replicate across
    pairs): each pair reads its half of the global batch, each rank half of each sequence."""
    from surge.parallel import sequence_parallel_loss

    ref = _reference()
    pc = ParallelismConfig(dp_replicate_size=2, sp_size=2)
    acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin())
    assert acc.torch_device_mesh.mesh_dim_names == ("dp_replicate", "sp")
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(list(_data()), batch_size=GLOBAL_BATCH // 2,
                                         collate_fn=lambda rows: {"input_ids": torch.stack(rows),
                                                                  "labels": torch.stack(rows)})
    model, opt, loader = acc.prepare(model, opt, loader)
    assert acc.strategy.hybrid and acc.data_parallel_rank == dist.get_rank() // 2
    group = acc.torch_device_mesh["sp"].get_group()
    for batch in loader:
        assert batch["input_ids"].shape == (GLOBAL_BATCH // 2, SEQ // 2)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        acc.backward(sequence_parallel_loss(logits, batch["shift_labels"], group))
        opt.step()
        opt.zero_grad()
    _compare(ref, _full(model))


def _ring_step(acc: Accelerator, model: nn.Module, opt: Any, batch: torch.Tensor, cp: int) -> None:
    """One step under context parallelism: this rank's token sum over the batch's count, x cp
    (gradients average over the cp ranks), so the step is one process's."""
    import torch.nn.functional as F

    shift = torch.full_like(batch, -100)
    shift[:, :-1] = batch[:, 1:]
    count = (shift != -100).sum()
    positions = torch.arange(SEQ).expand_as(batch).clone()
    with acc.maybe_context_parallel(buffers=[batch, shift, positions], buffer_seq_dims=[1, 1, 1]):
        logits = model(input_ids=batch, position_ids=positions).logits
        logits = logits.full_tensor() if hasattr(logits, "full_tensor") else logits
        loss = F.cross_entropy(logits.flatten(0, 1), shift.flatten(), reduction="sum")
        acc.backward(loss * cp / count)
    opt.step()
    opt.zero_grad()


def check_cp_with_tp_and_with_dp_shard():
    """Context parallelism (ring attention) on 4 processes: dp_shard 2 x cp 2 and tp 2 x cp 2
    (each tp rank's heads go round its cp ring), FSDP2 sharding over the cp ranks, train like
    one process; the per-rank memory is the formula's with cp sharding like dp_shard. A tp 2 x
    cp 2 save_state after one step resumes at dp_shard 2 x tp 2 (no cp) exactly."""
    ref = _reference()
    holder = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder)
    folder = os.path.join(holder[0], "cp")
    for pc in (ParallelismConfig(dp_shard_size=2, cp_size=2), ParallelismConfig(tp_size=2, cp_size=2)):
        acc = Accelerator(parallelism_config=pc, fsdp_plugin=FullyShardedDataParallelPlugin(), project_dir=holder[0])
        model = _llama(attention="sdpa")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loader = torch.utils.data.DataLoader(_data(), batch_size=GLOBAL_BATCH // pc.data_parallel_size)
        model, opt, loader = acc.prepare(model, opt, loader)
        batches = list(loader)
        for batch in batches if pc.dp_shard_size > 1 else batches[:1]:
            _ring_step(acc, model, opt, batch, pc.cp_size)
        _check_memory_formula(model, opt, pc)
        if pc.dp_shard_size > 1:
            _compare(ref, _full(model))
    acc.save_state(folder)
    acc, model, opt, loader = _prepared(ParallelismConfig(dp_shard_size=2, tp_size=2), holder[0])
    acc.load_state(folder)
    _steps(acc, model, opt, list(loader)[1:])
    _compare(ref, _full(model))
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(holder[0])


CHECKS = [check_cp_with_tp_and_with_dp_shard, check_tp_2_x_sp_2, check_hsdp_x_sp, check_llama_plan_dp_shard_2_x_tp_2,
          check_save_state_and_reshard_into_4_x_1,
          check_accumulation_clipping_and_metrics,
          check_user_plan_strings_and_styles, check_bf16_and_fp16_run_close_to_fp32,
          check_tp_needs_fsdp_and_an_unsplit_model,
          check_tp_alone_with_clipping_and_a_presplit_model, check_loss_parallel]

test_four_processes = distributed_test(CHECKS, world_size=4)
