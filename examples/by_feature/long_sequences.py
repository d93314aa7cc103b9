"""Long sequences: Ulysses sequence parallelism (and tensor parallelism) from launch flags.

Each process of a sequence-parallel group holds a slice of every sequence; attention
trades the slice for a share of the heads (all-to-all) and back. The script does not
change with the layout: the launcher's sizes reach the Accelerator.

    surge launch --num_processes 2 --parallelism_config_sp_size 2 examples/by_feature/long_sequences.py
    surge launch --num_processes 4 --parallelism_config_sp_size 2 --parallelism_config_tp_size 2 \\
        examples/by_feature/long_sequences.py
    python examples/by_feature/long_sequences.py          # one process: the same losses

A tiny transformers Llama learns a repeating pattern; the loss each step is the mean over
every token of the batch, whatever the layout (so the runs print the same numbers).
"""

import argparse

import torch
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
    group = accelerator.torch_device_mesh["sp"].get_group() if sp > 1 else None
    losses = []
    for batch in loader:
        if sp > 1:  # this process's slice of each sequence, labels already shifted
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            loss = sequence_parallel_loss(logits, batch["shift_labels"], group)
        else:
            loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    tp = pc.tp_size if pc is not None else 1
    shown = " ".join(f"{v:.5f}" for v in losses)
    accelerator.print(f"sp_size {sp}, tp_size {tp}, {accelerator.num_processes} processes, sequences of {length} "
                      f"({length // sp} per process): {len(losses)} steps, loss {shown}")


if __name__ == "__main__":
    main()
