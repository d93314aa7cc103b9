"""Mistakes: a plain PyTorch script half converted to the Accelerator."""

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from surge import Accelerator


def main() -> None:
    accelerator = Accelerator(mixed_precision="bf16")
    device = torch.device("cuda:0")  # doctor: expect hard-coded-rank
    model = AutoModelForCausalLM.from_pretrained("my-org/my-model").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = DataLoader(load_data(), batch_size=8)  # noqa: F821  (the user's own)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}  # doctor: expect manual-device-placement
        loss = model(**batch).loss
        loss.backward()  # doctor: expect tensor-backward
        optimizer.step()
        optimizer.zero_grad()
    if accelerator.is_main_process:
        accelerator.save_model(model, "out")  # doctor: expect collective-on-main-process
        torch.save(model.state_dict(), "model.pt")  # doctor: expect save-wrapped-model


main()
