"""The same checkpointing loops under surge or HF Accelerate (``--lib``), on 2 processes:
prints, on the main process, what users see as JSON (parameters, learning rates, the
batches each rank got, random draws). tests/e2e/test_accelerate_checkpoints.py launches
it under Accelerate first (its checkpoints stay in ``--dir``/accelerate) and then under
surge with ``--resume-from`` that directory: surge resumes Accelerate's checkpoints too.

Cases (each: an uninterrupted run that saves at step ``k``, and a run in fresh objects
that loads the checkpoint, skips the batches already trained on and continues):
``steps`` (SGD with momentum + a scheduler, no checkpoint), ``fresh`` (Adam, saved
before the first optimizer step: saving and resuming must equal an unsaved run),
``unused`` (Adam, a trainable parameter that never gets a gradient), ``resume`` (SGD
with momentum, a scheduler, dropout and input noise: the random draws must continue),
``hooks`` (diffusers-style save/load pre-hooks that save the model their own way).
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from compare_exit import leave
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--lib", choices=("surge", "accelerate"), required=True)
parser.add_argument("--dir", required=True, help="where this run writes its checkpoints (<dir>/<lib>/<case>)")
parser.add_argument("--resume-from", default=None, help="a directory of the other library's checkpoints")
args = parser.parse_args()
if args.lib == "surge":
    from surge import Accelerator, DistributedDataParallelKwargs
else:
    from accelerate import Accelerator, DistributedDataParallelKwargs

STEPS_PER_EPOCH = 4  # 32 samples, batches of 4, 2 processes
EPOCHS = 2
SAVE_AT = {"fresh": 0, "unused": 2, "resume": 3, "hooks": 2}


class Net(nn.Module):
    def __init__(self, unused: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)
        self.drop = nn.Dropout(dropout)
        self.pooler = nn.Linear(8, 8) if unused else None  # trainable, never used: no gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.drop(torch.tanh(self.a(x))))


def build(case: str) -> tuple:
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if case == "unused" else []
    acc = Accelerator(cpu=True, kwargs_handlers=handlers)
    torch.manual_seed(0)
    model = Net(unused=case == "unused", dropout=0.1 if case == "resume" else 0.0)
    if case in ("fresh", "unused"):
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.25 * s))
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    # A generator of its own: torch's DataLoader draws each iteration's base seed from the
    # global RNG without one (surge's loaders never do; see [Note: the loader owns its
    # randomness]), which would shift the random draws compared here.
    loader = DataLoader(data, batch_size=4, shuffle=False, generator=torch.Generator().manual_seed(7))
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    if case == "hooks":
        register_hooks(acc)
    return acc, model, opt, loader, sched


def register_hooks(acc) -> None:
    """diffusers' pattern: the main process saves the model itself and removes its weights."""

    def save_hook(models, weights, output_dir):
        if acc.is_main_process:
            for model in models:
                torch.save(acc.unwrap_model(model).state_dict(), os.path.join(output_dir, "net.pt"))
                weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            acc.unwrap_model(model).load_state_dict(torch.load(os.path.join(input_dir, "net.pt"), weights_only=True))

    acc.register_save_state_pre_hook(save_hook)
    acc.register_load_state_pre_hook(load_hook)


def step(acc, model, opt, sched, batch, record) -> None:
    x, y = batch
    noise = 0.01 * torch.randn_like(x)
    acc.backward(nn.functional.mse_loss(model(x + noise), y))
    opt.step()
    sched.step()
    opt.zero_grad()
    record["lrs"].append(round(sched.get_last_lr()[0], 10))
    record["data"].append(round(float(x.sum()), 5))
    record["draws"].append(round(float(noise.sum()), 7))


def train(acc, model, opt, loader, sched, record, start: int = 0, save_to: str | None = None,
          save_at: int | None = None) -> None:
    """Train from global step ``start`` to the end, saving after ``save_at`` steps (0:
    before the first)."""
    done = start
    if save_to is not None and save_at == 0:
        acc.save_state(save_to)
    for epoch in range(start // STEPS_PER_EPOCH, EPOCHS):
        skip = start - epoch * STEPS_PER_EPOCH
        batches = acc.skip_first_batches(loader, skip) if skip > 0 else loader
        for batch in batches:
            step(acc, model, opt, sched, batch, record)
            done += 1
            if save_to is not None and done == save_at:
                acc.save_state(save_to)


def everyone(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def finish(acc, model, record) -> dict:
    params = [round(v, 7) for p in acc.unwrap_model(model).parameters() for v in p.detach().flatten().tolist()]
    return {"params": params, "lrs": record["lrs"], "data": everyone(record["data"]),
            "draws": everyone(record["draws"])}


def fresh_record() -> dict:
    return {"lrs": [], "data": [], "draws": []}


def uninterrupted(case: str, save_to: str | None) -> dict:
    acc, model, opt, loader, sched = build(case)
    record = fresh_record()
    train(acc, model, opt, loader, sched, record, save_to=save_to, save_at=SAVE_AT.get(case))
    return finish(acc, model, record)


def resumed(case: str, checkpoint: str) -> dict:
    acc, model, opt, loader, sched = build(case)
    acc.load_state(checkpoint)
    record = fresh_record()
    train(acc, model, opt, loader, sched, record, start=SAVE_AT[case])
    result = finish(acc, model, record)
    result["weights_file"] = any(n.endswith((".safetensors", "pytorch_model.bin")) for n in os.listdir(checkpoint))
    return result


root = os.path.join(args.dir, args.lib)
results = {"steps": uninterrupted("steps", None), "fresh_unsaved": uninterrupted("fresh", None)}
for case in SAVE_AT:
    results[case] = uninterrupted(case, os.path.join(root, case))
    results[f"{case}_resumed"] = resumed(case, os.path.join(root, case))
if args.resume_from:
    for case in SAVE_AT:
        results[f"{case}_from_other"] = resumed(case, os.path.join(args.resume_from, case))
if dist.get_rank() == 0:
    print("RESULT " + json.dumps(results), flush=True)
leave()  # compare_exit.py: why the script ends this way
