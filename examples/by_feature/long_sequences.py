"""Long sequences: Ulysses sequence parallelism, ring-attention context parallelism (and
tensor parallelism) from launch flags.

Each process of a sequence-parallel group holds a slice of every sequence; attention
trades the slice for a share of the heads (all-to-all) and back. Under context
parallelism each process keeps its part of the queries while keys and values go round the
ring (torch's ring attention, inside ``accelerator.maybe_context_parallel``). The script
does not change with the layout: the launcher's sizes reach the Accelerator.

    surge launch --num_processes 2 --parallelism_config_sp_size 2 examples/by_feature/long_sequences.py
    surge launch --num_processes 2 --parallelism_config_cp_size 2 examples/by_feature/long_sequences.py
    surge launch --num_processes 4 --parallelism_config_sp_size 2 --parallelism_config_tp_size 2 \\
        examples/by_feature/long_sequences.py
    python examples/by_feature/long_sequences.py          # one process: the same losses

A tiny transformers Llama learns a repeating pattern; the loss each step is the mean over
every token of the batch, whatever the layout (so the runs print the same numbers).
"""

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from surge import Accelerator
from surge.parallel import sequence_parallel_loss
from surge.utils import set_seed


def sequences(count: int, length: int, vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    period = torch.randint(2, 9, (count,), generator=g)
    starts = torch.randint(0, vocab, (count,), generator=g)
    return [(starts[i] + torch.arange(length) % period[i]) % vocab for i in range(count)]


def collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    ids = torch.stack(rows)
    return {"input_ids": ids, "labels": ids.clone()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a few steps of a tiny model")
    p.add_argument("--seq_len", type=int, default=None)
    a = p.parse_args()
    set_seed(0)
    accelerator = Accelerator()
    length = a.seq_len or (64 if a.smoke else 1024)
    config = LlamaConfig(vocab_size=64, hidden_size=32 if a.smoke else 256, intermediate_size=64 if a.smoke else 512,
                         num_hidden_layers=2 if a.smoke else 4, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=length, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(sequences(128 if a.smoke else 512, length, 64), batch_size=8, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    pc = accelerator.parallelism_config
    sp = pc.sp_size if pc is not None else 1
    cp = pc.cp_size if pc is not None else 1
    group = accelerator.torch_device_mesh["sp"].get_group() if sp > 1 else None
    losses = []
    for batch in loader:
        if sp > 1:  # this process's slice of each sequence, labels already shifted
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            loss = sequence_parallel_loss(logits, batch["shift_labels"], group)
            accelerator.backward(loss)
        elif cp > 1:  # ring attention: each process holds a quarter of the front and of the back of every sequence
            loss = context_parallel_step(accelerator, model, batch["input_ids"], cp)
        else:
            loss = model(**batch).loss
            accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    tp = pc.tp_size if pc is not None else 1
    shown = " ".join(f"{v:.5f}" for v in losses)
    accelerator.print(f"sp_size {sp}, cp_size {cp}, tp_size {tp}, {accelerator.num_processes} processes, sequences "
                      f"of {length} ({length // (sp * cp)} per process): {len(losses)} steps, loss {shown}")


def context_parallel_step(accelerator: Accelerator, model: torch.nn.Module, ids: torch.Tensor, cp: int) -> torch.Tensor:
    """One backward under context parallelism; returns the mean over every token of the batch.

    Labels are shifted over the whole sequence and positions numbered globally *before*
    ``maybe_context_parallel`` splits them with the inputs. Each process's loss is its token
    sum over the batch's count, times cp (gradients average over the cp ranks), so the
    training is one process's; ``model(**batch).loss`` with ``shift_labels`` (Accelerate's
    recipe) would average per-process means instead.
    """
    shift = torch.full_like(ids, -100)
    shift[:, :-1] = ids[:, 1:]
    positions = torch.arange(ids.shape[1], device=ids.device).repeat(ids.shape[0], 1)
    count = (shift != -100).sum()
    buffers = [ids, shift, positions]
    with accelerator.maybe_context_parallel(buffers=buffers, buffer_seq_dims=[1, 1, 1],
                                            no_restore_buffers=set(buffers)):
        logits = model(input_ids=ids, position_ids=positions).logits
        token_sum = F.cross_entropy(logits.flatten(0, 1), shift.flatten(), reduction="sum")
        accelerator.backward(token_sum * cp / count)
    token_sum = token_sum.detach()
    dist.all_reduce(token_sum, group=accelerator.torch_device_mesh["cp"].get_group())
    return token_sum / count


if __name__ == "__main__":
    main()
