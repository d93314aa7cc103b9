"""Accelerate's nd_parallel_trainer.py pattern with surge's Trainer: a bare ParallelismConfig()
(the launch's sizes, from PARALLELISM_CONFIG_*_SIZE), the model split by transformers itself
when tp is on (from_pretrained(tp_plan="auto")), then Trainer(args=TrainingArguments(
parallelism_config=pc)). Prints ``LOSSES ...`` on the main process.

    python tests/e2e/scripts/tp_trainer_recipe.py MODEL_DIR OUT_DIR             # one process
    surge launch --num_processes 2 --parallelism_config_tp_size 2 tests/e2e/scripts/tp_trainer_recipe.py MODEL_DIR OUT
"""

from __future__ import annotations

import os
import sys

from transformers import AutoModelForCausalLM

from surge.integrations.transformers import Trainer, TrainingArguments  # was: from transformers import ...
from surge.utils import ParallelismConfig  # was: from accelerate.utils import ParallelismConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_compare import Tokens


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    pc = ParallelismConfig()
    kwargs = {"tp_plan": "auto"} if pc.tp_enabled else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_cache=False, **kwargs)
    split = type(model.model.layers[0].self_attn.q_proj.weight).__name__
    args = TrainingArguments(output_dir=out, parallelism_config=pc, max_steps=3, per_device_train_batch_size=4,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", learning_rate=1e-3,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens())
    trainer.train()
    if trainer.accelerator.is_main_process:
        print(f"tp_size {pc.tp_size}, weights {split}")
        print("LOSSES " + " ".join(f"{h['loss']:.6f}" for h in trainer.state.log_history if "loss" in h))


if __name__ == "__main__":
    main()
