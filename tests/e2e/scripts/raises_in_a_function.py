"""Rank 1 raises a ValueError from a function of this script while rank 0 waits for it in
an all-reduce (and then loses it: gloo's "Connection closed by peer")."""

import torch

from surge import Accelerator
from surge.ops import reduce


def check_batch(rank):
    if rank == 1:
        raise ValueError(f"bad batch on rank {rank}")
    return reduce(torch.ones(1))


accelerator = Accelerator()
check_batch(accelerator.process_index)
