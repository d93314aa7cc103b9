"""Checkpoints and exact resume: save every N steps, stop anywhere, continue where it
stopped (same batches, same random numbers, same parameters as an uninterrupted run).

    surge launch --num_processes 2 examples/by_feature/checkpointing.py --stop_at 30
    surge launch --num_processes 2 examples/by_feature/checkpointing.py --resume
    surge launch --num_processes 2 --max_restarts 3 examples/by_feature/checkpointing.py --resume

``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=2)`` names the
checkpoints ``checkpoint_<n>`` under ``--project_dir/checkpoints`` and keeps the newest
two; ``load_state(missing_ok=True)`` loads the newest complete one (or does nothing on a
first run) and puts the loader back where it was in its epoch. With ``--max_restarts``,
``surge launch`` restarts the workers when one dies and this line resumes them.
"""

import argparse
import hashlib

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, ProjectConfiguration
from surge.utils import set_seed


class StepCounter:
    """Anything with state_dict/load_state_dict can ride along in the checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project_dir", default="runs/checkpointing")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--save_every", type=int, default=10, help="optimizer steps between checkpoints")
    p.add_argument("--stop_at", type=int, default=0, help="pretend to crash after this many steps")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--async_save", action="store_true", help="write checkpoints in the background")
    p.add_argument("--smoke", action="store_true", help="a few seconds (CI); the run is short anyway")
    args = p.parse_args()

    accelerator = Accelerator(project_config=ProjectConfiguration(args.project_dir, automatic_checkpoint_naming=True,
                                                                  total_limit=2))
    set_seed(0)
    x = torch.randn(256, 8)
    data = TensorDataset(x, x @ torch.randn(8, 1))
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    model, optimizer, loader, scheduler = accelerator.prepare(
        model, optimizer, DataLoader(data, batch_size=8, shuffle=True), scheduler)

    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    if args.resume:
        accelerator.load_state(missing_ok=True)  # the newest complete checkpoint, if any
        accelerator.print(f"resumed at step {counter.step}, epoch {loader.epoch}, {loader.resume_batches} batches "
                          "of it already done")
    for _ in range(loader.epoch, args.epochs):
        for inputs, targets in loader:  # a loaded loader skips the batches already done
            loss = nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            counter.step += 1
            if counter.step % args.save_every == 0:
                accelerator.save_state(async_save=args.async_save)
            if counter.step == args.stop_at:
                accelerator.save_state()
                accelerator.print(f"stopped at step {counter.step}; run again with --resume")
                accelerator.end_training()
                return
    accelerator.end_training()
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]
        print(f"finished at step {counter.step}; parameters {digest}")


if __name__ == "__main__":
    main()
