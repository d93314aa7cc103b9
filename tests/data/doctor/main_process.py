"""Mistake: collectives called by the main process only."""

import torch
import torch.distributed as dist

from surge import Accelerator

accelerator = Accelerator()
model = accelerator.prepare(torch.nn.Linear(4, 1))
if accelerator.is_main_process:
    accelerator.save_state("ckpt")  # doctor: expect collective-on-main-process
    print("saved")
if accelerator.process_index == 0 and model is not None:
    accelerator.wait_for_everyone()  # doctor: expect collective-on-main-process
if accelerator.is_local_main_process:
    dist.barrier()  # doctor: expect collective-on-main-process
else:
    state = accelerator.get_state_dict(model)  # doctor: expect collective-on-main-process


@accelerator.on_main_process
def export() -> None:
    accelerator.save_model(model, "out")  # doctor: expect collective-on-main-process


accelerator.wait_for_everyone()  # every process: right
state = accelerator.get_state_dict(model)
if accelerator.is_main_process:
    torch.save(state, "model.pt")  # right: the state was gathered by every process
if accelerator.is_main_process:
    payload = [state]
    dist.broadcast_object_list(payload, src=0)  # both sides of the check call it: the broadcast pattern
else:
    payload = [None]
    dist.broadcast_object_list(payload, src=0)


def save_on_main() -> None:
    if not accelerator.is_main_process:
        return
    accelerator.save_state("ckpt")  # doctor: expect collective-on-main-process


def matched() -> None:
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    print("main")
    accelerator.wait_for_everyone()  # the other processes wait above: matched
