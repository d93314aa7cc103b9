"""Trackers, read back from what they wrote: jsonl, TensorBoard event files, the MLflow
store, W&B offline run files; plus "all", custom trackers, errors, get_logger and the
progress bar."""

from __future__ import annotations

import glob
import io
import json
import logging
import struct
import sys
import time

import pytest
import torch

from surge import Accelerator
from surge.tracking import GeneralTracker, resolve_log_with

CONFIG = {"lr": 1e-3, "optim": {"betas": [0.9, 0.95], "name": "adamw"}, "layers": 4}


def run(tmp_path, log_with, steps=3, **kwargs):
    acc = Accelerator(log_with=log_with, project_dir=str(tmp_path), **kwargs)
    acc.init_trackers("exp", config=CONFIG)
    for step in range(steps):
        acc.log({"loss": torch.tensor(2.0 - step * 0.5), "lr": 0.1 * (step + 1), "phase": f"p{step}"}, step=step)
    return acc


def test_jsonl(tmp_path):
    acc = run(tmp_path, "jsonl")
    acc.end_training()
    lines = [json.loads(line) for line in open(tmp_path / "logs" / "exp" / "metrics.jsonl")]
    assert [(r["step"], r["loss"], r["lr"], r["phase"]) for r in lines] == [
        (0, 2.0, 0.1, "p0"), (1, 1.5, 0.2, "p1"), (2, 1.0, pytest.approx(0.3), "p2")]
    assert json.loads((tmp_path / "logs" / "exp" / "config.json").read_text()) == CONFIG
    # A resumed run appends to the same file.
    run(tmp_path, "jsonl", steps=1).end_training()
    assert len(open(tmp_path / "logs" / "exp" / "metrics.jsonl").readlines()) == 4


def test_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = run(tmp_path, "tensorboard")
    writer = acc.get_tracker("tensorboard", unwrap=True)
    assert type(writer).__name__ == "SummaryWriter"
    acc.end_training()
    events = EventAccumulator(str(tmp_path / "logs" / "exp"), size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert [e.step for e in events.Scalars("lr")] == [0, 1, 2]
    assert "phase/text_summary" in events.Tags()["tensors"] and "config/text_summary" in events.Tags()["tensors"]


def test_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    acc = run(tmp_path, "mlflow")
    run_id = acc.get_tracker("mlflow", unwrap=True).info.run_id
    acc.end_training()
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    logged = client.get_run(run_id)
    assert logged.data.params["optim.name"] == "adamw" and logged.data.params["lr"] == "0.001"
    assert logged.data.tags["phase"] == "p2"
    assert client.get_experiment(logged.info.experiment_id).name == "exp"


def _wandb_records(path):
    """The records of a W&B offline run file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = open(path, "rb").read(), 32768, 7, b""  # 7: the ":W&B" file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # still being written
            return
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_SERVICE", "")  # wandb itself exports it; restored (removed) after the test
    monkeypatch.delenv("WANDB_SERVICE")
    run(tmp_path, "wandb").end_training()
    (path,) = glob.glob(str(tmp_path / "logs" / "wandb" / "offline-run-*" / "run-*.wandb"))
    # wandb's writer is its own service process: `finish()` can return before that process has
    # flushed the file (seen once in CI under load: no records yet). Wait for the exit record.
    deadline = time.monotonic() + 60
    while "exit" not in (kinds := [r.WhichOneof("record_type") for r in _wandb_records(path)]):
        assert time.monotonic() < deadline, f"no exit record in {path}: {kinds}"
        time.sleep(0.2)
    history, config, project = [], {}, None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.append((items["_step"], items["loss"], items["phase"]))
        elif kind == "config":
            config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            project = record.run.project
    assert project == "exp"
    assert history == [(0, 2.0, "p0"), (1, 1.5, "p1"), (2, 1.0, "p2")]
    assert config["optim"] == {"betas": [0.9, 0.95], "name": "adamw"} and config["lr"] == 1e-3


def test_all_uses_what_is_installed_and_says_which(tmp_path, monkeypatch, capsys):
    from surge import tracking

    monkeypatch.setattr(tracking, "is_available", lambda name: name in ("jsonl", "tensorboard"))
    acc = run(tmp_path, "all")
    assert [t.name for t in acc.trackers] == ["jsonl", "tensorboard"]
    assert "uses jsonl, tensorboard; not installed: wandb, mlflow" in capsys.readouterr().err
    acc.end_training()
    assert acc.trackers == []


class Recorder(GeneralTracker):
    name = "recorder"

    def __init__(self):
        super().__init__()
        self.calls = []

    def store_init_configuration(self, values):
        self.calls.append(("config", values))

    def log(self, values, step=None, **kwargs):
        self.calls.append(("log", step, values, kwargs))

    def finish(self):
        self.calls.append(("finish",))


def test_custom_tracker_objects_and_log_kwargs(tmp_path):
    recorder = Recorder()
    acc = Accelerator(log_with=[recorder, "jsonl"], project_dir=str(tmp_path))
    acc.init_trackers("exp", config={"a": 1})
    acc.log({"x": 1}, step=5, log_kwargs={"recorder": {"commit": False}})
    assert acc.get_tracker("recorder") is recorder and acc.get_tracker("recorder", unwrap=True) is recorder
    acc.end_training()
    assert recorder.calls == [("config", {"a": 1}), ("log", 5, {"x": 1}, {"commit": False}), ("finish",)]


def test_tracker_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'; use one of"):
        Accelerator(log_with="tensorbord")
    with pytest.raises(TypeError, match="neither a tracker name nor a GeneralTracker"):
        Accelerator(log_with=[3])
    with pytest.raises(ValueError, match="writes files but no logging dir is set; pass Accelerator\\(project_dir"):
        Accelerator(log_with="jsonl").init_trackers("exp")
    acc = Accelerator(log_with="jsonl", project_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"init_kwargs for \['wandb'\], which log_with does not use"):
        acc.init_trackers("exp", init_kwargs={"wandb": {}})
    with pytest.raises(ValueError, match="no tracker named 'wandb' was started"):
        acc.get_tracker("wandb")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        Accelerator(log_with="wandb", project_dir=str(tmp_path)).init_trackers("exp")
    assert resolve_log_with(["jsonl", "JSONL", "all"])[0][0] == "jsonl"


def test_log_without_trackers_is_a_no_op(tmp_path):
    assert Accelerator().trackers == []
    acc = Accelerator(log_with="jsonl", project_dir=tmp_path)
    acc.log({"loss": 1.0})  # nothing started yet: nothing happens, nothing is written
    assert acc.trackers == [] and list(tmp_path.iterdir()) == []
    acc.init_trackers("run")
    acc.log({"loss": 2.0}, step=1)
    acc.end_training()
    assert acc.trackers == []
    acc.log({"loss": 3.0}, step=2)  # after end_training: the finished trackers are not called
    acc.end_training()  # a second end is harmless
    lines = (tmp_path / "logs" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [2.0]


def as_rank_one(monkeypatch):
    """This process's environment, as the second process of a torchrun job sees it."""
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)


