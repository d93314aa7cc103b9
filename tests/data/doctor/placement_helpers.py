"""Mistake: batches moved by hand from loaders a helper built (known as loaders because they are looped over)."""

import torch
from accelerate import Accelerator


def get_dataloaders(batch_size: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    return (torch.utils.data.DataLoader(data, batch_size=batch_size),
            torch.utils.data.DataLoader(data, batch_size=batch_size))


def main() -> None:
    accelerator = Accelerator(mixed_precision="bf16")
    device = torch.device("cuda")
    model = build_model()  # noqa: F821  (the user's own)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_dataloader, eval_dataloader = get_dataloaders(16)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader)
    for batch in train_dataloader:
        batch = {k: v.to(device) for k, v in batch.items()}  # doctor: expect manual-device-placement
        accelerator.backward(model(**batch).loss)
        optimizer.step()
    model.eval()
    for step, (x, y) in enumerate(eval_dataloader):
        print(step, model(x.cuda()), y)  # doctor: expect manual-device-placement
