"""MLflow. Without ``MLFLOW_TRACKING_URI`` it writes a local store under the logging
dir (``mlflow ui --backend-store-uri <logging dir>/mlruns``)."""

from __future__ import annotations

import os
from typing import Any

from surge.tracking.base import GeneralTracker, flatten, scalar

INSTALL = "pip install mlflow  (or: pip install 'surge[mlflow]')"
_MAX_PARAM = 6000  # MLflow's limit on a parameter's value length


class MLflowTracker(GeneralTracker):
    """One MLflow run in the experiment named after the project. Numbers are metrics,
    strings are tags; the configuration becomes parameters (nested keys joined by '.')."""

    name = "mlflow"
    requires_logging_directory = False

    def __init__(self, run_name: str, logging_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__()
        try:
            import mlflow
        except ImportError:
            raise ImportError(f"log_with='mlflow' needs the mlflow package: {INSTALL}") from None
        self._mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            if logging_dir is None:
                raise ValueError("log_with='mlflow' needs MLFLOW_TRACKING_URI or a logging dir (project_dir=...) for "
                                 "its local store.")
            store = os.path.abspath(os.path.join(os.fspath(logging_dir), "mlruns"))
            os.makedirs(store, exist_ok=True)
            mlflow.set_tracking_uri("file://" + store)
        experiment = kwargs.pop("experiment_name", run_name)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(**kwargs)

    @property
    def tracker(self) -> Any:
        return self.run

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        params = {k: str(scalar(v))[:_MAX_PARAM] for k, v in flatten(values, sep=".").items()}
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self._mlflow.log_params(dict(items[i:i + 100]), run_id=self.run.info.run_id)

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        metrics, tags = {}, {}
        for name, value in values.items():
            value = scalar(value)
            if isinstance(value, (int, float)):  # bools too
                metrics[name] = float(value)
            else:
                tags[name] = str(value)
        run_id = self.run.info.run_id
        if metrics:
            self._mlflow.log_metrics(metrics, step=step, run_id=run_id, **kwargs)
        if tags:
            self._mlflow.set_tags(tags)

    def finish(self) -> None:
        self._mlflow.end_run()
