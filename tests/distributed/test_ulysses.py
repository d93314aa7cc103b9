"""Two gloo processes: Ulysses sequence parallelism, and context parallelism (torch's ring
attention, run on CPU through surge's handler), equal one process on the full sequence.

One spawn runs every check (see surge.testing.harness). Each rank computes the single-process
reference itself, on the full inputs, so no tensor has to be gathered for the comparison.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from surge.parallel import UlyssesAttention, apply_ulysses, sequence_parallel_loss, shard_sequence
from surge.testing import distributed_test

pytestmark = pytest.mark.distributed

TOL = {"atol": 1e-5, "rtol": 1e-5}
SEQ = 16


def _attention_parity(layout: str) -> None:
    rank, sp = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    b, s, h, kv_h, d = 2, 8, 4, 2, 3  # GQA: 2 query heads per kv head
    q_full = torch.randn(b, h, s, d, dtype=torch.float64, requires_grad=True)
    k_full = torch.randn(b, kv_h, s, d, dtype=torch.float64, requires_grad=True)
    v_full = torch.randn(b, kv_h, s, d, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(b, h, s, d, dtype=torch.float64)

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if layout == "bshd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2) if layout == "bshd" else out

    ref = F.scaled_dot_product_attention(q_full, k_full, v_full, is_causal=True, enable_gqa=True)
    ref.backward(grad_out)

    local = s // sp
    seq_dim = 2 if layout == "bhsd" else 1

    def shard(t: torch.Tensor) -> torch.Tensor:
        t = t.detach() if layout == "bhsd" else t.detach().transpose(1, 2)
        return t.narrow(seq_dim, rank * local, local).clone().requires_grad_(True)

    q, k, v = shard(q_full), shard(k_full), shard(v_full)
    out = UlyssesAttention(sdpa, None, layout=layout)(q, k, v)  # type: ignore[arg-type]
    g = grad_out if layout == "bhsd" else grad_out.transpose(1, 2)
    out.backward(g.narrow(seq_dim, rank * local, local))

    def mine(t: torch.Tensor) -> torch.Tensor:
        return t if layout == "bhsd" else t.transpose(1, 2)

    expect = ref.detach().narrow(2, rank * local, local)
    torch.testing.assert_close(mine(out.detach()), expect, **TOL)
    for got, full in ((q, q_full), (k, k_full), (v, v_full)):
        assert got.grad is not None and full.grad is not None
        torch.testing.assert_close(mine(got.grad), full.grad.narrow(2, rank * local, local), **TOL)


def check_attention_bshd() -> None:
    _attention_parity("bshd")


def check_attention_bhsd() -> None:
    _attention_parity("bhsd")


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, SEQ), generator=g)
    labels = ids.clone()
    labels[1, -3:] = -100  # ignored tokens at the end of one sequence
    return {"input_ids": ids, "labels": labels}


def _sp_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    shard = shard_sequence(batch, None)
    logits = model(input_ids=shard["input_ids"], position_ids=shard["position_ids"]).logits
    return sequence_parallel_loss(logits, shard["shift_labels"], None)


def _average_grads(model: torch.nn.Module) -> None:
    # [Note: sequence-parallel gradients]: the full gradient is the mean over the sp group.
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def check_llama_loss_and_grads() -> None:
    batch = _batch()
    ref = _llama()
    ref_loss = ref(**batch).loss
    ref_loss.backward()

    model = apply_ulysses(_llama(), None)
    assert model.config._attn_implementation == "surge_ulysses"
    loss = _sp_loss(model, batch)
    loss.backward()
    _average_grads(model)
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), **TOL)
    named_ref = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, named_ref[name].grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def check_llama_sgd_steps() -> None:
    batch = _batch()
    ref, model = _llama(), apply_ulysses(_llama(), None)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        ref_loss = ref(**batch).loss
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        loss = _sp_loss(model, batch)
        loss.backward()
        _average_grads(model)
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(loss.detach(), ref_loss.detach(), **TOL)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), **TOL, msg=lambda m, n=name: f"{n}: {m}")


def check_llama_subgroup_with_right_padding_mask() -> None:
    """An explicit sp group (not the default one) and a right-padded attention_mask given to the model."""
    group = dist.new_group([0, 1])
    batch = _batch()
    mask = torch.ones_like(batch["input_ids"])
    mask[1, -3:] = 0  # the ignored tail of sequence 1 is padding
    ref = _llama()
    ref_loss = ref(**batch, attention_mask=mask).loss
    model = apply_ulysses(_llama(), group)
    shard = shard_sequence({**batch, "attention_mask": mask}, group)
    logits = model(
        input_ids=shard["input_ids"], position_ids=shard["position_ids"], attention_mask=shard["attention_mask"]
    ).logits
    loss = sequence_parallel_loss(logits, shard["shift_labels"], group)
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), **TOL)
    dist.destroy_process_group(group)


def check_llama_heads_not_divisible() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=64,
    )
    with pytest.raises(ValueError, match=r"1 key/value heads \(num_key_value_heads\) are not divisible by sp size 2"):
        apply_ulysses(LlamaForCausalLM(config), None)


def _accelerated(plugin: str, accumulation: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train through the Accelerator with ParallelismConfig(sp_size=2): the loader hands
    each rank its half of every sequence; DDP or FSDP2 averages gradients over the 2 ranks."""
    from surge import Accelerator, FullyShardedDataParallelPlugin, ParallelismConfig

    kwargs: dict = {"fsdp_plugin": FullyShardedDataParallelPlugin()} if plugin == "fsdp" else {}
    acc = Accelerator(parallelism_config=ParallelismConfig(sp_size=2), gradient_accumulation_steps=accumulation,
                      **kwargs)
    assert acc.torch_device_mesh.mesh_dim_names == ("sp",)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rows = [_batch()["input_ids"][i % 2] for i in range(8)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4 // accumulation, collate_fn=_collate)
    model, opt, loader = acc.prepare(model, opt, loader)
    assert len(loader) == 2 * accumulation  # sharded over the data-parallel dims only (none here)
    group = acc.torch_device_mesh["sp"].get_group()
    norms = []
    for batch in loader:
        with acc.accumulate(model):
            assert batch["input_ids"].shape[1] == SEQ // 2
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            acc.backward(sequence_parallel_loss(logits, batch["shift_labels"], group))
            if acc.sync_gradients:
                norms.append(float(acc.clip_grad_norm_(model.parameters(), 0.5)))
            opt.step()
            opt.zero_grad()
    state = acc.get_state_dict(model)
    return norms, {n: t.detach() for n, t in state.items()}


def _collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.stack(rows)
    labels = ids.clone()
    labels[0, -5:] = -100  # one sequence's second half has fewer tokens to learn from
    return {"input_ids": ids, "labels": labels}


def _reference_steps() -> tuple[list[float], dict[str, torch.Tensor]]:
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rows = [_batch()["input_ids"][i % 2] for i in range(8)]
    norms = []
    for step in range(2):
        full = _collate(rows[4 * step:4 * step + 4])
        for half in (slice(0, 2), slice(2, 4)):  # accumulation 2 over the same 4 rows: the mean of two halves
            part = {k: v[half] for k, v in full.items()}
            tokens = (part["labels"][:, 1:] != -100).sum() / (full["labels"][:, 1:] != -100).sum()
            (model(**part).loss * tokens).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
        opt.step()
        opt.zero_grad()
    return norms, {n: p.detach() for n, p in model.state_dict().items()}


def check_accelerator_sp_ddp_and_fsdp() -> None:
    """sp_size=2 under DDP (accumulation 1, then FSDP2 sharding over the sp ranks) equals one
    process on the same batches; clipping sees the whole model's norm."""
    ref_norms, ref = _reference_steps()
    for plugin in ("ddp", "fsdp"):
        norms, got = _accelerated(plugin, accumulation=1)
        if dist.get_rank() == 0:
            for name, value in ref.items():
                torch.testing.assert_close(got[name], value, **TOL, msg=lambda m, n=name, k=plugin: f"{k} {n}: {m}")
            assert max(abs(a - b) for a, b in zip(norms, ref_norms, strict=True)) < 1e-5, (plugin, norms, ref_norms)


def check_accelerator_sp_accumulation_weights_tokens() -> None:
    """Accumulation 2: each micro-batch's mean is over its own tokens (Accelerate's rule), so
    the reference weights its halves the same way; the loader's micro-batches are halves."""
    norms, got = _accelerated("ddp", accumulation=2)
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rows = [_batch()["input_ids"][i % 2] for i in range(8)]
    ref_norms = []
    for step in range(2):
        for half in range(2):
            part = _collate(rows[4 * step + 2 * half:4 * step + 2 * half + 2])
            (model(**part).loss / 2).backward()
        ref_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
        opt.step()
        opt.zero_grad()
    if dist.get_rank() == 0:
        for name, value in model.state_dict().items():
            torch.testing.assert_close(got[name], value, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert max(abs(a - b) for a, b in zip(norms, ref_norms, strict=True)) < 1e-5, (norms, ref_norms)


def check_metrics_and_schedule_under_sp() -> None:
    """gather_for_metrics joins per-token values into whole sequences (each sample once);
    an LR schedule steps once per optimizer step (one data-parallel reader, not 2)."""
    from surge import Accelerator, ParallelismConfig

    acc = Accelerator(parallelism_config=ParallelismConfig(sp_size=2))
    rows = [torch.arange(SEQ) + 100 * i for i in range(4)]
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / 4)
    loader = torch.utils.data.DataLoader(rows, batch_size=2, collate_fn=_collate)
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    seen, per_sample, lrs = [], [], []
    for batch in loader:
        seen.append(acc.gather_for_metrics(batch["input_ids"]))
        per_sample.append(acc.gather_for_metrics(batch["input_ids"][:, 0]))  # no sequence dimension
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert torch.equal(torch.cat(seen), torch.stack(rows)), torch.cat(seen)
    assert torch.equal(torch.cat(per_sample), torch.stack(rows)[:, 0])  # the first slice's rank counts
    assert lrs == [0.75, 0.5], lrs


def _cp_collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accelerate's nd_parallel recipe: labels shifted over the whole sequence, global positions."""
    ids = torch.stack(rows)
    shift = torch.full_like(ids, -100)
    shift[:, :-1] = ids[:, 1:]
    labels = ids.clone()
    return {"input_ids": ids, "labels": labels, "shift_labels": shift,
            "position_ids": torch.arange(ids.shape[1]).expand_as(ids).clone()}


def _cp_rows() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randint(0, 64, (SEQ,), generator=g) for _ in range(8)]


