"""A script written for the `deepspeed` launcher: --local_rank from the command line,
`add_config_arguments` + `--deepspeed --deepspeed_config`, `deepspeed.initialize(args=...)`."""

import argparse
import os
import sys

import torch
import torch.distributed as dist

import surge as deepspeed

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=-1)
parser.add_argument("--steps", type=int, default=2)
parser = deepspeed.add_config_arguments(parser)
args = parser.parse_args()
model = torch.nn.Linear(4, 2)
engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
for _ in range(args.steps):
    loss = engine(torch.ones(1, 4)).sum()
    engine.backward(loss)
    engine.step()
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else -1
sys.stdout.write(f"local_rank={args.local_rank} env={os.environ['LOCAL_RANK']} world={dist.get_world_size()} "
                 f"deepspeed={args.deepspeed} cores={cores} threads={torch.get_num_threads()}\n")
sys.stdout.flush()
