"""Two gloo processes: Ulysses sequence parallelism equals one process on the full sequence.

One spawn runs every check (see surge.testing.harness). Each rank computes the single-process
reference itself, on the full inputs, so no tensor has to be gathered for the comparison.
"""

from __future__ import annotations

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


CHECKS = [
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