def _cp_train(plugin: str, comm: str, accumulation: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """ParallelismConfig(cp_size=2): both ranks read each batch, split it inside
    maybe_context_parallel and attend round the ring; the loss is each rank's token sum over
    the global count (x cp, as gradients average over the cp group), so it equals one process."""
    from surge import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin, ParallelismConfig
    from surge.utils import TorchContextParallelConfig

    kwargs: dict = {"fsdp_plugin": FullyShardedDataParallelPlugin()} if plugin == "fsdp" else {}
    if plugin == "zero3":
        kwargs = {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=3, gradient_clipping=0.0)}
    pc = ParallelismConfig(cp_size=2, cp_handler=TorchContextParallelConfig(cp_comm_strategy=comm))
    acc = Accelerator(parallelism_config=pc, gradient_accumulation_steps=accumulation, **kwargs)
    assert acc.torch_device_mesh.mesh_dim_names == ("cp",) and acc.context_parallel_rank == dist.get_rank()
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = torch.utils.data.DataLoader(_cp_rows(), batch_size=4 // accumulation, collate_fn=_cp_collate)
    model, opt, loader = acc.prepare(model, opt, loader)
    assert len(loader) == 2 * accumulation  # the cp group reads every batch
    norms = []
    for batch in loader:
        total = (batch["shift_labels"] != -100).sum()  # micro-batches count equally; backward divides by accumulation
        buffers = [batch["input_ids"], batch["shift_labels"], batch["position_ids"]]
        with acc.accumulate(model), acc.maybe_context_parallel(buffers=buffers, buffer_seq_dims=[1, 1, 1]):
            assert batch["input_ids"].shape[1] == SEQ // 2
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            loss = F.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten(), reduction="sum")
            acc.backward(loss * 2 / total)
            if acc.sync_gradients:
                norms.append(float(acc.clip_grad_norm_(model.parameters(), 0.5)))
            opt.step()
            opt.zero_grad()
        assert batch["input_ids"].shape[1] == SEQ  # restored at exit
    state = acc.get_state_dict(model)
    return norms, {n: t.detach() for n, t in state.items()}


