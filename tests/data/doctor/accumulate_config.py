"""Mistake: the config turns accumulation on, the loop has no accelerator.accumulate."""
# doctor: config accumulate.yaml

import torch

from surge import Accelerator

accelerator = Accelerator(mixed_precision="bf16")
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)
for _ in range(10):
    accelerator.backward(model(torch.randn(2, 4)).sum())  # doctor: expect accumulate-missing
    optimizer.step()
    optimizer.zero_grad()
