"""Right: a DeepSpeed-style engine script (engine.backward, its own loader)."""

import os

import torch

import surge

model = torch.nn.Linear(4, 1)
engine, optimizer, loader, _ = surge.initialize(model=model, model_parameters=model.parameters(),
                                                training_data=torch.utils.data.TensorDataset(torch.randn(8, 4)),
                                                config={"train_batch_size": 8})
local_rank = int(os.environ.get("LOCAL_RANK", "0"))
for (x,) in loader:
    loss = engine(x.to(engine.device)).sum()
    engine.backward(loss)
    engine.step()
