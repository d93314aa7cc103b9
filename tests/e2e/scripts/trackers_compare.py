"""Experiment trackers under surge or HF Accelerate (``--lib``), on 2 processes: custom
``GeneralTracker`` objects, a class given to ``register_tracker_class``, and TensorBoard,
written to ``--project_dir``. Each rank writes ``--out/rank<N>.json``: the calls each
custom tracker got, what ``get_tracker`` / ``log_with`` / ``filter_trackers`` returned,
and (main process) the files under the project dir, paths relative to it, with
timestamps masked, plus what TensorBoard holds. tests/e2e/test_accelerate_trackers.py
runs it both ways and compares."""

import argparse
import json
import os
import re

from compare_exit import leave

parser = argparse.ArgumentParser()
parser.add_argument("--lib", choices=("surge", "accelerate"), required=True)
parser.add_argument("--project_dir", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
if args.lib == "surge":
    from surge import Accelerator
    from surge.tracking import GeneralTracker, filter_trackers, on_main_process, register_tracker_class
    from surge.utils import LoggerType, ProjectConfiguration
else:
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker, filter_trackers, on_main_process, register_tracker_class
    from accelerate.utils import LoggerType, ProjectConfiguration

RANK = int(os.environ["RANK"])


def rel(path):
    return os.path.relpath(path, args.project_dir) if path is not None else None


class Recorder(GeneralTracker):
    """A custom tracker as Accelerate's docs write one: every call recorded."""

    name = "recorder"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.calls = [["init"]]

    @on_main_process
    def start(self):
        self.calls.append(["start"])

    @property
    def tracker(self):
        return self

    @on_main_process
    def store_init_configuration(self, values):
        self.calls.append(["config", values])

    @on_main_process
    def log(self, values, step=None, **kwargs):
        self.calls.append(["log", values, step, kwargs])

    @on_main_process
    def note(self, text):
        """Not called by the Accelerator: the script calls it on every process."""
        self.calls.append(["note", text])

    @on_main_process
    def finish(self):
        self.calls.append(["finish"])


class EveryRank(Recorder):
    name = "every_rank"
    main_process_only = False


class Registered(Recorder):
    """Named in log_with by its name; the Accelerator constructs it."""

    name = "registered"
    requires_logging_directory = True
    made = []  # noqa: RUF012  (the instances the Accelerator made, in order)

    def __init__(self, run_name, logging_dir, **kwargs):
        super().__init__()
        self.calls[0] = ["init", run_name, rel(logging_dir), kwargs]
        Registered.made.append(self)


register_tracker_class(Registered)
recorder, every_rank = Recorder(), EveryRank()
project = ProjectConfiguration(project_dir=args.project_dir)
result = {"config_logging_dir": rel(project.logging_dir)}
accelerator = Accelerator(cpu=True, project_dir=args.project_dir,
                          log_with=[recorder, every_rank, LoggerType.TENSORBOARD, "tensorboard", "registered"])
logging_dir = accelerator.logging_dir
result["logging_dir"] = rel(logging_dir)
result["log_with"] = [t.name if isinstance(t, GeneralTracker) else str(t) for t in accelerator.log_with]
result["filter"] = [str(t) for t in filter_trackers(["tensorboard", LoggerType.TENSORBOARD], "somewhere")]
result["names"] = [str(LoggerType.TENSORBOARD), "comet_ml" in LoggerType, "nope" in LoggerType]
result["blank_before_init"] = type(accelerator.get_tracker("recorder")).__name__
accelerator.init_trackers("run", config={"lr": 0.1, "layers": 2, "name": "tiny"},
                          init_kwargs={"registered": {"flavour": "x"}, "tensorboard": {"flush_secs": 30},
                                       "wandb": {"entity": "unused"}})
for step in range(2):
    accelerator.log({"loss": 1.5 - step, "phase": f"p{step}"}, step=step, log_kwargs={"recorder": {"extra": step}})
recorder.note("direct")
every_rank.note("direct")
got = accelerator.get_tracker("recorder")
result["get_tracker"] = [type(got).__name__, got is recorder,
                         type(accelerator.get_tracker("tensorboard", unwrap=True)).__name__]
if RANK == 0:
    try:
        accelerator.get_tracker("missing")
        result["get_missing"] = "returned"
    except ValueError:
        result["get_missing"] = "ValueError"
accelerator.end_training()
result["calls"] = {"recorder": recorder.calls, "every_rank": every_rank.calls,
                   "registered": [t.calls for t in Registered.made]}
if RANK == 0:
    files, hparams = set(), {}
    for root, _, names in os.walk(args.project_dir):
        for name in names:
            path = rel(os.path.join(root, name))
            if name == "hparams.yml":
                with open(os.path.join(root, name)) as f:
                    hparams = f.read()
            path = re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", path)
            files.add(re.sub(r"(^|/)\d+\.\d+(/|$)", r"\1<time>\2", path))
    result["files"], result["hparams.yml"] = sorted(files), hparams
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(logging_dir, "run"))
    events.Reload()
    result["scalars"] = {tag: [[e.step, e.value] for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"rank{RANK}.json"), "w") as f:
    json.dump(result, f)
del accelerator
leave()  # compare_exit.py: why the script ends this way
