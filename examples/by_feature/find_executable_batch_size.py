"""Find the largest batch that fits: start big, halve on out-of-memory, retry.

    python examples/by_feature/find_executable_batch_size.py --starting_batch_size 512

On a GPU the out-of-memory errors are real. A CPU rarely runs out, so
``--simulated_memory`` (samples that "fit") raises the same error a GPU would, to show
the retry on any machine.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator
from surge.utils import find_executable_batch_size, set_seed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starting_batch_size", type=int, default=512)
    p.add_argument("--simulated_memory", type=int, default=100, help="0: only real out-of-memory errors")
    p.add_argument("--smoke", action="store_true", help="a few seconds (CI)")
    args = p.parse_args()

    accelerator = Accelerator()
    set_seed(0)
    x = torch.randn(2048, 16)
    data = TensorDataset(x, x @ torch.randn(16, 1))

    @find_executable_batch_size(starting_batch_size=args.starting_batch_size)
    def train(batch_size: int) -> float:
        # Everything sized by the batch is built inside, so each attempt starts clean.
        accelerator.free_memory()
        accelerator.print(f"trying batch size {batch_size}")
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        for inputs, targets in loader:
            if args.simulated_memory and inputs.shape[0] > args.simulated_memory:
                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {inputs.shape[0]} samples > "
                                             f"{args.simulated_memory})")
            loss = nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        accelerator.print(f"batch size {batch_size} fits: one epoch done, loss {loss.item():.4f}")
        return batch_size

    train()


if __name__ == "__main__":
    main()
