"""Mistake: saving the wrapped model."""

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

from surge import Accelerator

accelerator = Accelerator()
model = AutoModelForCausalLM.from_pretrained("my-org/my-model")
model = accelerator.prepare(model)
torch.save(model.state_dict(), "model.pt")  # doctor: expect save-wrapped-model
model.save_pretrained("out")  # doctor: expect save-wrapped-model
state = model.state_dict()
safetensors.torch.save_file(state, "model.safetensors")  # doctor: expect save-wrapped-model
accelerator.unwrap_model(model).save_pretrained("out")  # right
unwrapped = accelerator.unwrap_model(model)
torch.save(unwrapped.state_dict(), "model.pt")  # right
accelerator.save(model.state_dict(), "model.bin")  # doctor: expect save-wrapped-model
