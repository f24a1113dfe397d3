"""MLflow: one MLflow run per clbench run, in an experiment named after the benchmark. Default store: SQLite at
``<results-dir>/mlruns/mlflow.db``, artifacts under ``<results-dir>/mlruns/artifacts`` (MLflow 3 refuses new
plain-file stores); ``--mlflow-uri`` names another (``sqlite:///…``, ``http://…``). A resumed run reopens the same
MLflow run (its id is kept in the run folder)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from benchmark.reporting.trackers.base import Tracker, TrackerContext, flat_params, scalars

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def default_store(results_dir: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the default store under ``results_dir``."""
    root = (Path(results_dir) / "mlruns").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


class MlflowTracker(Tracker):
    """Logs through :class:`mlflow.tracking.MlflowClient` (no global active run, so runs never mix)."""

    name = "mlflow"

    def start(self, context: TrackerContext, config: dict, parameters: dict, resume_id: str | None) -> str | None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for logger in ("mlflow", "alembic"):  # the store's set-up logs at INFO on the console, over the progress bars
            logging.getLogger(logger).setLevel(logging.WARNING)

        if context.settings.mlflow_uri:
            uri, artifacts = context.settings.mlflow_uri, None
        else:
            uri, artifacts = default_store(context.results_dir)
        self.client = client = MlflowClient(tracking_uri=uri)
        if resume_id is not None:
            try:
                client.get_run(resume_id)
                client.update_run(resume_id, status="RUNNING")
                self.run_id = resume_id
                return resume_id
            except MlflowException:
                pass  # not in this store (another --mlflow-uri): a new run
        experiment_id = self._experiment(context.bench or "clbench", artifacts)
        run = client.create_run(experiment_id, run_name=context.name, tags={
            "clbench.method": str(config.get("method")), "clbench.seed": str(config.get("seed")),
            "clbench.first_task": str(context.first_task + 1)})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = {**flat_params(config), **{f"parameters.{k}": str(v) for k, v in parameters.items()}}
        client.log_batch(self.run_id, params=[Param(key, value[:MAX_PARAM_LENGTH]) for key, value in params.items()])
        client.log_dict(self.run_id, config, "config.json")
        return self.run_id

    def _experiment(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:  # created meanwhile by a parallel run
            return self.client.get_experiment_by_name(name).experiment_id

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def log_task(self, task: int, values: dict[str, float]) -> None:
        self._log(values, task)

    def log_epoch(self, step: int, loss: float) -> None:
        self._log({"train/loss": loss}, step)

    def finish(self, state: str, metrics: dict | None) -> None:
        if metrics is not None:
            self._log({f"final/{key}": value for key, value in scalars(metrics).items()}, 0)
            self.client.log_text(self.run_id, json.dumps(metrics, indent=2, sort_keys=True), "metrics.json")
        self.client.set_tag(self.run_id, "clbench.state", state)
        self.client.set_terminated(self.run_id, "FAILED" if state == "failed" else "FINISHED")
