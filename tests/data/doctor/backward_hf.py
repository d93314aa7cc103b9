"""Mistake: a Hugging Face style loss.backward(); the plain-torch reference next to it is fine."""

import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoModelForCausalLM


def train(dataset: torch.utils.data.Dataset) -> None:
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    reference = AutoModelForCausalLM.from_pretrained("gpt2")
    for batch in loader:
        reference(**batch).loss.backward()  # no Accelerator yet, an unprepared model: not reported
    accelerator = Accelerator(mixed_precision="bf16")
    model = AutoModelForCausalLM.from_pretrained("gpt2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for _step, batch in enumerate(tqdm(loader)):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}  # a no-op: not reported
        outputs = model(**batch)
        loss = outputs.loss / 2
        loss.backward()  # doctor: expect tensor-backward
        optimizer.step()
        optimizer.zero_grad()
        inputs = {k: v.to(device="cuda") for k, v in batch.items()}  # doctor: expect manual-device-placement
        print(inputs)