def _cp_reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    model = _llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rows, norms = _cp_rows(), []
    for step in range(2):
        full = _cp_collate(rows[4 * step:4 * step + 4])
        logits = model(input_ids=full["input_ids"]).logits
        F.cross_entropy(logits.flatten(0, 1), full["shift_labels"].flatten()).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)))
        opt.step()
        opt.zero_grad()
    return norms, {n: p.detach() for n, p in model.state_dict().items()}


def check_accelerator_cp_ddp_fsdp_accumulation() -> None:
    """cp_size=2 under DDP (allgather ring), FSDP2 sharded over cp (alltoall ring) and
    DeepSpeed ZeRO-3, and with accumulation 2: the weights and clipped norms of one process."""
    ref_norms, ref = _cp_reference()
    for plugin, comm, accumulation in (("ddp", "allgather", 1), ("fsdp", "alltoall", 1), ("ddp", "alltoall", 2),
                                       ("zero3", "allgather", 1)):
        norms, got = _cp_train(plugin, comm, accumulation)
        what = f"{plugin} {comm} accumulation {accumulation}"
        if dist.get_rank() == 0:
            for name, value in ref.items():
                torch.testing.assert_close(got[name], value, **TOL, msg=lambda m, n=name, w=what: f"{w} {n}: {m}")
        assert max(abs(a - b) for a, b in zip(norms, ref_norms, strict=True)) < 1e-5, (what, norms, ref_norms)


