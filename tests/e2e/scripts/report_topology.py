"""Prints this process's view of the job and checks a collective works."""

import sys

import torch

from surge import PartialState
from surge.ops import reduce

state = PartialState()
total = reduce(torch.ones(1))
sys.stdout.write(f"rank={state.process_index} world={state.num_processes} local={state.local_process_index} "
                 f"backend={state.backend} sum={int(total.item())}\n")  # one write: no interleaving
sys.stdout.flush()
