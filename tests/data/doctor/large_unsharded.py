"""Advice: a 7B model trained with no sharding in the config."""
# doctor: config plain_bf16.yaml

import torch
from transformers import AutoModelForCausalLM

from surge import Accelerator

accelerator = Accelerator()
model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")  # doctor: expect large-model-unsharded
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
model, optimizer = accelerator.prepare(model, optimizer)
accelerator.backward(model(torch.ones(1, 8, dtype=torch.long)).logits.sum())
