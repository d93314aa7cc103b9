"""Trackers, read back from what they wrote: jsonl, TensorBoard event files, the MLflow
store, W&B offline run files; plus "all", custom trackers, errors, get_logger and the
progress bar."""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import struct
import sys
import time

import pytest
import torch

from surge import Accelerator
from surge.tracking import (
    CometMLTracker,
    GeneralTracker,
    LoggerType,
    MLflowTracker,
    TensorBoardTracker,
    WandBTracker,
    filter_trackers,
    get_available_trackers,
    on_main_process,
    register_tracker_class,
    resolve_log_with,
)
from surge.utils import ProjectConfiguration

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
    lines = [json.loads(line) for line in open(tmp_path / "exp" / "metrics.jsonl")]
    assert [(r["step"], r["loss"], r["lr"], r["phase"]) for r in lines] == [
        (0, 2.0, 0.1, "p0"), (1, 1.5, 0.2, "p1"), (2, 1.0, pytest.approx(0.3), "p2")]
    assert json.loads((tmp_path / "exp" / "config.json").read_text()) == CONFIG
    # A resumed run appends to the same file.
    run(tmp_path, "jsonl", steps=1).end_training()
    assert len(open(tmp_path / "exp" / "metrics.jsonl").readlines()) == 4


def test_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = run(tmp_path, "tensorboard")
    writer = acc.get_tracker("tensorboard", unwrap=True)
    assert type(writer).__name__ == "SummaryWriter"
    acc.end_training()
    events = EventAccumulator(str(tmp_path / "exp"), size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    assert [e.step for e in events.Scalars("lr")] == [0, 1, 2]
    assert "phase/text_summary" in events.Tags()["tensors"] and "config/text_summary" in events.Tags()["tensors"]


def test_trackers_write_under_project_dir_as_in_accelerate(tmp_path):
    """logging_dir is project_dir itself, as in Accelerate (it was project_dir/logs): the
    run's files are project_dir/<project>/..., the configuration in one time-named sub-run."""
    import yaml

    assert ProjectConfiguration(project_dir="runs/x").logging_dir == "runs/x"
    assert ProjectConfiguration(project_dir="runs/x", logging_dir="tb").logging_dir == "tb"
    later = ProjectConfiguration(logging_dir="tb")
    later.set_directories("a")  # a logging dir set separately stays
    assert (later.project_dir, later.logging_dir) == ("a", "tb")
    moved = ProjectConfiguration("a")
    moved.set_directories("b")  # one that followed the project keeps following it
    assert moved.logging_dir == "b"
    acc = run(tmp_path, ["tensorboard", "jsonl"], steps=1)
    assert acc.logging_dir == str(tmp_path)
    image = torch.rand(2, 3, 4, 4)
    acc.get_tracker("tensorboard").log_images({"samples": image}, step=0)
    acc.end_training()
    top = sorted(os.listdir(tmp_path / "exp"))
    (sub_run,) = [name for name in top if (tmp_path / "exp" / name).is_dir()]
    float(sub_run)  # a timestamp, as add_hparams names it
    assert [n for n in top if n != sub_run and not n.startswith("events.out.tfevents.")] == ["config.json",
                                                                                            "metrics.jsonl"]
    inside = sorted(os.listdir(tmp_path / "exp" / sub_run))
    assert inside[0].startswith("events.out.tfevents.") and inside[1:] == ["hparams.yml"]
    assert yaml.safe_load((tmp_path / "exp" / sub_run / "hparams.yml").read_text()) == CONFIG
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "exp"))
    events.Reload()
    assert events.Tags()["images"] == ["samples"] and [e.step for e in events.Images("samples")] == [0]


