"""transformers' Trainer on surge: a tiny Llama trained with DeepSpeed-style ZeRO or FSDP
settings, no DeepSpeed installed. The only change from a transformers script is the import.

    python examples/trainer.py --smoke                         # one process
    surge launch --num_processes 2 examples/trainer.py --smoke --zero 3 --offload
    surge launch --num_processes 2 examples/trainer.py --smoke --fsdp
    torchrun --nproc_per_node 2 examples/trainer.py --smoke --zero 2

--zero N passes a DeepSpeed config dict (with the "auto" values Trainer fills) as
TrainingArguments(deepspeed=...); --fsdp passes fsdp="full_shard auto_wrap". The model
is saved with save_model and loaded back with from_pretrained. See docs/trainer.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from surge.integrations.transformers import Trainer, TrainingArguments


class Sequences(torch.utils.data.Dataset):
    """Token sequences that follow a simple rule (each token is the previous one plus 1, mod
    the vocabulary), so the loss falls quickly."""

    def __init__(self, n: int, length: int = 32, vocab: int = 64) -> None:
        starts = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(0))
        self.x = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def deepspeed_config(stage: int, offload: bool) -> dict:
    zero: dict = {"stage": stage}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                  "weight_decay": "auto"}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                          "warmup_num_steps": "auto", "total_num_steps": "auto"}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds on CPU")
    parser.add_argument("--zero", type=int, choices=[0, 1, 2, 3], default=None, help="a DeepSpeed config at this stage")
    parser.add_argument("--offload", action="store_true", help="with --zero: offload to the CPU")
    parser.add_argument("--fsdp", action="store_true", help='fsdp="full_shard auto_wrap"')
    parser.add_argument("--output_dir", default=os.path.join(tempfile.gettempdir(), "surge-trainer-example"),
                        help="shared by the processes (default: %(default)s)")
    parser.add_argument("--max_steps", type=int, default=None)
    a = parser.parse_args()
    if a.zero is not None and a.fsdp:
        parser.error("--zero and --fsdp: choose one")

    torch.manual_seed(0)
    hidden, layers = (32, 2) if a.smoke else (256, 4)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64))
    sharding: dict = {}
    if a.zero is not None:
        sharding["deepspeed"] = deepspeed_config(a.zero, a.offload)
    elif a.fsdp:
        sharding.update(fsdp="full_shard auto_wrap",
                        fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    output_dir = a.output_dir
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        max_steps=a.max_steps or (20 if a.smoke else 300), learning_rate=3e-3, warmup_steps=2,
        logging_steps=5, eval_strategy="steps", eval_steps=10, save_strategy="steps", save_steps=10,
        save_total_limit=1, report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), seed=0, **sharding)
    trainer = Trainer(model=model, args=args, train_dataset=Sequences(256), eval_dataset=Sequences(32))
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evaluation = trainer.evaluate()
    final = os.path.join(output_dir, "final")
    trainer.save_model(final)
    if trainer.accelerator.is_main_process:
        reloaded = LlamaForCausalLM.from_pretrained(final)
        print(f"distributed type {trainer.accelerator.distributed_type.value}, "
              f"{trainer.accelerator.num_processes} processes")
        print(f"done: step {result.global_step}, first loss {losses[0]:.3f}, last loss {losses[-1]:.3f}, "
              f"eval loss {evaluation['eval_loss']:.3f}; saved to {final} "
              f"({sum(p.numel() for p in reloaded.parameters())} parameters reloaded)")
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
