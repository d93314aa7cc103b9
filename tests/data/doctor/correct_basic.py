"""Right: the Accelerator used as meant (no findings)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from surge import Accelerator


def main() -> None:
    accelerator = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=2)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    train = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=2)
    model, optimizer, train, scheduler = accelerator.prepare(model, optimizer, train, scheduler)
    for epoch in range(2):
        for step, (x, y) in enumerate(train):
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y.to(torch.bfloat16).float())
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.is_main_process and step % 10 == 0:
                accelerator.print(f"epoch {epoch} step {step}: {loss.item():.3f}")
    accelerator.wait_for_everyone()
    accelerator.save_state("ckpt")
    accelerator.save_model(model, "out")
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        torch.save(state, "model.pt")
        torch.save(accelerator.unwrap_model(model).state_dict(), "model2.pt")


if __name__ == "__main__":
    main()
