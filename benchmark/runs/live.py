"""The live progress table of a distributed ``bench run``, fed from the runs' folders.

Workers send nothing to the driver while they train: each run's ``status.json`` (state, tasks done),
``timing.json`` (seconds per finished task) and ``predictions/task<i>.npz`` (A_i) are what the table reads,
about once a second. On a cluster these are on the shared results filesystem. ``quiet`` prints one log line
per change instead of the table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from benchmark.runs.plan import format_seconds
from benchmark.store.locking import read_holder
from benchmark.store.results import read_json

MAX_ROWS = 30
ORDER = {"running": 0, "failed": 1, "interrupted": 1, "queued": 2, "finished": 3, "partial": 3, "skipped": 4,
         "locked": 4}


@dataclass
class RowState:
    """What the table shows of one run."""

    state: str = "queued"
    tasks_done: int = 0
    accuracy: float | None = None
    started: float | None = None
    ended: float | None = None
    task_seconds: float | None = None  # mean train+eval seconds of its finished tasks
    reason: str | None = None
    host: str = ""  # where it runs (the lock holder's host)


class LiveTable:
    """Context manager: a rich live table of every run (``refresh`` re-reads the run folders)."""

    def __init__(self, runs: Sequence, quiet: bool, since: float) -> None:
        self.runs, self.quiet, self.since = list(runs), quiet, since
        self.rows = [RowState() for _ in self.runs]
        self._final: set[int] = set()
        self._accuracy_cache: dict[tuple[int, int], float] = {}
        self._announced: list[tuple] = [()] * len(self.runs)
        self.console = Console()
        self._live = None if quiet else Live(self._render(), console=self.console, refresh_per_second=2,
                                             transient=False)

    def __enter__(self) -> "LiveTable":
        if self._live is not None:
            self._live.start()
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        self.refresh()
        if self._live is not None:
            self._live.stop()

    # -- state -------------------------------------------------------------------------------------
    def run_done(self, index: int, outcome) -> None:
        """The driver got the run's outcome: its state is final."""
        row = self.rows[index]
        self._read(index)
        row.state, row.reason, row.ended = outcome.state, outcome.reason, time.time()
        if outcome.metrics and outcome.metrics.get("accuracy_curve"):
            row.accuracy = outcome.metrics["accuracy_curve"][-1]
            row.tasks_done = len(outcome.metrics["accuracy_curve"])
        self._final.add(index)

    def refresh(self) -> None:
        """Re-read the folders of the runs not yet final and redraw (or log the changes)."""
        for index in range(len(self.runs)):
            if index not in self._final:
                self._read(index)
        if self._live is not None:
            self._live.update(self._render())
        else:
            self._log_changes()

    def _read(self, index: int) -> None:
        store, row = self.runs[index].store, self.rows[index]
        try:
            status = read_json(store.status_path)
            written = store.status_path.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return
        if written < self.since:
            return  # a status left by an earlier command: the run has not started in this one
        if status.get("state") == "running":
            row.state = "running"
            row.started = row.started or time.time()
            holder = read_holder(store.path)
            row.host = holder.get("host", "") if holder else row.host
        row.tasks_done = int(status.get("tasks_done", 0))
        if row.tasks_done:
            row.accuracy = self._accuracy(index, row.tasks_done)
            try:
                timing = read_json(store.timing_path)
                row.task_seconds = float(np.mean([t["train_seconds"] + t["eval_seconds"] for t in timing]))
            except (FileNotFoundError, ValueError, KeyError):
                pass

    def _accuracy(self, index: int, tasks_done: int) -> float | None:
        """A_i (top-1 % on all seen classes) after the latest finished task, from its stored predictions."""
        key = (index, tasks_done)
        if key not in self._accuracy_cache:
            try:
                with np.load(self.runs[index].store.prediction_path(tasks_done - 1)) as data:
                    self._accuracy_cache[key] = 100.0 * float(np.mean(data["top5"][:, 0] == data["labels"]))
            except (FileNotFoundError, ValueError, OSError):
                return None
        return self._accuracy_cache[key]

    def eta(self) -> float | None:
        """Seconds left: the tasks left times the mean seconds per finished task, over the runs now running."""
        known = [row.task_seconds for row in self.rows if row.task_seconds]
        if not known:
            return None
        per_task = float(np.mean(known))
        left = sum(run.num_tasks - row.tasks_done for run, row in zip(self.runs, self.rows)
                   if row.state in ("queued", "running"))
        running = sum(row.state == "running" for row in self.rows)
        return per_task * left / max(running, 1)

    # -- output ------------------------------------------------------------------------------------
    def _label(self, index: int) -> str:
        run = self.runs[index]
        return f"{run.request.bench}/{run.name}/seed{run.request.seed}"

    def _cells(self, index: int) -> tuple[str, ...]:
        run, row = self.runs[index], self.rows[index]
        now = time.time()
        elapsed = format_seconds((row.ended or now) - row.started) if row.started else "–"
        if row.state == "running" and row.task_seconds:
            eta = format_seconds((run.num_tasks - row.tasks_done) * row.task_seconds)
        else:
            eta = "–"
        state = row.state if row.state != "failed" else f"failed: {row.reason}"
        accuracy = f"{row.accuracy:.2f}" if row.accuracy is not None else "–"
        return self._label(index), state, row.host, f"{row.tasks_done}/{run.num_tasks}", accuracy, elapsed, eta

    def _render(self) -> Table:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        eta = self.eta()
        caption = ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: ORDER.get(kv[0], 5)))
        table = Table(title="clbench runs (ray)", caption=caption + (f"; ETA {format_seconds(eta)}" if eta else ""))
        for column in ("run", "state", "host", "tasks", "latest A_i", "elapsed", "ETA"):
            table.add_column(column)
        order = sorted(range(len(self.runs)), key=lambda i: (ORDER.get(self.rows[i].state, 5), i))
        for index in order[:MAX_ROWS]:
            table.add_row(*self._cells(index))
        if len(order) > MAX_ROWS:
            table.add_row(f"… {len(order) - MAX_ROWS} more", *[""] * 6)
        return table

    def _log_changes(self) -> None:
        for index, row in enumerate(self.rows):
            key = (row.state, row.tasks_done)
            if key != self._announced[index] and not (row.state == "queued" and not self._announced[index]):
                self._announced[index] = key
                label, state, _, tasks, accuracy, elapsed, _ = self._cells(index)
                print(f"{label}: {state}, tasks {tasks}, latest A_i {accuracy}, elapsed {elapsed}", flush=True)
