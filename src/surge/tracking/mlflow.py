"""MLflow, as Accelerate drives it: the fluent API (``mlflow.start_run``), so the run is
the process's active run and ``mlflow.log_artifact(...)`` in the script lands in it. It
writes where MLflow's settings say: ``MLFLOW_TRACKING_URI``, else MLflow's default (a
SQLite store ``./mlflow.db``; ``mlflow ui`` shows it). Artifacts go to
``init_kwargs={"mlflow": {"logging_dir": ...}}`` when given, else MLflow's default."""

from __future__ import annotations

import json
import os
from typing import Any

from surge.tracking.base import GeneralTracker, flatten, on_main_process, scalar

INSTALL = "pip install mlflow  (or: pip install 'surge[mlflow]')"
_MAX_PARAM = 6000  # MLflow's limit on a parameter's value length
_BATCH = 100  # MLflow takes at most 100 parameters per call
_TRUE, _FALSE = ("y", "yes", "t", "true", "on", "1"), ("n", "no", "f", "false", "off", "0")


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"{name}={value!r} is not a yes/no value; use one of {_TRUE + _FALSE}.")


class MLflowTracker(GeneralTracker):
    """Accelerate's ``MLflowTracker(experiment_name, logging_dir, run_id, tags, nested_run,
    run_name, description)``; ``init_trackers`` passes the project name as
    ``experiment_name``. ``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_RUN_ID``, ``MLFLOW_TAGS``
    (JSON) and ``MLFLOW_NESTED_RUN`` win over the arguments, as in Accelerate.

    Numbers are metrics; strings become tags (Accelerate drops them); the configuration
    becomes parameters (nested keys joined by ".", values cut at MLflow's 6000
    characters where Accelerate drops the parameter)."""

    name = "mlflow"
    requires_logging_directory = False

    def __init__(self, experiment_name: str | None = None, logging_dir: str | os.PathLike[str] | None = None,
                 run_id: str | None = None, tags: dict[str, Any] | str | None = None, nested_run: bool = False,
                 run_name: str | None = None, description: str | None = None) -> None:
        super().__init__()
        from surge.config.environment import mlflow_overrides

        env = mlflow_overrides()
        given = env.get("MLFLOW_TAGS", tags)
        if isinstance(given, str):
            try:
                given = json.loads(given)
            except json.JSONDecodeError:
                given = None
            if not isinstance(given, dict):
                raise ValueError(f"MLflow tags {env.get('MLFLOW_TAGS', tags)!r} are not a JSON object; give a dict "
                                 'or a string such as \'{"team": "nlp"}\'.')
        name = env.get("MLFLOW_EXPERIMENT_NAME", experiment_name)
        if not name:
            raise ValueError(f"MLflowTracker(experiment_name={experiment_name!r}) needs an experiment name (or "
                             "MLFLOW_EXPERIMENT_NAME); init_trackers passes the project name.")
        self.experiment_name: str = name
        self.tags: dict[str, Any] | None = given
        self.logging_dir = os.fspath(logging_dir) if logging_dir is not None else None
        self.run_id = env.get("MLFLOW_RUN_ID", run_id)
        self.nested_run = _flag("MLFLOW_NESTED_RUN", env["MLFLOW_NESTED_RUN"]) if "MLFLOW_NESTED_RUN" in env \
            else nested_run
        self.run_name = run_name
        self.description = description

    @on_main_process
    def start(self) -> None:
        try:
            import mlflow
        except ImportError:
            raise ImportError(f"log_with='mlflow' needs the mlflow package: {INSTALL}") from None
        found = mlflow.search_experiments(filter_string=f"name = '{self.experiment_name}'")
        experiment_id = found[0].experiment_id if found else mlflow.create_experiment(
            name=self.experiment_name, artifact_location=self.logging_dir, tags=self.tags)
        self.active_run = mlflow.start_run(run_id=self.run_id, experiment_id=experiment_id, run_name=self.run_name,
                                           nested=self.nested_run, tags=self.tags, description=self.description)

    @property
    def tracker(self) -> Any:
        return self.active_run

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        import mlflow

        params = {k: str(scalar(v))[:_MAX_PARAM] for k, v in flatten(values, sep=".").items()}
        names = list(params)
        for i in range(0, len(names), _BATCH):
            mlflow.log_params({k: params[k] for k in names[i:i + _BATCH]})

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        import mlflow

        metrics, tags = {}, {}
        for name, raw in values.items():
            value = scalar(raw)
            if isinstance(value, (int, float)):  # bools too
                metrics[name] = float(value)
            else:
                tags[name] = str(value)
        mlflow.log_metrics(metrics, step=step, **kwargs)
        if tags:
            mlflow.set_tags(tags)

    @on_main_process
    def log_figure(self, figure: Any, artifact_file: str, **save_kwargs: Any) -> None:
        """``mlflow.log_figure`` into this run."""
        import mlflow

        mlflow.log_figure(figure=figure, artifact_file=artifact_file, **save_kwargs)

    @on_main_process
    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        """``mlflow.log_artifacts``: every file under ``local_dir``."""
        import mlflow

        mlflow.log_artifacts(local_dir=local_dir, artifact_path=artifact_path)

    @on_main_process
    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """``mlflow.log_artifact``: one file."""
        import mlflow

        mlflow.log_artifact(local_path=local_path, artifact_path=artifact_path)

    @on_main_process
    def finish(self) -> None:
        import mlflow

        mlflow.end_run()