def test_mlflow(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default store, as under Accelerate: ./mlflow.db
    acc = run(tmp_path, "mlflow")
    run_id = acc.get_tracker("mlflow", unwrap=True).info.run_id
    assert mlflow.active_run().info.run_id == run_id  # the script's own mlflow.* calls land in the run
    acc.end_training()
    assert mlflow.active_run() is None
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 2.0), (1, 1.5), (2, 1.0)]
    logged = client.get_run(run_id)
    assert logged.data.params["optim.name"] == "adamw" and logged.data.params["lr"] == "0.001"
    assert logged.data.tags["phase"] == "p2"
    assert client.get_experiment(logged.info.experiment_id).name == "exp"
    # Accelerate's arguments through init_kwargs; its environment variables win over them.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    monkeypatch.setenv("MLFLOW_TAGS", '{"team": "nlp"}')
    acc = Accelerator(log_with="mlflow", project_dir=str(tmp_path))
    acc.init_trackers("exp", init_kwargs={"mlflow": {"run_name": "r1", "tags": {"team": "cv"}, "description": "d",
                                                     "logging_dir": str(tmp_path / "artifacts")}})
    run_id = acc.get_tracker("mlflow").tracker.info.run_id
    acc.end_training()
    logged = client.get_run(run_id)
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == "from_env" and experiment.artifact_location.endswith("artifacts")
    assert logged.info.run_name == "r1" and logged.data.tags["team"] == "nlp"
    monkeypatch.setenv("MLFLOW_NESTED_RUN", "maybe")
    with pytest.raises(ValueError, match="MLFLOW_NESTED_RUN='maybe' is not a yes/no value"):
        MLflowTracker("exp")


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
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # wandb's own default, as under Accelerate: ./wandb
    run(tmp_path, "wandb").end_training()
    (path,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
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
    from surge.tracking import catalog

    monkeypatch.setattr(catalog, "is_available", lambda name: name in ("jsonl", "tensorboard"))
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
    with pytest.raises(ValueError, match=r"unknown tracker 'tensorbord'; use \['jsonl', 'mlflow', 'tensorboard'"):
        Accelerator(log_with="tensorbord")
    with pytest.raises(TypeError, match="neither a tracker name nor a GeneralTracker"):
        Accelerator(log_with=[3])
    with pytest.raises(ValueError, match="writes files but no logging dir is set; pass Accelerator\\(project_dir"):
        Accelerator(log_with="jsonl").init_trackers("exp")
    acc = Accelerator(log_with="jsonl", project_dir=str(tmp_path))
    acc.init_trackers("exp", init_kwargs={"wandb": {"entity": "me"}})  # not in use: ignored, as in Accelerate
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
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [2.0]


class Lifecycle(GeneralTracker):
    requires_logging_directory = False

    def __init__(self, name, journal):
        super().__init__()
        self.name, self.journal = name, journal

    def start(self):
        self.journal.append((self.name, "start"))

    def store_init_configuration(self, values):
        self.journal.append((self.name, "config"))


def test_init_trackers_starts_every_tracker_then_stores_the_config(tmp_path):
    """As Accelerate: construct, start() each (it was never called), then configure each."""
    journal = []
    tb = TensorBoardTracker("mine", tmp_path)  # Accelerate's signature; opens nothing until started
    assert not (tmp_path / "mine").exists()
    acc = Accelerator(log_with=[Lifecycle("a", journal), Lifecycle("b", journal), tb])
    acc.init_trackers("exp", config={"x": 1})
    assert journal == [("a", "start"), ("b", "start"), ("a", "config"), ("b", "config")]
    assert acc.get_tracker("tensorboard") is tb and (tmp_path / "mine").is_dir()
    acc.end_training()


def test_get_tracker_before_init_trackers_is_blank():
    """As Accelerate: with no tracker started, get_tracker returns a blank tracker (it raised)."""
    blank = Accelerator().get_tracker("tensorboard", unwrap=True)
    assert type(blank) is GeneralTracker and repr(blank).endswith(", blank)")
    blank.log({"x": 1})  # does nothing


def test_on_main_process_follows_main_process_only(monkeypatch):
    class Mine(GeneralTracker):
        def __init__(self):
            super().__init__()
            self.seen = []

        @on_main_process
        def log(self, values, step=None, **kwargs):
            self.seen.append(values)
            return "ran"

    class Everywhere(Mine):
        main_process_only = False

    mine, everywhere = Mine(), Everywhere()
    assert mine.log({"a": 1}) == "ran"
    assert mine.log.__name__ == "log"
    as_rank_one(monkeypatch)
    assert mine.log({"b": 2}) is None and everywhere.log({"c": 3}) == "ran"
    assert mine.seen == [{"a": 1}] and everywhere.seen == [{"c": 3}]
    assert GeneralTracker.main_process_only is True and WandBTracker.main_process_only is False


def test_log_with_takes_logger_types_and_filter_trackers(tmp_path):
    from surge.utils import LoggerType as FromUtils

    assert FromUtils is LoggerType and str(LoggerType.TENSORBOARD) == "tensorboard"
    assert "comet_ml" in LoggerType and LoggerType.WANDB in LoggerType and "nope" not in LoggerType
    assert {"all", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "jsonl"} <= set(LoggerType.list())
    recorder = Recorder()
    acc = Accelerator(log_with=[LoggerType.TENSORBOARD, "tensorboard", recorder, LoggerType.JSONL],
                      project_dir=tmp_path)
    assert acc.log_with == [LoggerType.TENSORBOARD, recorder, LoggerType.JSONL]  # a repeat counts once
    assert filter_trackers([LoggerType.ALL, recorder], "logs") == [recorder, *get_available_trackers()]
    assert LoggerType.JSONL in get_available_trackers()
    with pytest.raises(ValueError, match="the tensorboard tracker writes files but no logging dir is set"):
        filter_trackers(["tensorboard"])


def test_trackers_surge_does_not_have():
    with pytest.raises(ValueError, match=r"log_with='comet_ml': surge has no comet_ml integration; use \['jsonl'"):
        Accelerator(log_with="comet_ml")
    with pytest.raises(ValueError, match="surge has no aim integration"):
        Accelerator(log_with=[LoggerType.AIM])
    assert {str(t) for t in filter_trackers("all", "logs")} <= {"jsonl", "tensorboard", "wandb", "mlflow"}
    with pytest.raises(NotImplementedError, match=r"CometMLTracker: surge has no comet_ml integration\. surge's "):
        CometMLTracker("run")


def test_register_tracker_class(tmp_path, monkeypatch):
    from surge.tracking import catalog

    monkeypatch.setattr(catalog, "LOGGER_TYPE_TO_CLASS", dict(catalog.LOGGER_TYPE_TO_CLASS))
    monkeypatch.setattr(catalog, "_registered", set())
    made = []

    class Files(GeneralTracker):
        name = "files_tracker"
        requires_logging_directory = True

        def __init__(self, run_name, logging_dir, **kwargs):
            super().__init__()
            made.append((run_name, logging_dir, kwargs))

    class NoDir(GeneralTracker):
        name = "nodir_tracker"
        requires_logging_directory = False

        def __init__(self, run_name, **kwargs):
            super().__init__()
            made.append((run_name, kwargs))

    register_tracker_class(Files)
    register_tracker_class(NoDir)
    acc = Accelerator(log_with=["files_tracker", "nodir_tracker"], project_dir=tmp_path)
    assert acc.log_with == ["files_tracker", "nodir_tracker"]
    acc.init_trackers("exp", init_kwargs={"files_tracker": {"k": 1}})
    assert made == [("exp", str(tmp_path), {"k": 1}), ("exp", {})]
    assert type(acc.get_tracker("files_tracker")) is Files
    with pytest.warns(UserWarning, match="replaces the tracker already registered as 'files_tracker'"):
        register_tracker_class(Files)
    with pytest.raises(ValueError, match="pass a subclass of GeneralTracker"):
        register_tracker_class(int)

    class Nameless(GeneralTracker):
        pass

    with pytest.raises(ValueError, match="set a non-empty class attribute `name`"):
        register_tracker_class(Nameless)


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
