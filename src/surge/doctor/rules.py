"""The mistakes ``surge doctor`` knows: one table, read by the checker (the messages), by
``surge doctor --json`` (the ids) and by docs/mistakes.md (generated from it by
``python -m surge.doctor.docs``; a unit test keeps the two equal).

Each rule's id is stable: editors and CI configurations refer to it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One mistake: what it is, how to fix it, and a minimal example of both."""

    id: str
    title: str
    what: str  # one clause: what is wrong (a finding's message, unless the checker names the objects)
    fix: str  # one clause: the fix (every finding of the rule gives it)
    when: str  # exactly what the checker reports (it reports nothing it cannot see in the script)
    mistake: str  # a few lines of a script with the mistake
    fixed: str  # the same lines, fixed
    severity: str = "warning"  # "warning": exit code 1; "info": printed, exit code unchanged


RULES: tuple[Rule, ...] = (
    Rule(
        id="manual-device-placement",
        title="Moving what the accelerator already placed",
        what="the accelerator already puts this model or batch on its device",
        fix="drop the .to(...)/.cuda() call (or pass device_placement=False to the Accelerator and place it "
            "yourself)",
        when=("`.cuda()`, or `.to(<device>)` with a device written in the script (\"cuda\", "
              "`torch.device(...)`, a name bound to one, an index), is called on a model returned by `prepare`, "
              "or on a batch (or part of one) from a DataLoader returned by `prepare` (an argument built by "
              "`DataLoader(...)`, or one the script loops over), and neither the "
              "Accelerator nor that `prepare` call turns device placement off. Moving to the CPU, to a dtype or "
              "to `accelerator.device` is not reported"),
        mistake=("model, optimizer, loader = accelerator.prepare(model, optimizer, loader)\n"
                 "for x, y in loader:\n"
                 "    x, y = x.cuda(), y.cuda()"),
        fixed=("model, optimizer, loader = accelerator.prepare(model, optimizer, loader)\n"
               "for x, y in loader:  # already on accelerator.device\n"
               "    ..."),
    ),
    Rule(
        id="tensor-backward",
        title="loss.backward() instead of accelerator.backward(loss)",
        what="loss.backward() skips the accelerator (loss scaling, accumulation, sharded gradients)",
        fix="call accelerator.backward(loss)",
        when=("`.backward()` is called on a value computed from a prepared model's output (`model(x)`, "
              "`loss_fn(model(x), y)`, `outputs.loss`, ...) where an Accelerator is in reach"),
        mistake=("model, optimizer = accelerator.prepare(model, optimizer)\n"
                 "loss = model(x).sum()\n"
                 "loss.backward()"),
        fixed=("model, optimizer = accelerator.prepare(model, optimizer)\n"
               "loss = model(x).sum()\n"
               "accelerator.backward(loss)"),
    ),
    Rule(
        id="accumulate-missing",
        title="Gradient accumulation without accelerator.accumulate",
        what="gradient accumulation is on but no step runs under `with accelerator.accumulate(model):`, so the "
             "optimizer steps on every micro-batch with a divided loss",
        fix="wrap the forward, backward and optimizer step in `with accelerator.accumulate(model):`",
        when=("an Accelerator that runs `accelerator.backward` gets more than one accumulation step from a "
              "literal argument (`gradient_accumulation_steps=4`, a `GradientAccumulationPlugin(num_steps=4)`) "
              "or, when it sets none, from the `--config` file, and the script never calls `accumulate` or "
              "`no_sync`"),
        mistake=("accelerator = Accelerator(gradient_accumulation_steps=4)\n"
                 "for x, y in loader:\n"
                 "    accelerator.backward(loss_fn(model(x), y))\n"
                 "    optimizer.step()\n"
                 "    optimizer.zero_grad()"),
        fixed=("accelerator = Accelerator(gradient_accumulation_steps=4)\n"
               "for x, y in loader:\n"
               "    with accelerator.accumulate(model):\n"
               "        accelerator.backward(loss_fn(model(x), y))\n"
               "        optimizer.step()\n"
               "        optimizer.zero_grad()"),
    ),
    Rule(
        id="save-wrapped-model",
        title="Saving the wrapped model",
        what="this saves the prepared model, which is wrapped or sharded on several processes: under DDP its keys "
             "get a `module.` prefix and it has no save_pretrained, under ZeRO-3/FSDP each process saves only its "
             "shard",
        fix="save accelerator.unwrap_model(model), or use accelerator.save_model(model, dir) / "
            "accelerator.get_state_dict(model)",
        when=("`torch.save`, `safetensors.torch.save_file` or `accelerator.save` is given a prepared model or "
              "its `state_dict()`, or a prepared model's `save_pretrained` is called"),
        mistake=("model = accelerator.prepare(model)\n"
                 "torch.save(model.state_dict(), \"model.pt\")"),
        fixed=("model = accelerator.prepare(model)\n"
               "accelerator.save_model(model, \"out\")  # or torch.save(accelerator.get_state_dict(model), ...)"),
    ),
    Rule(
        id="not-prepared",
        title="An optimizer or DataLoader left out of prepare()",
        what="this object is used for training but never passed to accelerator.prepare() while the model is",
        fix="pass it to accelerator.prepare() together with the model",
        when=("an optimizer built (with a `torch.optim` class) from the parameters of a model that was later "
              "prepared is stepped but never passed to `prepare`; or a `DataLoader` that was never passed to "
              "`prepare` feeds a loop in which the prepared model is called and `backward` runs"),
        mistake=("optimizer = torch.optim.AdamW(model.parameters())\n"
                 "model, loader = accelerator.prepare(model, loader)"),
        fixed=("optimizer = torch.optim.AdamW(model.parameters())\n"
               "model, optimizer, loader = accelerator.prepare(model, optimizer, loader)"),
    ),
    Rule(
        id="hard-coded-rank",
        title="Hard-coded device, rank or world size",
        what="a hard-coded device index or rank read breaks on other process counts and launchers",
        fix="use accelerator.device, accelerator.process_index, accelerator.local_process_index and "
            "accelerator.num_processes",
        when=("in a function (or module) that creates or sees an Accelerator: an indexed device (`\"cuda:0\"`, "
              "`torch.device(\"cuda\", 1)`, `.cuda(0)`), a read of `RANK` / `LOCAL_RANK` / `WORLD_SIZE` / "
              "`LOCAL_WORLD_SIZE` from `os.environ`, or `torch.distributed.get_rank()` / `get_world_size()`"),
        mistake=("device = torch.device(\"cuda:0\")\n"
                 "rank = int(os.environ[\"RANK\"])"),
        fixed=("device = accelerator.device\n"
               "rank = accelerator.process_index"),
    ),
    Rule(
        id="no-mixed-precision",
        title="A CUDA script without mixed precision",
        what="the script targets CUDA, but neither the Accelerator nor the config turns on mixed precision, so "
             "it trains in fp32",
        fix="pass mixed_precision=\"bf16\" (or \"fp16\") to the Accelerator or set mixed_precision in the config",
        when=("a `--config` file is given and sets neither mixed precision nor ZeRO, no Accelerator passes "
              "`mixed_precision` or a sharding plugin, and the script names a CUDA device (\"cuda\", `.cuda()`)"),
        mistake=("accelerator = Accelerator()\n"
                 "x = x.to(\"cuda\")"),
        fixed=("accelerator = Accelerator(mixed_precision=\"bf16\")\n"
               "x = x.to(accelerator.device)"),
        severity="info",
    ),
    Rule(
        id="zero3-small-model",
        title="ZeRO-3 for a small model",
        what="ZeRO-3 shards the parameters of a small model: gathering them at every layer costs more time "
             "than the memory it saves",
        fix="use ZeRO stage 2 (or 1, or plain data parallelism) for models under a billion parameters",
        when=("ZeRO stage 3 (a literal `DeepSpeedPlugin(zero_stage=3)`, or the `--config` file) and every model "
              "the script loads with `from_pretrained` has a name whose size is known (gpt2, bert-base-uncased, "
              "..., or a size in the name such as opt-125m) and under a billion parameters"),
        mistake=("plugin = DeepSpeedPlugin(zero_stage=3)\n"
                 "model = AutoModelForCausalLM.from_pretrained(\"gpt2\")"),
        fixed=("plugin = DeepSpeedPlugin(zero_stage=2)\n"
               "model = AutoModelForCausalLM.from_pretrained(\"gpt2\")"),
        severity="info",
    ),
    Rule(
        id="large-model-unsharded",
        title="A large model trained unsharded",
        what="every process holds this model's full training state (about 16 bytes a parameter with Adam: "
             "fp32 weights, gradients and two moments) before any activation",
        fix="shard it (zero_stage: 3, or FSDP), offload the optimizer (offload_optimizer_device: cpu) and turn "
            "on activation checkpointing (model.gradient_checkpointing_enable())",
        when=("a `--config` file without ZeRO or FSDP is given, no Accelerator passes a sharding plugin, the "
              "script trains (`accelerator.backward`) and loads a model whose name gives 6B parameters or more "
              "(Llama-2-7b-hf, Qwen2.5-14B, ...)"),
        mistake=("# config: mixed_precision: bf16 (no zero_stage, no FSDP)\n"
                 "model = AutoModelForCausalLM.from_pretrained(\"meta-llama/Llama-2-7b-hf\")\n"
                 "model, optimizer = accelerator.prepare(model, optimizer)"),
        fixed=("# config: mixed_precision: bf16, zero_stage: 3, offload_optimizer_device: cpu\n"
               "model = AutoModelForCausalLM.from_pretrained(\"meta-llama/Llama-2-7b-hf\")\n"
               "model.gradient_checkpointing_enable()\n"
               "model, optimizer = accelerator.prepare(model, optimizer)"),
        severity="info",
    ),
    Rule(
        id="zero-stage-mismatch",
        title="Loading a checkpoint under another ZeRO stage than it was saved with",
        what="this script saves and loads state under Accelerators with different ZeRO stages: surge reshards "
             "the checkpoint (any layout loads into any stage), but under Accelerate, DeepSpeed loads its "
             "checkpoints only at the stage they were saved with (unless converted to its universal format)",
        fix="keep one ZeRO stage for saving and loading if the script must also run under Accelerate or "
            "DeepSpeed (or move the weights with `surge merge-weights`)",
        when=("two Accelerators of the script get `DeepSpeedPlugin`s with different literal `zero_stage`s and "
              "the script calls both `save_state` and `load_state`"),
        mistake=("saver = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2))\n"
                 "saver.save_state(\"ckpt\")\n"
                 "loader = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3))\n"
                 "loader.load_state(\"ckpt\")"),
        fixed=("saver = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3))\n"
               "saver.save_state(\"ckpt\")\n"
               "loader = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3))\n"
               "loader.load_state(\"ckpt\")"),
        severity="info",
    ),
    Rule(
        id="collective-on-main-process",
        title="A collective call on the main process only",
        what="every process must make this call; under a rank check the other processes never arrive and the "
             "job hangs (sharded strategies gather across processes here)",
        fix="call it on every process (it writes files on the main process only by itself), outside the "
            "`if accelerator.is_main_process:`",
        when=("`save_state`, `load_state`, `save_model`, `get_state_dict`, `wait_for_everyone`, `gather`, "
              "`gather_for_metrics`, `reduce` or `pad_across_processes` of an Accelerator, or a "
              "`torch.distributed` collective, is called under `if <x>.is_main_process:` / "
              "`is_local_main_process` / `process_index == 0` (their `not`, their `and`; after `if not "
              "<x>.is_main_process: return`; in a function decorated with `on_main_process`), and the other "
              "side of the check does not make the same call nor run the script's own functions"),
        mistake=("if accelerator.is_main_process:\n"
                 "    accelerator.save_state(\"ckpt\")"),
        fixed=("accelerator.save_state(\"ckpt\")  # on every process\n"
               "if accelerator.is_main_process:\n"
               "    print(\"saved\")"),
    ),
)

RULE_BY_ID = {rule.id: rule for rule in RULES}
