"""Mistake: accumulation steps on, no accelerator.accumulate."""

import torch

import surge

accelerator = surge.Accelerator(gradient_accumulation_steps=4)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)
for _ in range(10):
    loss = model(torch.randn(2, 4)).sum()
    accelerator.backward(loss)  # doctor: expect accumulate-missing
    optimizer.step()
    optimizer.zero_grad()
