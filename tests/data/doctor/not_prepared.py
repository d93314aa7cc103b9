"""Mistake: an optimizer and a DataLoader left out of prepare()."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def main() -> None:
    accelerator = Accelerator()
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # doctor: expect not-prepared
    train = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)  # doctor: expect not-prepared
    evaluation = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)
    model = accelerator.prepare(model)
    for x, y in train:
        accelerator.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        for x, y in evaluation:  # evaluation only: not reported
            print(nn.functional.mse_loss(model(x), y).item())


main()
