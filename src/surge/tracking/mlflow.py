"""MLflow. Without ``MLFLOW_TRACKING_URI`` it writes a local SQLite store under the
logging dir (``mlflow ui --backend-store-uri sqlite:///<logging dir>/mlflow.db``), with
artifacts in ``<logging dir>/mlartifacts``."""

from __future__ import annotations

import os
import time
from typing import Any

from surge.tracking.base import GeneralTracker, flatten, scalar

INSTALL = "pip install mlflow  (or: pip install 'surge[mlflow]')"
LOCAL_STORE = "mlflow.db"
_MAX_PARAM = 6000  # MLflow's limit on a parameter's value length


class MLflowTracker(GeneralTracker):
    """One MLflow run in the experiment named after the project. Numbers are metrics,
    strings are tags; the configuration becomes parameters (nested keys joined by '.').
    It talks to MLflow through an ``MlflowClient`` of its own: the process's MLflow
    settings (tracking URI, active run, environment) are left as they were."""

    name = "mlflow"
    requires_logging_directory = False

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__()
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError(f"log_with='mlflow' needs the mlflow package: {INSTALL}") from None
        from surge.config.environment import mlflow_tracking_uri

        uri, artifacts = None, None  # None: MlflowClient reads MLFLOW_TRACKING_URI
        if mlflow_tracking_uri() is None:
            if logging_dir is None:
                raise ValueError("log_with='mlflow' needs MLFLOW_TRACKING_URI or a logging dir (project_dir=...) for "
                                 "its local store.")
            try:
                import alembic  # noqa: F401  (MLflow's SQL store needs both)
                import sqlalchemy  # noqa: F401
            except ImportError:
                raise ImportError("log_with='mlflow' keeps a local SQLite store, which needs sqlalchemy and alembic: "
                                  f"pip install sqlalchemy alembic (or {INSTALL}), or set MLFLOW_TRACKING_URI."
                                  ) from None
            root = os.path.abspath(os.fspath(logging_dir))
            os.makedirs(root, exist_ok=True)
            uri = "sqlite:///" + os.path.join(root, LOCAL_STORE)
            artifacts = "file://" + os.path.join(root, "mlartifacts")
        self.client = MlflowClient(uri)
        experiment_name = kwargs.pop("experiment_name", run_name)
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(experiment_name, artifact_location=artifacts))
        self.run = self.client.create_run(experiment_id, **kwargs)
        self.run_id = self.run.info.run_id

    @property
    def tracker(self) -> Any:
        return self.run

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(scalar(v))[:_MAX_PARAM]) for k, v in flatten(values, sep=".").items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics, tags = [], []
        for name, raw in values.items():
            value = scalar(raw)
            if isinstance(value, (int, float)):  # bools too
                metrics.append(Metric(name, float(value), now, step or 0))
            else:
                tags.append(RunTag(name, str(value)))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags, **kwargs)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)
