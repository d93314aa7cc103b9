"""Mistake: hard-coded devices, ranks and world sizes next to an Accelerator."""

import os

import torch
import torch.distributed as dist

from surge import Accelerator

accelerator = Accelerator()
device = torch.device("cuda:0")  # doctor: expect hard-coded-rank
local_rank = int(os.environ["LOCAL_RANK"])  # doctor: expect hard-coded-rank
world = os.environ.get("WORLD_SIZE", "1")  # doctor: expect hard-coded-rank
if dist.get_rank() == 0:  # doctor: expect hard-coded-rank
    print("main")
x = torch.zeros(3).cuda(1)  # doctor: expect hard-coded-rank
y = torch.zeros(3, device="cuda:1")  # doctor: expect hard-coded-rank
os.environ["MASTER_PORT"] = "29500"  # written, not a rank read
