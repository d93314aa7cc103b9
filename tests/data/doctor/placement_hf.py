"""Mistake: a Hugging Face style loop moving its batches by hand."""

from accelerate import Accelerator
from torch.optim import AdamW
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification

accelerator = Accelerator(mixed_precision="bf16")
model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")
optimizer = AdamW(model.parameters(), lr=3e-5)
train_dataloader = DataLoader(list(range(8)), batch_size=2)
model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
model.train()
for batch in train_dataloader:
    optimizer.zero_grad()
    outputs = model(batch["input_ids"].cuda())  # doctor: expect manual-device-placement
    accelerator.backward(outputs.loss)
    optimizer.step()
