"""Experiment tracking and logging: metrics to jsonl / TensorBoard / W&B / MLflow from the
main process only, a logger that speaks once per job, and a progress bar.

    surge launch --num_processes 2 examples/by_feature/tracking.py --log_with jsonl tensorboard
    WANDB_MODE=offline python examples/by_feature/tracking.py --log_with wandb

Logs land where HF Accelerate puts them: ``--project_dir/<project>/`` holds
``metrics.jsonl`` and TensorBoard's event files (``tensorboard --logdir runs/tracking``);
W&B and MLflow write where their own settings say (``./wandb``, ``./mlflow.db`` by default).
"""

import argparse
import json
import logging
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator
from surge.logging import get_logger
from surge.utils import set_seed, tqdm

logger = get_logger(__name__, log_level="INFO")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log_with", nargs="+", default=["jsonl"], help="jsonl, tensorboard, wandb, mlflow or all")
    p.add_argument("--project_dir", default="runs/tracking")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="a few seconds (CI)")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO)

    accelerator = Accelerator(log_with=args.log_with, project_dir=args.project_dir)
    config = {"lr": 0.05, "batch_size": 16, "epochs": 1 if args.smoke else args.epochs}
    accelerator.init_trackers("tracking", config=config)
    set_seed(0)
    x = torch.randn(512, 8)
    data = TensorDataset(x, x @ torch.randn(8, 1))
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=16, shuffle=True))
    logger.info("training on %d processes", accelerator.num_processes)
    logger.info("process %d has %d batches", accelerator.process_index, len(loader), main_process_only=False)

    step = 0
    for epoch in range(config["epochs"]):
        for inputs, targets in tqdm(loader, desc=f"epoch {epoch}"):
            loss = nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            accelerator.log({"train/loss": loss.detach(), "epoch": epoch}, step=step)  # main process only
    accelerator.end_training()  # flushes and closes every tracker
    jsonl = os.path.join(args.project_dir, "tracking", "metrics.jsonl")
    if accelerator.is_main_process and os.path.exists(jsonl):
        with open(jsonl) as f:
            records = [json.loads(line) for line in f]
        print(f"{len(records)} records in {jsonl}; last: {records[-1]}")


if __name__ == "__main__":
    main()
