"""Right: the same 7B model under a ZeRO-3 config."""
# doctor: config zero3.yaml

import torch
from transformers import AutoModelForCausalLM

from surge import Accelerator

accelerator = Accelerator()
model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
model.gradient_checkpointing_enable()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
model, optimizer = accelerator.prepare(model, optimizer)
accelerator.backward(model(torch.ones(1, 8, dtype=torch.long)).logits.sum())
