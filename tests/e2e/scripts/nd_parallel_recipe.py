"""Accelerate's N-D parallel training recipe (its examples/torch_native_parallelism), written
against surge with only the import changed: a ParallelismConfig from the command line, an
FSDP2 plugin when dp_shard or cp is on, the model's own loss inside
``maybe_context_parallel`` with input_ids / shift_labels / labels / position_ids as buffers,
and the loss averaged over the ``dp_cp`` mesh group for reporting.

    surge launch --config_file cp.yaml tests/e2e/scripts/nd_parallel_recipe.py   # sizes from the config
    surge launch --num_processes 2 tests/e2e/scripts/nd_parallel_recipe.py --cp-size 2
    python tests/e2e/scripts/nd_parallel_recipe.py     # one process: the same losses

Every position has a target (sequences of length+1 cut into inputs and shifted labels), so
each cp rank counts the same tokens and the per-rank means average to the global mean.
Prints ``LOSSES v1 v2 ...`` on the main process.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from surge import Accelerator  # was: from accelerate import Accelerator
from surge.parallelism_config import ParallelismConfig  # was: from accelerate.parallelism_config import ...
from surge.utils import FullyShardedDataParallelPlugin, set_seed  # was: from accelerate.utils import ...


def rows(count: int, length: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (length + 1,), generator=g) for _ in range(count)]


def collate(batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    tokens = torch.stack(batch)
    ids = tokens[:, :-1].contiguous()
    shift = tokens[:, 1:].contiguous()
    return {"input_ids": ids, "labels": ids.clone(), "shift_labels": shift}


def step(model, batch, optimizer, accelerator: Accelerator) -> torch.Tensor:
    batch["position_ids"] = torch.arange(0, batch["input_ids"].size(1)).unsqueeze(0).expand_as(batch["input_ids"])
    batch["position_ids"] = batch["position_ids"].clone()
    buffers = [batch["input_ids"], batch["shift_labels"], batch["labels"], batch["position_ids"]]
    with accelerator.maybe_context_parallel(buffers=buffers, buffer_seq_dims=[1, 1, 1, 1],
                                            no_restore_buffers=set(buffers)):
        group = (accelerator.torch_device_mesh["dp_cp"].get_group()
                 if accelerator.parallelism_config is not None and accelerator.parallelism_config.dp_cp_dim_names
                 else None)
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if dist.is_initialized():
            dist.all_reduce(loss, op=dist.ReduceOp.AVG, group=group)
    return loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dp-shard-size", type=int, default=None)
    parser.add_argument("--cp-size", type=int, default=None)
    parser.add_argument("--tp-size", type=int, default=None)
    args = parser.parse_args()
    set_seed(42)
    # Sizes not given are the launcher's (PARALLELISM_CONFIG_*_SIZE), as Accelerate's nd_parallel_trainer.py relies on.
    pc = ParallelismConfig(dp_shard_size=args.dp_shard_size, cp_size=args.cp_size, tp_size=args.tp_size)
    plugin = None
    if pc.dp_shard_enabled or pc.cp_enabled:
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
                                                state_dict_type="SHARDED_STATE_DICT")
    accelerator = Accelerator(parallelism_config=pc, fsdp_plugin=plugin)
    accelerator.print(f"cp_size {pc.cp_size}")
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(rows(16, 32), batch_size=4, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = [step(model, batch, optimizer, accelerator).item() for batch in loader]
    accelerator.print("LOSSES " + " ".join(f"{v:.6f}" for v in losses))
    accelerator.end_training()


if __name__ == "__main__":
    main()
