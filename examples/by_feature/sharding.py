"""ZeRO and FSDP: shard optimizer state, gradients and parameters across processes, with
optional CPU offload and activation checkpointing. No DeepSpeed installation needed:
it runs on PyTorch's FSDP2.

    surge launch --num_processes 2 examples/by_feature/sharding.py --zero_stage 3
    surge launch --num_processes 2 examples/by_feature/sharding.py --zero_stage 2 --offload_optimizer
    surge launch --num_processes 2 examples/by_feature/sharding.py --fsdp FULL_SHARD --activation_checkpointing

The same script with no flag runs DDP; the printed per-process memory shows the saving.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin
from surge.memory import measured_model_state_bytes
from surge.utils import set_seed


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ff = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ff(x)


class Net(nn.Module):
    def __init__(self, width: int = 128, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))  # each block is sharded on its own
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zero_stage", type=int, choices=[0, 1, 2, 3], default=None)
    p.add_argument("--offload_optimizer", action="store_true", help="optimizer state and step on the CPU")
    p.add_argument("--offload_params", action="store_true", help="parameters on the CPU too (ZeRO-3)")
    p.add_argument("--fsdp", choices=["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"], default=None)
    p.add_argument("--activation_checkpointing", action="store_true")
    p.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="a few seconds (CI)")
    args = p.parse_args()

    deepspeed_plugin = fsdp_plugin = None
    if args.zero_stage is not None:
        deepspeed_plugin = DeepSpeedPlugin(
            zero_stage=args.zero_stage,
            offload_optimizer_device="cpu" if args.offload_optimizer else "none",
            offload_param_device="cpu" if args.offload_params else "none",
        )
    elif args.fsdp is not None:
        fsdp_plugin = FullyShardedDataParallelPlugin(sharding_strategy=args.fsdp,
                                                     activation_checkpointing=args.activation_checkpointing)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, deepspeed_plugin=deepspeed_plugin,
                              fsdp_plugin=fsdp_plugin)
    set_seed(0)
    x = torch.randn(1024, 128)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True).sin())
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=32, shuffle=True))

    steps = 5 if args.smoke else args.steps
    step, first = 0, None
    while step < steps:
        for inputs, targets in loader:
            loss = nn.functional.mse_loss(model(inputs).float(), targets)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            first = loss.item() if first is None else first
            step += 1
            if step == steps:
                break
    memory = measured_model_state_bytes(accelerator.unwrap_model(model), optimizer)
    accelerator.print(f"{accelerator.strategy.name} on {accelerator.num_processes} processes: loss {first:.4f} -> "
                      f"{loss.item():.4f}")
    accelerator.print(f"model states on process 0: {memory['total'] / 1e6:.2f} MB "
                      f"(params {memory['params'] / 1e6:.2f}, grads {memory['grads'] / 1e6:.2f}, "
                      f"optimizer {memory['optimizer'] / 1e6:.2f})")
    accelerator.save_model(model, "runs/sharding/model")  # full safetensors, gathered from the shards


if __name__ == "__main__":
    main()
