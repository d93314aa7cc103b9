"""Mistake: a function defined first, reading globals the script prepares afterwards."""

import torch
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator


def evaluate() -> float:
    total = 0.0
    for x, y in eval_loader:
        total += (model(x.cuda()) - y).abs().sum().item()  # doctor: expect manual-device-placement
    return total


accelerator = Accelerator(mixed_precision="bf16")
model = torch.nn.Linear(4, 1)
eval_loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)
model, eval_loader = accelerator.prepare(model, eval_loader)
print(evaluate())
