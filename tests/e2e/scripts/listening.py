"""Prints every TCP address the launcher and its workers listen on, once the job's
process group (and, with --ddp, DDP) is up."""

import json
import os

import psutil
import torch

from surge import Accelerator

acc = Accelerator()
acc.prepare(torch.nn.Linear(2, 2))
acc.wait_for_everyone()
if acc.is_main_process:
    launcher = psutil.Process(os.getppid())
    listening = set()
    for proc in [launcher, *launcher.children(recursive=True)]:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                listening.add(conn.laddr.ip)
    print("listening=" + json.dumps(sorted(listening)), flush=True)
acc.wait_for_everyone()
