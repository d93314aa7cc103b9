"""Right, though it looks close to mistakes (no findings)."""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator


def plain_torch() -> None:
    """No Accelerator in reach here: plain torch code may move and step as it likes."""
    model = nn.Linear(4, 1).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1))):
        loss = nn.functional.mse_loss(model(x.cuda()), y.cuda())
        loss.backward()
        optimizer.step()


def manual_placement(data: TensorDataset) -> None:
    accelerator = Accelerator(device_placement=False, mixed_precision="fp16")
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data))
    model.to(accelerator.device)
    for x, y in loader:
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        accelerator.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()


def per_object_placement(data: TensorDataset, flag: bool) -> None:
    accelerator = Accelerator(mixed_precision="bf16")
    model = nn.Linear(4, 1)
    loader = DataLoader(data)
    loader = accelerator.prepare(loader, device_placement=[False])
    if flag:
        model = accelerator.prepare(model)
    else:
        model = accelerator.prepare_model(model, device_placement=False)
    for x, y in loader:
        x = x.to("cuda")  # this loader was prepared without placement
        model.cuda()  # model's placement differs by branch: not sure, not reported
        accelerator.backward(nn.functional.mse_loss(model(x), y))


def scaled(accelerator: Accelerator, model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    # arguments: the checker does not know what they hold
    batch = {k: v.cuda() for k, v in batch.items()}
    model.cuda()
    loss = model(**batch).loss
    loss.backward()
    if accelerator.is_main_process:
        accelerator.print("a print is not a collective")
        accelerator.save(accelerator.unwrap_model(model).state_dict(), "model.pt")


def setup() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    home = os.environ.get("HOME", ".")
    print(home, os.environ["PATH"])


def two_accelerators(model: nn.Module, data: TensorDataset) -> None:
    """Accumulation is set on an Accelerator that never steps; the one that steps has none."""
    stepping = Accelerator(mixed_precision="bf16")
    Accelerator(gradient_accumulation_steps=4, mixed_precision="bf16")
    model, loader = stepping.prepare(model, DataLoader(data))
    for x, y in loader:
        stepping.backward(nn.functional.mse_loss(model(x), y))


def reference_then_accelerator(data: TensorDataset) -> None:
    """A plain-torch reference run before the Accelerator exists, on its own model, loader and optimizer."""
    reference = nn.Linear(4, 1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in DataLoader(data):
        nn.functional.mse_loss(reference(x), y).backward()
        reference_optimizer.step()
    accelerator = Accelerator(mixed_precision="bf16")
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data))
    reference = nn.Linear(4, 1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in loader:
        accelerator.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        reference_optimizer.step()  # another model's optimizer: not one left out


global_model = nn.Linear(4, 1)


def warm_up() -> None:
    global_model.cuda()  # may run before the prepare below: not reported


warm_up()
global_accelerator = Accelerator(mixed_precision="bf16")
global_model = global_accelerator.prepare(global_model)
