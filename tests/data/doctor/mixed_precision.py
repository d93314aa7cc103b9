"""Advice: a CUDA script whose Accelerator and config say nothing about mixed precision."""
# doctor: config plain.yaml

import torch

from surge import Accelerator

accelerator = Accelerator()  # doctor: expect no-mixed-precision
mask = torch.ones(3, device="cuda")