def test_get_logger_levels_and_main_process_only(caplog, monkeypatch):
    from surge.logging import get_logger

    logger = get_logger("surge.test", log_level="INFO")
    with caplog.at_level(logging.INFO, logger="surge.test"):
        logger.info("hello %s", "there")
        logger.debug("hidden")
        logger.info("everyone", main_process_only=False)
    assert [r.getMessage() for r in caplog.records] == ["hello there", "everyone"]
    as_rank_one(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="surge.test"):
        logger.info("main only")
        logger.warning("mine", main_process_only=False)
    assert [r.getMessage() for r in caplog.records] == ["[rank 1] mine"]
    with pytest.raises(ValueError, match="log_level='LOUD' is not a logging level"):
        get_logger("surge.test", log_level="LOUD")


def test_progress_bar_lines_when_not_a_terminal(monkeypatch):
    from surge.utils import tqdm

    out = io.StringIO()
    seen = list(tqdm(range(40), desc="train", file=out, min_interval=0))
    assert seen == list(range(40))
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and lines[0].startswith("train: 2/40 [") and lines[-1].startswith("train: 40/40 [")
    out = io.StringIO()
    with tqdm(total=10, desc="steps", file=out, initial=4, min_interval=3600) as bar:
        for _ in range(6):
            bar.update(1)
            bar.set_postfix(loss=1.23456)
    lines = out.getvalue().splitlines()  # the first crossing, then nothing within the hour, then the end
    assert len(lines) == 2 and lines[-1].startswith("steps: 10/10 [") and "loss=1.235" in lines[-1]
    as_rank_one(monkeypatch)
    out = io.StringIO()
    assert list(tqdm(range(5), file=out)) == list(range(5)) and out.getvalue() == ""  # not the main process
    assert list(tqdm(range(5), file=out, main_process_only=False)) == list(range(5)) and out.getvalue()
