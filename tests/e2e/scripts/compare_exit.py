"""How the differential scripts (*_compare.py) end.

HF Accelerate starts the process group itself and leaves it (and DDP's reducers) to
interpreter finalisation, where gloo's threads can abort the process (SIGABRT) after the
script is done. The scripts compare numbers, not how either library exits: tear down while
Python is alive, then leave without finalisation."""

import gc
import os
import sys

import torch.distributed as dist


def leave() -> None:
    """Tear down the process group and exit 0 without interpreter finalisation (drop the
    caller's references to the Accelerator and prepared objects first)."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
