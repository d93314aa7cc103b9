"""Advice: ZeRO-3 for gpt2."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from surge import Accelerator, DeepSpeedPlugin

plugin = DeepSpeedPlugin(zero_stage=3)
accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision="bf16")
tokenizer = AutoTokenizer.from_pretrained("gpt2")
model = AutoModelForCausalLM.from_pretrained("gpt2")  # doctor: expect zero3-small-model
model = accelerator.prepare(model)
