"""A two-model GAN written for DeepSpeed (in the style of DeepSpeedExamples'
training/gan): a generator and a discriminator, each its own engine, run on surge by
changing only the import.

    surge launch --num_gpus 2 examples/deepspeed/gan_style.py --deepspeed --deepspeed_config ds_gan.json
"""

import argparse
import json
import os

import torch
from torch import nn

import surge as deepspeed  # was: import deepspeed

NOISE, FEATURES = 8, 16


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save_every", type=int, default=6)
    parser.add_argument("--save_dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--losses", default=None)
    parser = deepspeed.add_config_arguments(parser)
    args = parser.parse_args()
    deepspeed.init_distributed()
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(NOISE, 32), nn.ReLU(), nn.Linear(32, FEATURES))
    discriminator = nn.Sequential(nn.Linear(FEATURES, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    gen, _, _, _ = deepspeed.initialize(args=args, model=generator, model_parameters=generator.parameters())
    disc, _, _, _ = deepspeed.initialize(args=args, model=discriminator, model_parameters=discriminator.parameters())
    criterion = nn.BCEWithLogitsLoss()
    batch = gen.train_micro_batch_size_per_gpu()
    start = 0
    if args.resume:
        _, state = gen.load_checkpoint(os.path.join(args.save_dir, "generator"))
        disc.load_checkpoint(os.path.join(args.save_dir, "discriminator"))
        start = state["step"]
    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(1000 * step + gen.global_rank)  # this rank's batch of this step
        real = torch.randn(batch, FEATURES, generator=g) * 0.5 + 1.0
        noise = torch.randn(batch, NOISE, generator=g)
        fake = gen(noise.to(gen.device))
        d_loss = criterion(disc(real.to(disc.device)), torch.ones(batch, 1)) + \
            criterion(disc(fake.detach()), torch.zeros(batch, 1))
        disc.backward(d_loss)
        disc.step()
        g_loss = criterion(disc(fake), torch.ones(batch, 1))
        gen.backward(g_loss)
        gen.step()
        disc.zero_grad()  # the generator's step put gradients into the discriminator too
        if args.losses and gen.global_rank == 0:
            with open(args.losses, "a") as f:
                f.write(json.dumps({"step": step + 1, "d": d_loss.item(), "g": g_loss.item()}) + "\n")
        if args.save_dir and (step + 1) % args.save_every == 0:
            gen.save_checkpoint(os.path.join(args.save_dir, "generator"), client_state={"step": step + 1})
            disc.save_checkpoint(os.path.join(args.save_dir, "discriminator"))
    if gen.global_rank == 0:
        print(f"done: {args.steps} steps, d {d_loss.item():.4f}, g {g_loss.item():.4f}")


if __name__ == "__main__":
    main()
