"""The trackers of one run, each call guarded: a tracker that raises is disabled for the rest of the run with one
warning line, and the run goes on with its results untouched.

Resume: the ids of the trackers' runs and the epochs trained per task are kept in ``<run>/trackers.json``, so a
resumed run reopens the same MLflow / W&B run and its epoch steps continue where the finished tasks left them.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

from benchmark.errors import ClbenchError
from benchmark.method import TrainingMonitor
from benchmark.reporting.trackers.base import Tracker, TrackerContext, TrackerSettings
from benchmark.store.results import atomic_write_json

# name: (module of its Tracker class, class name, package that must be importable, the extra that installs it)
TRACKERS = {
    "tensorboard": ("benchmark.reporting.trackers.tensorboard_tracker", "TensorBoardTracker", "tensorboard"),
    "mlflow": ("benchmark.reporting.trackers.mlflow_tracker", "MlflowTracker", "mlflow"),
    "wandb": ("benchmark.reporting.trackers.wandb_tracker", "WandbTracker", "wandb"),
}
STATE_FILE = "trackers.json"


def tracker_settings(names: list[str] | None, mlflow_uri: str | None = None,
                     wandb_project: str | None = None) -> TrackerSettings:
    """Settings from ``--log-to`` (repeatable, or comma lists) and the trackers' options (default:
    ``$MLFLOW_TRACKING_URI``, ``$WANDB_PROJECT``); unknown names and options for a tracker not requested are
    errors."""
    chosen = tuple(dict.fromkeys(item.strip() for name in names or [] for item in name.split(",") if item.strip()))
    unknown = [name for name in chosen if name not in TRACKERS]
    if unknown:
        raise ClbenchError(f"--log-to {unknown[0]}: unknown tracker (choose from {', '.join(TRACKERS)})")
    for option, value, needed in (("--mlflow-uri", mlflow_uri, "mlflow"), ("--wandb-project", wandb_project, "wandb")):
        if value and needed not in chosen:
            raise ClbenchError(f"{option} needs --log-to {needed}")
    # The trackers' own variables, read here (on the driver) so that the settings travel to Ray workers.
    if "mlflow" in chosen:
        mlflow_uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if "wandb" in chosen:
        wandb_project = wandb_project or os.environ.get("WANDB_PROJECT")
    return TrackerSettings(chosen, mlflow_uri or None, wandb_project or None)


def missing_packages(settings: TrackerSettings) -> list[str]:
    """One line per requested tracker whose package is not installed, naming the extra that installs it."""
    return [f"--log-to {name}: {TRACKERS[name][2]} is not installed: pip install 'clbench[{name}]'"
            for name in settings.names if importlib.util.find_spec(TRACKERS[name][2]) is None]


class Trackers:
    """The requested trackers of one run. With none requested every method does nothing (and nothing is written).

    ``warn`` receives the one line of a tracker that failed (the runner's log).
    """

    def __init__(self, settings: TrackerSettings, run_dir: Path, results_dir: Path, name: str,
                 warn: Callable[[str], None]) -> None:
        self.settings, self.run_dir, self.results_dir, self.name, self.warn = (
            settings, Path(run_dir), Path(results_dir), name, warn)
        self.active: list[Tracker] = []
        self.state: dict = {"ids": {}, "epochs_per_task": []}
        self._epoch_base = self._task_epochs = 0

    @property
    def state_path(self) -> Path:
        """``<run>/trackers.json``: the trackers' run ids and the epochs trained per task."""
        return self.run_dir / STATE_FILE

    def start(self, config: dict, parameters: Callable[[], dict], first_task: int) -> None:
        """Build and open every requested tracker; ``first_task`` > 0 resumes their stored runs."""
        if not self.settings.names:
            return
        if first_task > 0 and self.state_path.exists():
            try:
                stored = json.loads(self.state_path.read_text())
                self.state = {"ids": dict(stored.get("ids", {})),
                              "epochs_per_task": list(stored.get("epochs_per_task", []))[:first_task]}
            except (OSError, ValueError, TypeError, AttributeError) as error:
                self.warn(f"warning: {self.state_path.name} unreadable ({error}); trackers start new runs")
        try:
            counts = parameters()
        except Exception as error:  # the counts are a courtesy to the trackers; never a reason to stop
            self.warn(f"warning: parameter counts for the trackers failed ({type(error).__name__}: {error})")
            counts = {}
        bench = str(config.get("bench", ""))
        context = TrackerContext(self.run_dir, self.results_dir, bench, self.name, first_task, self.settings)
        for tracker_name in self.settings.names:
            module, class_name, _ = TRACKERS[tracker_name]
            tracker = self._guarded(tracker_name, None, "start", lambda: getattr(
                importlib.import_module(module), class_name)())
            if tracker is None:
                continue
            self.active.append(tracker)
            resume_id = self.state["ids"].get(tracker_name) if first_task > 0 else None
            run_id = self._guarded(tracker_name, tracker, "start",
                                   lambda: tracker.start(context, config, counts, resume_id))
            if tracker in self.active and run_id is not None:
                self.state["ids"][tracker_name] = run_id
        self._save_state()

    def monitor_factory(self, factory: Callable[[str, int], TrainingMonitor]) -> Callable[[str, int], TrainingMonitor]:
        """``factory`` with each task's monitor also sending its epoch losses to the trackers."""
        if not self.settings.names:
            return factory

        def make(label: str, task_index: int) -> TrainingMonitor:
            self._epoch_base = sum(self.state["epochs_per_task"][:task_index])
            self._task_epochs = 0
            return _EpochForwarder(factory(label, task_index), self)

        return make

    def log_epoch(self, loss: float) -> None:
        """The next epoch's mean loss, at the run's global epoch index."""
        step = self._epoch_base + self._task_epochs
        self._task_epochs += 1
        for tracker in list(self.active):
            self._guarded(tracker.name, tracker, "log_epoch", lambda: tracker.log_epoch(step, loss))

    def log_task(self, task_index: int, partial_metrics: dict, train_seconds: float, eval_seconds: float) -> None:
        """After task ``task_index`` (0-based): A_t, Ā and forgetting so far, and its seconds, at step t."""
        if not self.settings.names:
            return
        values = {"task/accuracy": partial_metrics["accuracy_curve_rounded"][-1],
                  "task/avg_acc": partial_metrics["avg_acc"],
                  "task/forgetting_pilot": partial_metrics["forgetting_pilot"],
                  "task/train_seconds": train_seconds, "task/eval_seconds": eval_seconds}
        for tracker in list(self.active):
            self._guarded(tracker.name, tracker, "log_task", lambda: tracker.log_task(task_index + 1, values))
        self.state["epochs_per_task"] = self.state["epochs_per_task"][:task_index] + [self._task_epochs]
        self._save_state()

    def finish(self, state: str, metrics: dict | None = None) -> None:
        """Close every active tracker's run (``finished``, ``partial`` or ``failed``)."""
        for tracker in list(self.active):
            self._guarded(tracker.name, tracker, "finish", lambda: tracker.finish(state, metrics))
        self.active.clear()

    def _guarded(self, name: str, tracker: Tracker | None, what: str, call: Callable):
        try:
            return call()
        except Exception as error:  # a tracker never fails a run
            if tracker in self.active:
                self.active.remove(tracker)
            detail = (str(error).strip().splitlines() or [""])[0][:300]
            self.warn(f"warning: tracker {name} failed in {what} ({type(error).__name__}: {detail}); disabled for "
                      "the rest of this run (results are unaffected)")
            if tracker is not None and what != "finish":
                try:
                    tracker.finish("failed", None)  # release its files and background processes
                except Exception:
                    pass  # a tracker that just failed may fail to close as well; it has been reported once
            return None

    def _save_state(self) -> None:
        try:
            atomic_write_json(self.state_path, self.state)
        except OSError as error:
            self.warn(f"warning: {self.state_path.name} not written ({error.strerror or error}); a resumed run "
                      "will start new tracker runs")


class _EpochForwarder:
    """A :class:`TrainingMonitor` passing everything on to ``inner`` and epoch losses to the trackers."""

    def __init__(self, inner: TrainingMonitor, trackers: Trackers) -> None:
        self.inner, self.trackers = inner, trackers

    def start_epochs(self, epochs: int, batches_per_epoch: int) -> None:
        self.inner.start_epochs(epochs, batches_per_epoch)

    def end_batch(self, loss: float) -> None:
        self.inner.end_batch(loss)

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        self.inner.end_epoch(epoch, mean_loss)
        self.trackers.log_epoch(mean_loss)
