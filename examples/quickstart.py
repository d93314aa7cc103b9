"""The surge quick start: a small regression model trained with the Accelerator.

Runs unchanged on one process and on many:

    python examples/quickstart.py
    torchrun --nproc_per_node 2 examples/quickstart.py

Every process prints nothing but the main one; at the end the main process reports
the loss curve and a checksum of the parameters, which is identical on every rank.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator
from surge.utils import set_seed


def make_data(n: int = 4096, features: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    true_w = torch.randn(features, 1, generator=g)
    y = x @ true_w + 0.1 * torch.sin(3 * x[:, :1]) + 0.01 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    accelerator = Accelerator()
    set_seed(args.seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loader = DataLoader(make_data(), batch_size=args.batch_size, shuffle=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.print(
        f"training on {accelerator.num_processes} process(es), device {accelerator.device}, "
        f"{len(loader)} steps per epoch per process"
    )

    for epoch in range(args.epochs):
        model.train()
        total = torch.zeros((), device=accelerator.device)
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += loss.detach()
        mean_loss = accelerator.reduce(total / len(loader), reduction="mean")
        accelerator.print(f"epoch {epoch}: loss {mean_loss.item():.5f}")

    checksum = sum(p.double().sum() for p in accelerator.unwrap_model(model).parameters())
    sums = accelerator.gather(checksum.reshape(1).float())
    accelerator.print(f"parameter checksum per rank: {[round(v, 6) for v in sums.tolist()]}")
    if len(set(sums.tolist())) != 1:
        raise SystemExit("ranks disagree on the parameters")
    accelerator.print("done: every rank holds identical parameters")


if __name__ == "__main__":
    main()
