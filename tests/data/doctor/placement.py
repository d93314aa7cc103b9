"""Mistake: moving what the accelerator already placed."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator

accelerator = Accelerator()
device = torch.device("cuda")
model = nn.Linear(4, 1).to(device)  # before prepare: harmless
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
model.cuda()  # doctor: expect manual-device-placement
for x, y in loader:
    x = x.to(device)  # doctor: expect manual-device-placement
    y = y.to(torch.float16)  # a dtype, not a device
    loss = nn.functional.mse_loss(model(x), y.to(accelerator.device))  # a no-op: not reported
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
for i, batch in enumerate(loader):
    batch = [t.to("cuda") for t in batch]  # doctor: expect manual-device-placement
    labels = batch[1].to("cpu")  # to the CPU, for metrics: not reported
target = "cuda" if torch.cuda.is_available() else "cpu"
for x, _ in accelerator.skip_first_batches(loader, 2):
    x.to(target)  # doctor: expect manual-device-placement
