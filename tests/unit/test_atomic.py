"""Files written aside and renamed into place get the mode the user's umask gives, like
every other file of a checkpoint or export (safetensors creates its files 0600)."""

import os
import stat

import torch
from torch import nn

from surge import Accelerator, ProjectConfiguration
from surge.checkpoint.atomic import atomic_write, write_text


def modes(root):
    found = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def test_saved_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        want = 0o640
        acc = Accelerator(project_config=ProjectConfiguration(project_dir=str(tmp_path / "run"),
                                                              automatic_checkpoint_naming=True))
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = acc.prepare(model, opt)
        acc.save_model(model, tmp_path / "export")
        acc.save_state()
        acc.save({"w": torch.zeros(2)}, tmp_path / "one" / "w.safetensors", safe_serialization=True)
        write_text(tmp_path / "one" / "latest", "tag")
        atomic_write(tmp_path / "one" / "raw.bin", lambda tmp: open(tmp, "wb").close())
        found = {**modes(tmp_path / "export"), **modes(tmp_path / "run"), **modes(tmp_path / "one")}
        assert {"model.safetensors", "w.safetensors", "latest", "raw.bin",
                os.path.join("checkpoints", "checkpoint_0", "model_0.safetensors")} <= set(found)
        assert {name: mode for name, mode in found.items() if mode != want} == {}
    finally:
        os.umask(old)
