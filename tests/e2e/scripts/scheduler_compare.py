"""The same training loop under surge or HF Accelerate (``--lib``): prints, on the main
process, the learning rate after every micro-step for each scheduler setting, as JSON.
tests/e2e/test_accelerate_compat.py launches it both ways on 2 processes and compares."""

import argparse
import json

import torch
from compare_exit import leave
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--lib", choices=("surge", "accelerate"), required=True)
args = parser.parse_args()
if args.lib == "surge":
    from surge import Accelerator
else:
    from accelerate import Accelerator

CASES = {
    "default": {},
    "split_batches": {"split_batches": True},
    "not_with_optimizer": {"step_scheduler_with_optimizer": False},
    "accumulation": {"gradient_accumulation_steps": 2},
}
results = {}
main = False
for name, case in CASES.items():
    kwargs = dict(case)
    if args.lib == "accelerate" and "split_batches" in kwargs:
        # Accelerate 1.15 reads split_batches only from a DataLoaderConfiguration (its
        # constructor argument is accepted and ignored).
        from accelerate import DataLoaderConfiguration

        kwargs = {"dataloader_config": DataLoaderConfiguration(split_batches=kwargs["split_batches"])}
    acc = Accelerator(cpu=True, **kwargs)
    main = acc.is_main_process
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    # The default case asks for 8 scheduler steps: 7 makes it stop at OneCycleLR's end.
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=7 if name == "default" else 9)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    model, opt, loader, sched = acc.prepare(model, opt, DataLoader(data, batch_size=4), one_cycle)
    lrs = []
    for x, y in loader:
        with acc.accumulate(model):
            acc.backward(nn.functional.mse_loss(model(x), y))
            opt.step()
            sched.step()
            opt.zero_grad()
        lrs.append(round(sched.get_last_lr()[0], 8))
    results[name] = lrs
if main:
    print("RESULT " + json.dumps(results), flush=True)
del model, opt, loader, sched, acc
leave()  # compare_exit.py: why the script ends this way
