"""A CIFAR-style classifier written for DeepSpeed (in the style of DeepSpeedExamples'
training/cifar), run on surge by changing only the import.

    surge launch --num_gpus 2 examples/deepspeed/cifar_style.py --deepspeed --deepspeed_config ds.json

The data are synthetic 3x32x32 images of 10 classes (no download). ``--save_dir`` writes a
checkpoint after every epoch; ``--resume`` continues from the newest one.
"""

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

import surge as deepspeed  # was: import deepspeed
from surge.accelerator import get_accelerator  # was: from deepspeed.accelerator import get_accelerator


def add_argument():
    parser = argparse.ArgumentParser(description="CIFAR-style")
    parser.add_argument("--local_rank", type=int, default=-1, help="local rank passed from distributed launcher")
    parser.add_argument("-e", "--epochs", default=2, type=int)
    parser.add_argument("--samples", default=256, type=int)
    parser.add_argument("--save_dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--losses", default=None, help="append each step's loss (rank 0) to this file")
    parser = deepspeed.add_config_arguments(parser)
    return parser.parse_args()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def synthetic_cifar(samples):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (samples,), generator=g)
    images = torch.randn(samples, 3, 32, 32, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) / 10
    return torch.utils.data.TensorDataset(images, labels)


def main():
    deepspeed.init_distributed()
    args = add_argument()
    torch.manual_seed(0)
    net = Net()
    trainset = synthetic_cifar(args.samples)
    parameters = filter(lambda p: p.requires_grad, net.parameters())
    model_engine, _optimizer, trainloader, _ = deepspeed.initialize(
        args=args, model=net, model_parameters=parameters, training_data=trainset)
    local_device = get_accelerator().device_name(model_engine.local_rank)
    bf16 = model_engine.bfloat16_enabled()
    start = 0
    if args.resume:
        _, client_state = model_engine.load_checkpoint(args.save_dir)
        start = client_state["epoch"] + 1
    criterion = nn.CrossEntropyLoss()
    for epoch in range(start, args.epochs):
        for data in trainloader:
            inputs, labels = data[0].to(local_device), data[1].to(local_device)
            if bf16:
                inputs = inputs.to(torch.bfloat16)
            loss = criterion(model_engine(inputs), labels)
            model_engine.backward(loss)
            model_engine.step()
            if args.losses and model_engine.global_rank == 0:
                with open(args.losses, "a") as f:
                    f.write(json.dumps({"step": model_engine.global_steps, "loss": loss.item()}) + "\n")
        if args.save_dir:
            model_engine.save_checkpoint(args.save_dir, client_state={"epoch": epoch})
    if model_engine.global_rank == 0:
        print(f"Finished Training: {model_engine.global_steps} steps, last loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
