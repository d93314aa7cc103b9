"""Ulysses sequence parallelism (DeepSpeed's Ulysses / ALST) on torch.distributed's all-to-all.

Each rank of a sequence-parallel (sp) group holds a contiguous shard of every sequence
(``seq / sp`` tokens). Everything outside attention is per-token, so it runs on the shard
as is. Attention needs the whole sequence: an all-to-all turns q, k and v from
``[batch, seq/sp, heads, head_dim]`` into ``[batch, seq, heads/sp, head_dim]`` (each rank
now sees every token for a subset of the heads), the ordinary attention runs, and a
second all-to-all turns its output back into sequence shards. The communication per
layer is 4 all-to-alls of the activations (q, k, v, out), each ``1/sp`` of them crossing
to each peer; memory for activations falls by ``sp``.

What this module offers (standalone; ``ParallelismConfig(sp_size=N)`` wires it into the
Accelerator: see [Note: sequence parallelism in the Accelerator] in parallel/wiring.py):

* :class:`UlyssesAttention`: wraps any local attention function.
* :func:`apply_ulysses`: makes a transformers Llama-family model attend under Ulysses.
* :func:`shard_sequence`: splits a batch along the sequence, shifting labels first and
  building the global ``position_ids``.
* :func:`sequence_parallel_loss`: the mean token loss over the whole sequence.

[Note: sequence-parallel gradients]: every rank holds the full model and backpropagates
only its own shard's tokens; the all-to-alls carry the cotangents back to the ranks whose
tokens produced q, k and v. :func:`sequence_parallel_loss` returns the global token mean
whose gradient is ``sp`` times this rank's share (its token-loss sum over the global token
count), so the full gradient is the MEAN of the ranks' gradients over the sp group: what
DDP or FSDP over ``dp x sp`` processes computes (the mean over dp of each group's full
gradient), and what Accelerate's ALST recipe gives (an autograd all-gather of per-shard
losses sums ``sp`` equal cotangents). Standalone, average gradients over the group
(``dist.all_reduce(p.grad, group=sp_group); p.grad /= sp``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

ProcessGroup = dist.ProcessGroup

#: The name under which :func:`apply_ulysses` registers its attention in transformers.
ULYSSES_ATTENTION = "surge_ulysses"

Layout = Literal["bshd", "bhsd"]
_LAYOUTS = ("bshd", "bhsd")

# The attribute apply_ulysses sets on each attention module: its sp process group.
_GROUP_ATTR = "_surge_ulysses_group"


def _group_size(group: ProcessGroup | None) -> int:
    return int(dist.get_world_size(group))


def _group_rank(group: ProcessGroup | None) -> int:
    return int(dist.get_rank(group))


class _AllToAll(torch.autograd.Function):
    """``dist.all_to_all_single`` with equal splits along dim 0; its own adjoint."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, whatever x's strides
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # The transpose of "send chunk j to rank j, receive chunk j from rank j" is itself.
        grad = grad.contiguous()
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def _all_to_all(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    result: torch.Tensor = _AllToAll.apply(x, group)  # type: ignore[no-untyped-call]
    return result


def check_heads(heads: int, sp: int, what: str = "attention heads") -> None:
    """Raise ValueError unless ``heads`` splits evenly over ``sp`` ranks."""
    if heads % sp != 0:
        raise ValueError(
            f"Ulysses sequence parallelism splits the {what} over the sp group: {heads} {what} "
            f"are not divisible by sp size {sp}; choose an sp size that divides {heads}"
        )


def seq_to_heads(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """``[b, s/sp, h, d]`` (a sequence shard, all heads) -> ``[b, s, h/sp, d]`` (all tokens, a head shard)."""
    sp = _group_size(group)
    b, s_local, h, d = x.shape
    check_heads(h, sp)
    if sp == 1:
        return x
    # [sp(head chunk), s_local, b, h/sp, d]: chunk j of the heads goes to rank j.
    send = x.reshape(b, s_local, sp, h // sp, d).permute(2, 1, 0, 3, 4)
    recv = _all_to_all(send, group)  # [sp(sequence shard of the sender), s_local, b, h/sp, d]
    return recv.reshape(sp * s_local, b, h // sp, d).transpose(0, 1)


def heads_to_seq(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """``[b, s, h/sp, d]`` (all tokens, a head shard) -> ``[b, s/sp, h, d]`` (a sequence shard, all heads)."""
    sp = _group_size(group)
    if sp == 1:
        return x
    b, s, h_local, d = x.shape
    if s % sp != 0:
        raise ValueError(f"sequence length {s} is not divisible by sp size {sp}")
    # [sp(sequence chunk), b, s/sp, h/sp, d]: sequence chunk j goes back to rank j.
    send = x.reshape(b, sp, s // sp, h_local, d).transpose(0, 1)
    recv = _all_to_all(send, group)  # [sp(head shard of the sender), b, s/sp, h/sp, d]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, s // sp, sp * h_local, d)


class UlyssesAttention(torch.nn.Module):
    """Run a local attention on full sequences for ``heads / sp`` heads per rank.

    Inputs are sequence shards (each rank holds a contiguous ``seq / sp`` slice of the
    same sequences, rank order = sequence order); the output is this rank's shard of the
    full-sequence attention output, in the input layout. What DeepSpeed calls
    ``DistributedAttention(local_attention, sequence_process_group)``.

    Args:
        attention_fn: ``attention_fn(q, k, v, *args, **kwargs)`` on full sequences, taking and
            returning tensors in ``layout`` (e.g. ``F.scaled_dot_product_attention`` for "bhsd").
            Extra arguments pass through unchanged: a mask must describe the FULL sequence.
        group: The sp process group (None: the default group).
        layout: "bshd" for ``[batch, seq, heads, head_dim]`` (DeepSpeed's default) or
            "bhsd" for ``[batch, heads, seq, head_dim]`` (torch SDPA's and transformers').

    Query heads and key/value heads (GQA) must each be divisible by the sp size; a
    contiguous split keeps every query head with its key/value head.

    Example:
        >>> attn = UlyssesAttention(F.scaled_dot_product_attention, sp_group, layout="bhsd")
        >>> out = attn(q, k, v, is_causal=True)  # q, k, v: [b, h, s/sp, d]
    """

    def __init__(
        self,
        attention_fn: Callable[..., torch.Tensor],
        group: ProcessGroup | None = None,
        layout: Layout = "bshd",
    ) -> None:
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"layout={layout!r} is not one of {_LAYOUTS}")
        self.attention_fn = attention_fn
        self.group = group
        self.layout: Layout = layout

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        sp = _group_size(self.group)
        head_dim = 2 if self.layout == "bshd" else 1
        check_heads(query.shape[head_dim], sp, "query heads")
        check_heads(key.shape[head_dim], sp, "key/value heads")
        q, k, v = (self._to_heads(t) for t in (query, key, value))
        out = self.attention_fn(q, k, v, *args, **kwargs)
        if self.layout == "bhsd":
            return heads_to_seq(out.transpose(1, 2), self.group).transpose(1, 2)
        return heads_to_seq(out, self.group)

    def _to_heads(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout == "bhsd":
            return seq_to_heads(t.transpose(1, 2), self.group).transpose(1, 2)
        return seq_to_heads(t, self.group)


# --- transformers ------------------------------------------------------------------------------


def _ulysses_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: sdpa on full sequences for this rank's heads.

    Under this name transformers builds no mask (it is not in the mask registry), so the
    attention is causal over the full sequence; padding must be at the end with labels
    -100 (see :func:`shard_sequence`).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not hasattr(module, _GROUP_ATTR):
        raise ValueError(
            f"attention implementation {ULYSSES_ATTENTION!r} runs only on modules prepared by "
            "surge.parallel.apply_ulysses(model, group)"
        )
    group: ProcessGroup | None = getattr(module, _GROUP_ATTR)
    if attention_mask is not None:
        raise ValueError(f"{ULYSSES_ATTENTION!r} attention takes no attention mask (it is causal)")
    sp = _group_size(group)
    check_heads(query.shape[1], sp, "query heads")
    check_heads(key.shape[1], sp, "key/value heads")
    # transformers hands [b, h, s/sp, d]; its sdpa returns [b, s, h, d].
    q, k, v = (seq_to_heads(t.transpose(1, 2), group).transpose(1, 2) for t in (query, key, value))
    kwargs.pop("is_causal", None)
    out, _ = sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)
    return heads_to_seq(out, group), None


def apply_ulysses(model: torch.nn.Module, group: ProcessGroup | None = None) -> torch.nn.Module:
    """Make a transformers Llama-family model's attention run under Ulysses over ``group``.

    Registers the attention implementation ``"surge_ulysses"`` (sdpa on full sequences,
    causal) in transformers' ``AttentionInterface`` and sets ``model.config._attn_implementation``
    to it. Feed the model batches from :func:`shard_sequence` and compute the loss with
    :func:`sequence_parallel_loss`; average gradients over the group (see
    [Note: sequence-parallel gradients]).

    Args:
        model: A transformers causal LM (Llama, Mistral, Qwen2, ...: attention modules with
            ``num_key_value_groups``), the same full copy on every rank of ``group``.
        group: The sp process group (None: the default group).

    Returns:
        The same model, changed in place.

    Example:
        >>> model = apply_ulysses(LlamaForCausalLM(config), sp_group)
        >>> shard = shard_sequence(batch, sp_group)
        >>> logits = model(input_ids=shard["input_ids"], position_ids=shard["position_ids"]).logits
        >>> loss = sequence_parallel_loss(logits, shard["shift_labels"], sp_group)
    """
    from transformers import AttentionInterface

    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"apply_ulysses needs a transformers model with a .config; got {type(model).__name__}")
    sp = _group_size(group)
    heads = getattr(config, "num_attention_heads", None)
    if heads is not None:
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        check_heads(int(heads), sp, "attention heads (num_attention_heads)")
        check_heads(int(kv_heads), sp, "key/value heads (num_key_value_heads)")
    attention_modules = [m for m in model.modules() if hasattr(m, "num_key_value_groups")]
    if not attention_modules:
        raise ValueError(
            f"apply_ulysses found no attention modules (with num_key_value_groups) in {type(model).__name__}; "
            "it supports Llama-family transformers models"
        )
    for m in attention_modules:
        setattr(m, _GROUP_ATTR, group)
    AttentionInterface.register(ULYSSES_ATTENTION, _ulysses_attention_forward)
    config._attn_implementation = ULYSSES_ATTENTION
    return model


# --- batches and loss ----------------------------------------------------------------------------


def shard_sequence_for_rank(
    batch: Mapping[str, torch.Tensor], sp_rank: int, sp_size: int, dim: int = 1
) -> dict[str, torch.Tensor]:
    """The ``sp_rank``-th contiguous sequence shard of ``batch`` (pure: no process group).

    ``labels`` are shifted over the FULL sequence before splitting (the last position gets
    -100) and returned as ``shift_labels`` (``labels`` itself is dropped, so that a model
    called with ``**shard`` does not compute a per-shard loss). ``position_ids`` (given, or
    ``0..seq-1``) are split too, so each shard carries its global positions. Other tensors
    with the sequence at ``dim`` are split; any other value is passed through.

    Raises:
        ValueError: ``sp_rank`` out of range, a sequence length not divisible by
            ``sp_size``, or an ``attention_mask`` with padding before a real token (only
            right padding is possible under causal Ulysses attention).
    """
    if sp_size < 1 or not 0 <= sp_rank < sp_size:
        raise ValueError(f"sp_rank={sp_rank} is not in range for sp_size={sp_size}")
    if "input_ids" in batch:
        ref = batch["input_ids"]
    elif "labels" in batch:
        ref = batch["labels"]
    else:
        raise ValueError(f"shard_sequence needs input_ids or labels in the batch; got keys {sorted(batch)}")
    seq = ref.shape[dim]
    if seq % sp_size != 0:
        raise ValueError(
            f"sequence length {seq} is not divisible by sp size {sp_size}; pad the sequence "
            f"to a multiple of {sp_size} (labels -100 on the padding)"
        )
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 2 and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(
            "attention_mask has padding before real tokens; Ulysses attention is causal without a "
            "mask, so only right padding (with labels -100) is supported"
        )
    full: dict[str, Any] = dict(batch)
    if "labels" in full:
        labels = full.pop("labels")
        pad = torch.full_like(labels.narrow(dim, 0, 1), -100)
        full["shift_labels"] = torch.cat([labels.narrow(dim, 1, seq - 1), pad], dim=dim)
    if "position_ids" not in full:
        positions = torch.arange(seq, device=ref.device)
        full["position_ids"] = positions.unsqueeze(0).expand(ref.shape[0], seq) if ref.dim() >= 2 else positions
    local = seq // sp_size
    out: dict[str, Any] = {}
    for name, value in full.items():
        if isinstance(value, torch.Tensor) and value.dim() > dim and value.shape[dim] == seq:
            out[name] = value.narrow(dim, sp_rank * local, local)
        else:
            out[name] = value
    return out


def shard_sequence(
    batch: Mapping[str, torch.Tensor], group: ProcessGroup | None = None, dim: int = 1
) -> dict[str, torch.Tensor]:
    """This rank's contiguous sequence shard of ``batch`` (the same batch on every rank of ``group``).

    See :func:`shard_sequence_for_rank` for what happens to labels and position ids.

    Example:
        >>> shard = shard_sequence({"input_ids": ids, "labels": ids}, sp_group)
        >>> sorted(shard)
        ['input_ids', 'position_ids', 'shift_labels']
    """
    return shard_sequence_for_rank(batch, _group_rank(group), _group_size(group), dim)


def sequence_parallel_loss(
    logits: torch.Tensor, shift_labels: torch.Tensor, group: ProcessGroup | None = None, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy over every token of the full sequences, from this rank's shard.

    Args:
        logits: ``[batch, seq/sp, vocab]``, this rank's shard.
        shift_labels: ``[batch, seq/sp]``, labels shifted before sharding (:func:`shard_sequence`).
        group: The sp process group.
        ignore_index: Label value that counts as no token.

    Returns:
        The global mean loss (the same value on every rank). Its gradient is ``sp`` times
        this rank's share, so that averaging gradients over the group (as DDP or FSDP over
        the sp ranks does) gives the full gradient ([Note: sequence-parallel gradients]).
        One all-reduce of two scalars.
    """
    token_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        shift_labels.reshape(-1).to(logits.device),
        ignore_index=ignore_index,
        reduction="sum",
    )
    stats = torch.stack([token_sum.detach(), (shift_labels != ignore_index).sum().to(token_sum)])
    dist.all_reduce(stats, group=group)
    total_sum, count = stats[0], stats[1].clamp(min=1)
    scaled = token_sum * _group_size(group)
    # Value: the global mean; gradient: sp * d(local sum) / count.
    return (scaled + (total_sum - scaled.detach())) / count
