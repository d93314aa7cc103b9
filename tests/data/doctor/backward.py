"""Mistake: loss.backward() in a script that prepared its model."""

import accelerate
import torch

accelerator = accelerate.Accelerator()
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.AdamW(model.parameters())
model, optimizer = accelerator.prepare(model, optimizer)


def step(x: torch.Tensor) -> None:
    loss = model(x).pow(2).mean()
    loss.backward()  # doctor: expect tensor-backward
    optimizer.step()
    optimizer.zero_grad()
