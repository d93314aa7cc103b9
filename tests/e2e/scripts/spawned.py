"""A job started with torch.multiprocessing.spawn and an explicit init_process_group:
no launcher variables at all. The Accelerator must adopt the running group."""

import sys

import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from surge import Accelerator


def worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    acc = Accelerator()
    model = acc.prepare(nn.Linear(2, 1))
    assert acc.num_processes == 2 and acc.process_index == rank, (acc.num_processes, acc.process_index)
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    print(f"rank {rank}: world {acc.num_processes}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]),), nprocs=2)
