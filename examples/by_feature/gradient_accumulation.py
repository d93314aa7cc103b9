"""Gradient accumulation: a large effective batch from small micro-batches.

    surge launch --num_processes 2 examples/by_feature/gradient_accumulation.py --accumulation_steps 4

``accelerator.accumulate(model)`` skips the gradient all-reduce on the micro-steps that
do not end an accumulation window, ``backward`` divides the loss so the accumulated
gradient is the mean over the window, and ``optimizer.step()`` / ``scheduler.step()``
only act at the window's end (``accelerator.sync_gradients`` says which micro-step is).
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator
from surge.utils import set_seed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accumulation_steps", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="a few seconds (CI)")
    args = p.parse_args()
    epochs = 2 if args.smoke else args.epochs

    accelerator = Accelerator(gradient_accumulation_steps=args.accumulation_steps)
    set_seed(0)
    x = torch.randn(512, 8)
    data = TensorDataset(x, x @ torch.randn(8, 1) + 0.1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=8, shuffle=True))

    optimizer_steps = 0
    for epoch in range(epochs):
        for inputs, targets in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(inputs), targets)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            optimizer_steps += accelerator.sync_gradients
        accelerator.print(f"epoch {epoch}: loss {accelerator.reduce(loss.detach(), 'mean').item():.4f}, "
                          f"{optimizer_steps} optimizer steps so far")
    effective = 8 * args.accumulation_steps * accelerator.num_processes
    accelerator.print(f"effective batch {effective} = 8 per process x {args.accumulation_steps} micro-steps x "
                      f"{accelerator.num_processes} processes")


if __name__ == "__main__":
    main()
