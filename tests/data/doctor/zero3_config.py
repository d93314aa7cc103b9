"""Advice: ZeRO-3 (from the config) for a 125M-parameter model."""
# doctor: config zero3.yaml

from transformers import AutoModelForCausalLM

from surge import Accelerator

accelerator = Accelerator()
model = AutoModelForCausalLM.from_pretrained("facebook/opt-125m")  # doctor: expect zero3-small-model
model = accelerator.prepare(model)
