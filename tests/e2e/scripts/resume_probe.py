"""Trains a small model with shuffling and dropout; can save mid-run (and stop, or go
on), resume from a checkpoint, only load one or several checkpoints (each into a new
Accelerator, e.g. under other strategies), or have rank 1 killed once mid-run. Prints
a checksum of the full parameters (one line per loaded checkpoint with --load)."""

import argparse
import hashlib
import os
import signal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, FullyShardedDataParallelPlugin, ProjectConfiguration
from surge.utils import set_seed

parser = argparse.ArgumentParser()
parser.add_argument("--project")
parser.add_argument("--zero", type=int, default=0)
parser.add_argument("--stop_after", type=int, default=0, help="save and exit after this many micro-steps")
parser.add_argument("--save_at", type=int, default=0, help="save after this many micro-steps and go on")
parser.add_argument("--resume", action="store_true")
parser.add_argument("--load_only", action="store_true")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--save_every", type=int, default=0, help="also save every this many optimizer steps")
parser.add_argument("--async_save", action="store_true", help="write checkpoints in the background")
parser.add_argument("--kill_at", type=int, default=0, help="rank 1 SIGKILLs itself at this micro-step, once")
parser.add_argument("--fsdp", choices=["FULL_STATE_DICT", "SHARDED_STATE_DICT"], help="FSDP FULL_SHARD with this "
                    "checkpoint layout instead of --zero")
parser.add_argument("--load", action="append", default=[], metavar="ZERO:PROJECT",
                    help="only load PROJECT's newest checkpoint under ZeRO stage ZERO (repeatable; each in a new "
                    "Accelerator, in order); --project and --zero are then ignored")
args = parser.parse_args()


class Counter:
    def __init__(self):
        self.seen = self.updates = 0

    def state_dict(self):
        return {"seen": self.seen, "updates": self.updates}

    def load_state_dict(self, state):
        self.seen, self.updates = state["seen"], state["updates"]


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


def prepared(zero, project):
    """A new Accelerator with the model, optimizer, loader and schedule prepared."""
    plugin = {"zero_stage": zero} if zero else None
    fsdp = FullyShardedDataParallelPlugin("FULL_SHARD", state_dict_type=args.fsdp) if args.fsdp else None
    acc = Accelerator(gradient_accumulation_steps=2, deepspeed_plugin=plugin, fsdp_plugin=fsdp,
                      project_config=ProjectConfiguration(project, automatic_checkpoint_naming=True, total_limit=2))
    set_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(72, 8, generator=g), torch.randn(72, 1, generator=g))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
    model, opt, loader, sched = acc.prepare(model, opt, DataLoader(data, batch_size=4, shuffle=True), sched)
    counter = Counter()
    acc.register_for_checkpointing(counter)
    return acc, model, opt, loader, sched, counter


def report(acc, model, sched, counter):
    acc.end_training()
    state = acc.get_state_dict(model)
    if acc.is_main_process:
        digest = hashlib.sha256()
        for name in sorted(state):
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
        print(f"checksum={digest.hexdigest()} seen={counter.seen} lr={sched.get_last_lr()[0]:.6f} "
              f"iteration={acc.project_configuration.iteration} "
              f"restarts={os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", flush=True)


if args.load:
    for spec in args.load:
        zero, project = spec.split(":", 1)
        acc, model, opt, loader, sched, counter = prepared(int(zero), project)
        acc.load_state()
        report(acc, model, sched, counter)
    raise SystemExit(0)

acc, model, opt, loader, sched, counter = prepared(args.zero, args.project)
if args.resume or args.load_only:
    # The resume one-liner: the newest complete checkpoint, or nothing on a first run.
    acc.load_state(missing_ok=args.resume)
if not args.load_only:
    for _epoch in range(loader.epoch, args.epochs):  # a loaded loader continues its epoch
        for x, y in loader:
            with acc.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                acc.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad()
            counter.seen += 1
            counter.updates += acc.sync_gradients
            if args.kill_at and acc.gradient_state.step == args.kill_at and acc.process_index == 1:
                os.makedirs(args.project, exist_ok=True)
                marker = os.path.join(args.project, "killed-once")
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)  # a dead worker, no goodbye
            if args.stop_after and acc.gradient_state.step == args.stop_after:
                acc.save_state(async_save=args.async_save)
                acc.end_training()  # waits for a background save
                raise SystemExit(0)
            if args.save_at and acc.gradient_state.step == args.save_at:
                acc.save_state(async_save=args.async_save)  # and training goes on
            if args.save_every and acc.sync_gradients and counter.updates % args.save_every == 0:
                acc.save_state(async_save=args.async_save)  # training goes on while it is written
report(acc, model, sched, counter)
