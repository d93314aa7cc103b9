"""Mistakes in a helper that receives the Accelerator as an annotated parameter."""

import torch
from torch.utils.data import DataLoader

from surge import Accelerator


def train(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for x, y in loader:
        x.cuda()  # its placement depends on the caller's Accelerator: not reported
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # doctor: expect tensor-backward
        optimizer.step()
    if accelerator.is_main_process:
        accelerator.save_state("ckpt")  # doctor: expect collective-on-main-process


def evaluate(accelerator: "Accelerator", model: torch.nn.Module) -> None:
    model = accelerator.prepare(model)
    model(torch.ones(1, 4)).sum().backward()  # doctor: expect tensor-backward


train(Accelerator(), torch.nn.Linear(4, 1), DataLoader([]))
