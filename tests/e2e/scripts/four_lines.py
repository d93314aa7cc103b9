"""The four-line quick start, unchanged for one process and for torchrun.

Writes this rank's final parameters to OUT_DIR/params-rank<k>.pt.
"""

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator

out_dir = sys.argv[1]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
g = torch.Generator().manual_seed(1)
data = TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))
loader = DataLoader(data, batch_size=8, shuffle=True)

accelerator = Accelerator()                                                  # 1
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)     # 2
for _epoch in range(2):
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)                                           # 3
        optimizer.step()                                                     # 4
        optimizer.zero_grad()

params = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
torch.save({"world_size": accelerator.num_processes, "params": params},
           os.path.join(out_dir, f"params-rank{accelerator.process_index}.pt"))
