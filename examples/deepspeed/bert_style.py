"""A BERT-style masked-language model written for DeepSpeed (in the style of
DeepSpeedExamples' bing_bert), run on surge by changing only the import.

Its pooler is never used by the loss (as in BERT pre-training without the next-sentence
task): a parameter without a gradient, which ZeRO stages must tolerate at every step and
in checkpoints.

    surge launch --num_gpus 2 examples/deepspeed/bert_style.py --deepspeed --deepspeed_config ds_bert.json
"""

import argparse
import json

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import surge as deepspeed  # was: import deepspeed

VOCAB, HIDDEN, LENGTH, MASK = 64, 32, 16, 0


class TinyBert(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Parameter(torch.randn(LENGTH, HIDDEN) * 0.02)
        layer = nn.TransformerEncoderLayer(HIDDEN, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.pooler = nn.Linear(HIDDEN, HIDDEN)  # unused by the MLM loss
        self.mlm_head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens, labels):
        hidden = self.encoder(self.embeddings(tokens) + self.position)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))  # computed, as BERT does, but not in the loss
        logits = self.mlm_head(hidden)
        loss = nn.functional.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        return loss, pooled


def corpus(samples):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, VOCAB, (samples, LENGTH), generator=g)
    masked = torch.rand(samples, LENGTH, generator=g) < 0.15
    labels = torch.where(masked, tokens, torch.full_like(tokens, -100))
    return TensorDataset(torch.where(masked, torch.full_like(tokens, MASK), tokens), labels)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--save_dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--losses", default=None)
    parser = deepspeed.add_config_arguments(parser)
    args = parser.parse_args()
    deepspeed.init_distributed()
    torch.manual_seed(0)
    model = TinyBert()
    engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
    dataset = corpus(128)
    sampler = DistributedSampler(dataset, num_replicas=engine.world_size, rank=engine.global_rank, seed=0)
    loader = DataLoader(dataset, batch_size=engine.train_micro_batch_size_per_gpu(), sampler=sampler)
    start = 0
    if args.resume:
        _, client_state = engine.load_checkpoint(args.save_dir)
        start = client_state["epoch"] + 1
    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        for tokens, labels in loader:
            loss, _ = engine(tokens.to(engine.device), labels.to(engine.device))
            engine.backward(loss)
            engine.step()
            if args.losses and engine.global_rank == 0 and engine.is_gradient_accumulation_boundary():
                with open(args.losses, "a") as f:
                    f.write(json.dumps({"step": engine.global_steps, "loss": loss.item()}) + "\n")
        if args.save_dir:
            engine.save_checkpoint(args.save_dir, client_state={"epoch": epoch})
    if engine.global_rank == 0:
        print(f"done: {engine.global_steps} steps, loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