def check_cp_model_loss_is_accelerates() -> None:
    """Accelerate's recipe (model(**batch).loss with shift_labels, attention_mask dropped by
    the prepared model): each rank's loss is the mean over the tokens it holds (head-tail
    load balancing: rank r keeps quarters r and 3 - r), and the gradient their average."""
    from surge import Accelerator, ParallelismConfig
    from surge.advice import SurgeAdvice, forget_given

    acc = Accelerator(parallelism_config=ParallelismConfig(cp_size=2))
    forget_given()
    model = acc.prepare(_llama())
    rank, quarter = dist.get_rank(), SEQ // 4
    batch = _cp_collate(_cp_rows()[:2])
    batch["shift_labels"][0, 4:7] = -100  # the ranks count different numbers of targets
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    ref = _llama()
    logits = ref(input_ids=batch["input_ids"]).logits
    per_token = F.cross_entropy(logits.transpose(1, 2), batch["shift_labels"], reduction="none")
    counted = (batch["shift_labels"] != -100).float()
    means = []
    for r in range(2):
        keep = torch.cat([torch.arange(r * quarter, (r + 1) * quarter),
                          torch.arange((3 - r) * quarter, (4 - r) * quarter)])
        means.append((per_token[:, keep] * counted[:, keep]).sum() / counted[:, keep].sum())
    (sum(means) / 2).backward()
    buffers = [batch[k] for k in ("input_ids", "labels", "shift_labels", "position_ids", "attention_mask")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SurgeAdvice)  # the recipe draws no advice
        with acc.maybe_context_parallel(buffers=buffers, buffer_seq_dims=[1] * 5):
            loss = model(**batch).loss
            acc.backward(loss)
            inside = acc.gather_for_metrics(loss.detach().reshape(1))  # each cp rank holds its own part
    torch.testing.assert_close(loss.detach(), means[rank].detach(), **TOL)
    torch.testing.assert_close(inside, torch.stack(means).detach(), **TOL)
    assert acc.gather_for_metrics(loss.detach().reshape(1)).shape == (1,)  # outside: the cp group's one copy
    named = dict(ref.named_parameters())
    for name, p in acc.unwrap_model(model).named_parameters():
        torch.testing.assert_close(p.grad, named[name].grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def check_cp_refusals_and_advice() -> None:
    """A length that does not split, no buffers, a sliding-window model; a call without
    position_ids inside the region is advised (once)."""
    from transformers import MistralConfig, MistralForCausalLM

    from surge import Accelerator, ParallelismConfig
    from surge.advice import SurgeAdvice, forget_given

    acc = Accelerator(parallelism_config=ParallelismConfig(cp_size=2))
    forget_given()
    model = acc.prepare(_llama())
    odd = torch.zeros(2, 15, dtype=torch.long)
    with pytest.raises(ValueError, match=r"sequence length 15 does not split over cp_size=2; pad .* multiple of 4"), \
            acc.maybe_context_parallel(buffers=[odd], buffer_seq_dims=[1]):
        pass
    with pytest.raises(ValueError, match=r"needs the tensors to split"), acc.maybe_context_parallel():
        pass
    ids = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(RuntimeError, match="cannot be nested"), \
            acc.maybe_context_parallel(buffers=[ids], buffer_seq_dims=[1]), \
            acc.maybe_context_parallel(buffers=[ids.clone()], buffer_seq_dims=[1]):
        pass
    mistral = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, sliding_window=8))
    with pytest.raises(ValueError, match=r"cannot express attention layers of type \['sliding_attention'\]"):
        acc.prepare(mistral)
    ids = _cp_collate(_cp_rows()[:2])["input_ids"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with acc.maybe_context_parallel(buffers=[ids], buffer_seq_dims=[1]):
            model(input_ids=ids)
    advice = [w for w in caught if issubclass(w.category, SurgeAdvice)]
    if dist.get_rank() == 0:  # the main process speaks for all, at the user's line
        assert len(advice) == 1 and "without position_ids" in str(advice[0].message), advice
        assert advice[0].filename == __file__, advice[0].filename
    else:
        assert not advice, advice
    with warnings.catch_warnings():
        warnings.simplefilter("error", SurgeAdvice)
        model(input_ids=ids)  # outside the region: whole sequences, nothing to say


CHECKS = [
    check_accelerator_cp_ddp_fsdp_accumulation,
    check_cp_model_loss_is_accelerates,
    check_cp_refusals_and_advice,
    check_metrics_and_schedule_under_sp,
    check_accelerator_sp_ddp_and_fsdp,
    check_accelerator_sp_accumulation_weights_tokens,
    check_attention_bshd,
    check_attention_bhsd,
    check_llama_loss_and_grads,
    check_llama_sgd_steps,
    check_llama_subgroup_with_right_padding_mask,
    check_llama_heads_not_divisible,
]

test_ulysses = distributed_test(CHECKS, world_size=2)
