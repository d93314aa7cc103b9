"""Per-step cost of transformers' Trainer on surge (surge.integrations.transformers) vs
transformers' own Trainer on HF Accelerate, one CPU process, a tiny Llama.

The model is tiny so the Trainer's and the Accelerator's own work per step (accumulation
bookkeeping, clipping, the optimizer and scheduler wrappers, logging checks) is not hidden
by compute. A callback times each optimizer step (``on_step_begin`` to ``on_step_end``);
the first steps are dropped as warm-up and the median of the rest is each run's figure.

Whole Trainer runs cannot be interleaved step by step, so the two run alternately, in
rotating order, for several rounds; the ratio reported is the median of the per-round
ratios (this machine's speed drifts between runs, see RESULTS.md).

    python benchmarks/trainer_step.py [--rounds 7] [--steps 120] [--accumulation 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

WARMUP = 10


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.start = 0.0
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def run(lib: str, steps: int, accumulation: int, output_dir: str) -> float:
    """One training run; the median seconds per optimizer step after warm-up."""
    if lib == "surge":
        from surge.integrations.transformers import Trainer, TrainingArguments
    else:
        Trainer, TrainingArguments = transformers.Trainer, transformers.TrainingArguments
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=4,
                             gradient_accumulation_steps=accumulation, max_steps=steps, logging_steps=10,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                             disable_tqdm=True)
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(steps * 4 * accumulation), callbacks=[timer])
    trainer.train()
    return statistics.median(timer.times[WARMUP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--accumulation", type=int, default=2)
    a = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    libs = ["accelerate", "surge"]
    figures: dict[str, list[float]] = {lib: [] for lib in libs}
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = libs if r % 2 == 0 else libs[::-1]
            this = {lib: run(lib, a.steps, a.accumulation, os.path.join(tmp, lib)) for lib in order}
            for lib in libs:
                figures[lib].append(this[lib])
            ratios.append(this["surge"] / this["accelerate"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {a.rounds} rounds x {a.steps} optimizer steps "
          f"({a.accumulation} micro-batches of 4 x 16 tokens each), first {WARMUP} dropped")
    print("| Trainer | median per optimizer step (ms) | vs transformers' Trainer on Accelerate "
          "(median of per-round ratios) |")
    print("| --- | --- | --- |")
    print(f"| transformers' Trainer on HF Accelerate | {1e3 * statistics.median(figures['accelerate']):.2f} | 1.000x |")
    print(f"| surge's Trainer (surge.integrations.transformers) | {1e3 * statistics.median(figures['surge']):.2f} | "
          f"{statistics.median(ratios):.3f}x |")
    print("per-round ratios: " + ", ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    main()
