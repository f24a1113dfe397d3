"""Weights & Biases: offline by default, files in ``<run>/wandb/`` (``wandb sync <run>/wandb/offline-run-*``).
Online only when ``WANDB_MODE=online``, or a project is given (``--wandb-project``) and ``WANDB_API_KEY`` is set.
A resumed run continues the same W&B run id (``resume="allow"``)."""
from __future__ import annotations

import os
import uuid

from benchmark.reporting.trackers.base import Tracker, TrackerContext, scalars

DEFAULT_PROJECT = "clbench"


def wandb_mode(project: str | None) -> str:
    """``$WANDB_MODE`` if set; else online only with a project and an API key in the environment."""
    return os.environ.get("WANDB_MODE") or ("online" if project and os.environ.get("WANDB_API_KEY") else "offline")


class WandbTracker(Tracker):
    """One W&B run per clbench run, grouped by benchmark; task and epoch scalars on their own step axes."""

    name = "wandb"

    def start(self, context: TrackerContext, config: dict, parameters: dict, resume_id: str | None) -> str | None:
        import wandb

        project = context.settings.wandb_project
        run_id = resume_id or uuid.uuid4().hex
        self.run = wandb.init(
            project=project or DEFAULT_PROJECT, dir=str(context.run_dir), id=run_id, resume="allow",
            name=context.name, group=context.bench or None, config={**config, "parameters": parameters},
            mode=wandb_mode(project), reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))  # never wraps the bench console
        self.run.define_metric("task")
        self.run.define_metric("task/*", step_metric="task")
        self.run.define_metric("epoch")
        self.run.define_metric("train/*", step_metric="epoch")
        return run_id

    def log_task(self, task: int, values: dict[str, float]) -> None:
        self.run.log({"task": task, **values})

    def log_epoch(self, step: int, loss: float) -> None:
        self.run.log({"epoch": step, "train/loss": loss})

    def finish(self, state: str, metrics: dict | None) -> None:
        if metrics is not None:
            self.run.summary.update({f"final/{key}": value for key, value in scalars(metrics).items()})
        self.run.summary["clbench_state"] = state
        self.run.finish(exit_code=1 if state == "failed" else 0)
