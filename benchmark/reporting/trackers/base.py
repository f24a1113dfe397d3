"""What every experiment tracker implements, and the settings a run carries for them.

A tracker mirrors what the runner records (``metrics.json`` stays the result): the resolved config and parameter
counts at start, per task A_i, Ā so far, forgetting so far and train/eval seconds (step = task number t = 1..T),
per epoch the mean training loss (step = the run's global epoch index, from 0), and the final metrics at the end.
Trackers are driven only through :class:`benchmark.reporting.trackers.hub.Trackers`, which guards every call.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class TrackerSettings:
    """The trackers a run logs to (``bench run --log-to``) and their options. Not part of a run's fingerprint:
    logging never changes a result."""

    names: tuple[str, ...] = ()
    mlflow_uri: str | None = None
    """MLflow tracking URI; None: a SQLite store under ``<results-dir>/mlruns/``."""
    wandb_project: str | None = None
    """W&B project; None: ``clbench``, offline."""


@dataclass(frozen=True)
class TrackerContext:
    """Where and what a tracker logs: the run's folder, the results dir, and the run's names."""

    run_dir: Path
    results_dir: Path
    bench: str
    name: str
    """``<bench>/<method>[<variant>]/seed<k>``, the tracker run's display name."""
    first_task: int
    """0 for a run that starts (anything a tracker left in the run folder is stale); else the task it resumes at."""
    settings: TrackerSettings = field(default_factory=TrackerSettings)


class Tracker(ABC):
    """One experiment tracker. Calls may raise: the hub disables a tracker on its first exception."""

    name: ClassVar[str]

    @abstractmethod
    def start(self, context: TrackerContext, config: dict, parameters: dict, resume_id: str | None) -> str | None:
        """Open (``resume_id``: reopen) the tracker's run and, for a new one, record config and parameter counts.
        Returns the id to store for a later resume (None where the tracker has no run id)."""

    @abstractmethod
    def log_task(self, task: int, values: dict[str, float]) -> None:
        """Per-task scalars at step ``task`` (1-based)."""

    @abstractmethod
    def log_epoch(self, step: int, loss: float) -> None:
        """The mean training loss of the run's epoch ``step`` (global, from 0)."""

    @abstractmethod
    def finish(self, state: str, metrics: dict | None) -> None:
        """Close the tracker's run: ``finished`` (with the run's metrics), ``partial`` (``--max-tasks``, to be
        resumed) or ``failed``."""


def scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of ``metrics``, nested dicts joined with ``/`` (lists and strings left out)."""
    found: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            found.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[f"{prefix}{key}"] = float(value)
    return found


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Every leaf of ``config`` as a string (lists as JSON), nested dicts joined with ``.``."""
    found: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            found.update(flat_params(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return found
