"""Rank 1 skips a collective that rank 0 waits in (it is busy elsewhere for a minute):
`--where barrier` skips accelerator.wait_for_everyone(), `--where backward` skips a
step's backward (DDP's gradient all-reduce). Rank 0 prints `waiting since <time.time()>`
as it enters the collective, so a test can time the report from there."""

import argparse
import time

import torch

from surge import Accelerator

parser = argparse.ArgumentParser()
parser.add_argument("--where", choices=["barrier", "backward"], default="barrier")
args = parser.parse_args()

acc = Accelerator()
model = torch.nn.Linear(4, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = acc.prepare(model, optimizer)
for step in range(3):
    loss = model(torch.ones(2, 4)).sum()
    if step == 1 and acc.process_index == 1 and args.where == "backward":
        time.sleep(90)  # stuck in its data pipeline while rank 0 synchronises gradients
    elif step == 1 and args.where == "backward":
        print(f"waiting since {time.time()}", flush=True)
    acc.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    if step == 1 and args.where == "barrier":
        if acc.process_index == 1:
            time.sleep(90)  # a long evaluation on one rank, the barrier forgotten
        else:
            print(f"waiting since {time.time()}", flush=True)
            acc.wait_for_everyone()
print("finished", flush=True)
