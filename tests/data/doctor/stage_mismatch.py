"""Mistake: state saved under ZeRO-2, loaded under ZeRO-3."""

import torch

from surge import Accelerator
from surge.utils import DeepSpeedPlugin


def save() -> None:
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2))
    accelerator.prepare(torch.nn.Linear(4, 1))
    accelerator.save_state("ckpt")


def load() -> None:
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=3))  # doctor: expect zero-stage-mismatch
    accelerator.prepare(torch.nn.Linear(4, 1))
    accelerator.load_state("ckpt")
