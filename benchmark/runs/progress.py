"""Console output of ``bench run``: rich progress bars (runs, epochs, batches with loss) or plain log lines."""
from __future__ import annotations

import sys
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmark.method import SilentMonitor, TrainingMonitor


class _BarMonitor:
    """A :class:`TrainingMonitor` driving an epoch bar and a batch bar."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label = progress, label
        self.epochs = progress.add_task(f"{label} epochs", total=1)
        self.batches = progress.add_task("batches", total=1)

    def start_epochs(self, epochs: int, batches_per_epoch: int) -> None:
        self.progress.reset(self.epochs, total=epochs)
        self.progress.reset(self.batches, total=batches_per_epoch)

    def end_batch(self, loss: float) -> None:
        self.progress.update(self.batches, advance=1, description=f"batches (loss {loss:.4f})")

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        self.progress.update(self.epochs, advance=1,
                             description=f"{self.label} epochs (mean loss {mean_loss:.4f})")
        self.progress.reset(self.batches)

    def close(self) -> None:
        self.progress.remove_task(self.epochs)
        self.progress.remove_task(self.batches)


class RunProgress:
    """Context manager for the whole ``bench run``: one bar over runs, per-task epoch/batch bars."""

    def __init__(self, quiet: bool, total_runs: int) -> None:
        self.quiet = quiet
        self.console = Console(stderr=False)
        self.progress = None if quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=False)
        self.total_runs = total_runs
        self.runs_bar = None
        self._monitor: _BarMonitor | None = None

    def __enter__(self) -> "RunProgress":
        if self.progress is not None:
            self.progress.start()
            self.runs_bar = self.progress.add_task("runs", total=self.total_runs)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self._close_monitor()
            self.progress.stop()

    def echo(self, message: str) -> None:
        """Print a log line above the bars (or plainly when quiet)."""
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, flush=True)

    def monitor_factory(self, run) -> Callable[[str, int], TrainingMonitor]:
        """Monitors for the tasks of ``run`` (silent when quiet)."""
        label_prefix = f"{run.name} {run.request.bench} seed{run.request.seed}"

        def make(label: str, task_index: int) -> TrainingMonitor:
            if self.progress is None:
                return SilentMonitor()
            self._close_monitor()
            self._monitor = _BarMonitor(self.progress, f"{label_prefix} {label}")
            return self._monitor

        return make

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None

    def run_done(self, outcome) -> None:
        """Advance the runs bar; report skipped and locked runs."""
        request = outcome.run.request
        if outcome.state == "skipped":
            self.echo(f"skipped {request.bench}/{outcome.run.name}/seed{request.seed}: already finished "
                      "(--fresh to rerun)")
        elif outcome.state == "locked":
            self.echo(f"skipped {request.bench}/{outcome.run.name}/seed{request.seed}: {outcome.reason}")
        if self.progress is not None:
            self._close_monitor()
            self.progress.advance(self.runs_bar)

    @staticmethod
    def print_summary(outcomes) -> None:
        """A table of every run's state, Ā, A_T, forgetting and trainable parameters; then the reason of each
        run that did not finish, whole, on its own lines (a table cell would cut it)."""
        table = Table(title="clbench run summary")
        for column in ("bench", "method", "seed", "state", "Ā", "A_T", "F (PILOT)", "params/task %"):
            table.add_column(column)
        for outcome in outcomes:
            request, metrics = outcome.run.request, outcome.metrics or {}
            parameters = metrics.get("parameters", {})

            def fmt(key: str) -> str:
                return f"{metrics[key]:.2f}" if key in metrics else "–"

            table.add_row(request.bench, outcome.run.name, str(request.seed), outcome.state, fmt("avg_acc"),
                          fmt("last_acc"), fmt("forgetting_pilot"),
                          f"{parameters['trainable_task_pct']:.3f}" if parameters else "–")
        Console(width=None if sys.stdout.isatty() else 120).print(table)
        for outcome in outcomes:
            if outcome.reason:
                request = outcome.run.request
                print(f"{outcome.state} {request.bench}/{outcome.run.name}/seed{request.seed}:\n  {outcome.reason}",
                      flush=True)
