"""Trains a small model with shuffling and dropout; can stop mid-run with a checkpoint,
resume from it, or only load it. Prints a checksum of the full parameters."""

import argparse
import hashlib

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, FullyShardedDataParallelPlugin, ProjectConfiguration
from surge.utils import set_seed

parser = argparse.ArgumentParser()
parser.add_argument("--project", required=True)
parser.add_argument("--zero", type=int, default=0)
parser.add_argument("--stop_after", type=int, default=0, help="save and exit after this many micro-steps")
parser.add_argument("--resume", action="store_true")
parser.add_argument("--load_only", action="store_true")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--save_every", type=int, default=0, help="also save every this many micro-steps")
parser.add_argument("--async_save", action="store_true", help="write checkpoints in the background")
parser.add_argument("--fsdp", choices=["FULL_STATE_DICT", "SHARDED_STATE_DICT"], help="FSDP FULL_SHARD with this "
                    "checkpoint layout instead of --zero")
args = parser.parse_args()


class Counter:
    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


plugin = {"zero_stage": args.zero} if args.zero else None
fsdp = FullyShardedDataParallelPlugin("FULL_SHARD", state_dict_type=args.fsdp) if args.fsdp else None
acc = Accelerator(gradient_accumulation_steps=2, deepspeed_plugin=plugin, fsdp_plugin=fsdp,
                  project_config=ProjectConfiguration(args.project, automatic_checkpoint_naming=True, total_limit=2))
set_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3),
                      nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 32)]), nn.Linear(32, 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.drop = nn.Linear(8, 32), nn.Dropout(0.3)
        self.blocks = nn.ModuleList([nn.Linear(32, 32) for _ in range(2)])
        self.out = nn.Linear(32, 1)

    def forward(self, x):
        h = self.drop(torch.relu(self.inp(x)))
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.out(h)


model = Net()
g = torch.Generator().manual_seed(1)
data = TensorDataset(torch.randn(72, 8, generator=g), torch.randn(72, 1, generator=g))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
model, opt, loader, sched = acc.prepare(model, opt, DataLoader(data, batch_size=4, shuffle=True), sched)
counter = Counter()
acc.register_for_checkpointing(counter)
start, skip = 0, 0
if args.resume or args.load_only:
    acc.load_state()
    start, skip = loader.epoch, loader.resume_batches
if not args.load_only:
    for epoch in range(start, args.epochs):
        batches = acc.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for x, y in batches:
            with acc.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                acc.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad()
            counter.seen += 1
            if args.stop_after and acc.gradient_state.step == args.stop_after:
                acc.save_state(async_save=args.async_save)
                acc.end_training()  # waits for a background save
                raise SystemExit(0)
            if args.save_every and acc.gradient_state.step % args.save_every == 0:
                acc.save_state(async_save=args.async_save)  # training goes on while it is written
acc.end_training()
state = acc.get_state_dict(model)
if acc.is_main_process:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    print(f"checksum={digest.hexdigest()} seen={counter.seen} lr={sched.get_last_lr()[0]:.6f} "
          f"iteration={acc.project_configuration.iteration}")
