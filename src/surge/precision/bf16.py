"""bf16 mixed precision: autocast to bfloat16, fp32 master weights, no loss scaling
(bf16 has fp32's exponent range, so gradients do not underflow)."""

from __future__ import annotations

import torch

from surge.precision.base import Precision


class BF16(Precision):
    name = "bf16"
    autocast_dtype = torch.bfloat16
    sharded_param_dtype: torch.dtype | None = torch.bfloat16
    export_dtype: torch.dtype | None = torch.bfloat16
