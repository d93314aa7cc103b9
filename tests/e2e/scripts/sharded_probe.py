"""Trains a small block model with whatever sharding the launcher asked for."""

import sys

import torch
from torch import nn

from surge import Accelerator
from surge.testing.parity import BlockModel

acc = Accelerator()
model = BlockModel()
opt = torch.optim.SGD(model.parameters(), lr=0.05)
model, opt = acc.prepare(model, opt)
for _ in range(3):
    acc.backward(nn.functional.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 1)))
    opt.step()
    opt.zero_grad()
kind = type(next(iter(acc.unwrap_model(model).parameters()))).__name__
sys.stdout.write(f"rank={acc.process_index} type={acc.distributed_type.value} params={kind}\n")
