"""transformers' Trainer on 2 processes: ``--lib accelerate`` runs transformers' own
Trainer (on HF Accelerate), ``--lib surge`` surge's (surge.integrations.transformers) in
several settings; the main process prints ``RESULT {case: losses, ...}``.

Also imported by tests/unit/test_trainer_integration.py for the tiny model and data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, seed: int = 1) -> None:
        self.x = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def accuracy(prediction) -> dict:
    """Next-token accuracy over every evaluated sample (counts it, so padding would show)."""
    logits, labels = prediction.predictions, prediction.label_ids
    hits = (logits[:, :-1].argmax(-1) == labels[:, 1:]).mean()
    return {"accuracy": float(hits), "samples": int(labels.shape[0])}


def train(lib: str, output_dir: str, max_steps: int = 4, resume: str | None = None, model=None, eval_dataset=None,
          compute_metrics=None, **kwargs):
    """Train the tiny Llama; returns (per-step losses, the trainer)."""
    if lib == "surge":
        from surge.integrations.transformers import Trainer, TrainingArguments
    else:
        Trainer, TrainingArguments = transformers.Trainer, transformers.TrainingArguments
    settings = {"output_dir": output_dir, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                "max_steps": max_steps, "logging_steps": 1, "learning_rate": 1e-3, "report_to": [],
                "save_strategy": "no", "use_cpu": True, "seed": 0, "disable_tqdm": True,
                "max_grad_norm": 0.3}  # below the gradient norms (~0.55): clipping acts at every step
    settings.update(kwargs)
    trainer = Trainer(model=tiny_llama() if model is None else model, args=TrainingArguments(**settings),
                      train_dataset=Tokens(), eval_dataset=eval_dataset, compute_metrics=compute_metrics)
    trainer.train(resume_from_checkpoint=resume)
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], trainer


DS_ADAMW = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}


def zero(stage: int, offload: bool = False) -> dict:
    section: dict = {"stage": stage}
    if offload:
        section["offload_optimizer"] = {"device": "cpu"}
        if stage == 3:
            section["offload_param"] = {"device": "cpu"}
    return {"zero_optimization": section, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "train_batch_size": "auto", "gradient_clipping": "auto",
            "optimizer": DS_ADAMW}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lib", choices=["surge", "accelerate"], required=True)
    parser.add_argument("--ddp_only", action="store_true", help="only the DDP case (the torchrun check)")
    options = parser.parse_args()
    lib = options.lib
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:  # one per process: every process writes only what it is asked
        shared = os.path.join(os.environ.get("TMPDIR", tempfile.gettempdir()),
                              f"trainer-compare-{os.environ.get('MASTER_PORT', '0')}")
        out["ddp"], trainer = train(lib, os.path.join(tmp, "ddp"), eval_dataset=Tokens(10, seed=3),
                                    compute_metrics=accuracy)
        out["ddp_eval"] = trainer.evaluate()  # 10 samples in batches of 8 on 2 processes: gather_for_metrics trims
        if lib == "surge" and not options.ddp_only:
            out["fsdp"], _ = train(lib, os.path.join(tmp, "fsdp"), fsdp="full_shard auto_wrap",
                                   fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "version": 2})
            _, trainer = train(lib, os.path.join(tmp, "z3eval"), deepspeed=zero(3), eval_dataset=Tokens(10, seed=3),
                               compute_metrics=accuracy)
            out["zero3_eval"] = trainer.evaluate()
            out["zero2"], _ = train(lib, os.path.join(tmp, "z2"), deepspeed=zero(2))
            losses, trainer = train(lib, os.path.join(shared, "z3"), deepspeed=zero(3, offload=True),
                                    save_strategy="steps", save_steps=2)
            out["zero3_offload"] = losses
            weight = trainer.model.model.layers[0].self_attn.q_proj.weight
            out["zero3_sharded"] = [str(trainer.accelerator.distributed_type.value), type(weight).__name__,
                                    type(trainer.optimizer.optimizer).__name__]
            trainer.save_model(os.path.join(shared, "z3", "final"))
            full = trainer.accelerator.get_state_dict(trainer.model)
            if trainer.accelerator.is_main_process:
                loaded = LlamaForCausalLM.from_pretrained(os.path.join(shared, "z3", "final")).state_dict()
                out["zero3_saved_equal"] = sorted(loaded) == sorted(full) and all(
                    torch.equal(loaded[k], full[k]) for k in full)
            out["zero3_resumed"], _ = train(lib, os.path.join(shared, "z3"), deepspeed=zero(3, offload=True),
                                            resume=os.path.join(shared, "z3", "checkpoint-2"))
            for name, stage, offload in (("zero1", 1, False), ("zero2_offload", 2, True)):
                # surge's own optimizers for these: ZeRO-1's ShardedOptimizer, optimizer offload's masters
                out[name], _ = train(lib, os.path.join(shared, name), deepspeed=zero(stage, offload),
                                     save_strategy="steps", save_steps=2)
                out[name + "_resumed"], _ = train(lib, os.path.join(shared, name), deepspeed=zero(stage, offload),
                                                  resume=os.path.join(shared, name, "checkpoint-2"))
            # load_best_model_at_end under ZeRO-3: the best (here: highest-loss) checkpoint-2 comes back
            _, trainer = train(lib, os.path.join(shared, "best"), deepspeed=zero(3), max_steps=6, eval_steps=2,
                               eval_strategy="steps", save_strategy="steps", save_steps=2, save_total_limit=1,
                               load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True,
                               eval_dataset=Tokens(8, seed=3))
            trainer.evaluate()
            out["best"] = [os.path.basename(str(trainer.state.best_model_checkpoint)),
                           [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]]
            # Context parallelism from Accelerate's ParallelismConfig: both processes read each batch and
            # split its sequences (the Trainer drives maybe_context_parallel); 4 rows per micro-batch, as
            # DDP's 2 processes x 2 rows.
            from accelerate import ParallelismConfig

            out["cp"], trainer = train(lib, os.path.join(tmp, "cp"), parallelism_config=ParallelismConfig(cp_size=2),
                                       eval_dataset=Tokens(16, seed=3), per_device_eval_batch_size=4)
            out["cp_eval"] = trainer.evaluate()  # inside maybe_context_parallel: each rank's part counts
            out["ddp_2_rows"], trainer = train(lib, os.path.join(tmp, "ddp2"), per_device_train_batch_size=2,
                                               eval_dataset=Tokens(16, seed=3), per_device_eval_batch_size=2)
            out["ddp_2_rows_eval"] = trainer.evaluate()
            losses, _ = train(lib, os.path.join(shared, "ddp"), save_strategy="steps", save_steps=2)
            out["ddp_saved"] = losses
            out["ddp_resumed"], _ = train(lib, os.path.join(shared, "ddp"),
                                          resume=os.path.join(shared, "ddp", "checkpoint-2"))
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(shared, ignore_errors=True)
            print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
