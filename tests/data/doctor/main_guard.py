"""Mistakes in a function reading globals the `if __name__ == "__main__":` block binds."""

import torch
from torch.utils.data import DataLoader, TensorDataset

import surge


def train_epoch() -> None:
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x.to("cuda")), y)  # doctor: expect manual-device-placement
        loss.backward()  # doctor: expect tensor-backward
        optimizer.step()


if __name__ == "__main__":
    accelerator = surge.Accelerator(mixed_precision="bf16")
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=2))
    train_epoch()
