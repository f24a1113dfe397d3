"""Launchers: how the planned runs of a ``bench run`` are executed (DESIGN.md, "Runs at scale").

- ``local`` (default): in this process, one run after another, with progress bars. Never imports Ray.
- ``ray``: one Ray task per run, with ``num_cpus``/``num_gpus`` per run (fractional GPUs pack several small
  runs on one device) and ``max_retries``: a task whose worker dies is started again by Ray and the runner
  resumes it from its last per-task checkpoint. Scheduling, placement and retries are Ray's; the driver only
  submits, watches the results folder (the live table) and collects the outcomes.

Both call :func:`benchmark.runs.runner.execute`, which takes the run folder's lock, so two launchers on one
results dir never train the same run twice. A launcher does not know what a method is.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Sequence

from benchmark.errors import ClbenchError
from benchmark.runs.resolve import ResolvedRun
from benchmark.runs.runner import RunOutcome, execute
from benchmark.store.locking import RunLocked, run_lock

RAY_EXTRA = "Ray is not installed: pip install 'clbench[ray]'"


@dataclass
class RayOptions:
    """Resources and cluster of the Ray launcher."""

    address: str | None = None  # None: start a local Ray instance sized to this machine
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3  # restarts of a run whose worker process died (not of runs that failed)


def launch_local(runs: Sequence[ResolvedRun], quiet: bool) -> list[RunOutcome]:
    """Execute the runs here, one after another (today's behaviour)."""
    from benchmark.runs.progress import RunProgress

    outcomes = []
    with RunProgress(quiet=quiet, total_runs=len(runs)) as progress:
        for run in runs:
            outcome = execute(run, monitor_factory=progress.monitor_factory(run), echo=progress.echo)
            progress.run_done(outcome)
            outcomes.append(outcome)
    return outcomes


def import_ray():
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise ClbenchError(RAY_EXTRA) from None
    return ray


def check_ray_options(options: RayOptions, device: str | None) -> None:
    """Resource options that cannot work, as one clear error before anything starts."""
    if options.cpus_per_run <= 0 or options.gpus_per_run < 0:
        raise ClbenchError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    if options.gpus_per_run > 1 and options.gpus_per_run != int(options.gpus_per_run):
        raise ClbenchError("--gpus-per-run above 1 must be a whole number (Ray packs fractions only below 1)")
    if options.max_retries < 0:
        raise ClbenchError("--max-retries must be >= 0")
    if (device or "auto").startswith("cuda") and options.gpus_per_run == 0:
        raise ClbenchError(f"--device {device} with --launcher ray needs --gpus-per-run > 0 (Ray hides GPUs from "
                           "tasks that did not ask for one)")


def _portable(run: ResolvedRun) -> ResolvedRun:
    """The run as a task gets it: absolute results and data paths, so that a worker's working directory does
    not matter, and never ``fresh`` (the driver has cleared those folders)."""
    request = dataclasses.replace(run.request, results_dir=run.request.results_dir.resolve(),
                                  data_root=run.request.data_root.resolve(), fresh=False)
    return dataclasses.replace(run, request=request)


def execute_on_worker(run: ResolvedRun) -> RunOutcome:
    """The body of a Ray task: the run as the local launcher executes it (under its folder's lock, which
    records this worker's pid and host), without console output: the driver's live table reads the folder."""
    return execute(run, echo=None)


def launch_ray(runs: Sequence[ResolvedRun], options: RayOptions, quiet: bool) -> list[RunOutcome]:
    """One Ray task per run; the outcomes in plan order. A task lost for good (its worker died more than
    ``max_retries`` times) is a failed run; the others go on."""
    ray = import_ray()
    from benchmark.runs.live import LiveTable

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(execute_on_worker).options(
            num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=options.max_retries,
            retry_exceptions=False)
        began = time.time()
        outcomes: list[RunOutcome | None] = [_clear_if_fresh(run) for run in runs]
        pending = {task.remote(_portable(run)): index for index, run in enumerate(runs) if outcomes[index] is None}
        with LiveTable(runs, quiet=quiet, since=began) as live:
            for index, outcome in enumerate(outcomes):
                if outcome is not None:
                    live.run_done(index, outcome)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
                for ref in done:
                    index = pending.pop(ref)
                    outcomes[index] = _collect(ray, ref, runs[index])
                    live.run_done(index, outcomes[index])
                live.refresh()
        return [outcome for outcome in outcomes if outcome is not None]
    finally:
        if started_here:
            ray.shutdown()


def _clear_if_fresh(run: ResolvedRun) -> RunOutcome | None:
    """``--fresh``: empty the run folder now, under its lock, so that the task itself never clears it (a task
    that Ray retries after its worker died must resume, not start over). A run another process holds is
    ``locked`` and not submitted."""
    if not run.request.fresh:
        return None
    try:
        with run_lock(run.store.path):
            run.store.clear()
    except RunLocked as error:
        return RunOutcome(run, "locked", reason=str(error))
    return None


def _collect(ray, ref, run: ResolvedRun) -> RunOutcome:
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayError as error:  # the worker died on every attempt, or the node was lost
        reason = f"Ray task lost: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        store = run.store
        store.write_status("failed", store.status().get("tasks_done", 0), reason)
        return RunOutcome(run, "failed", reason=reason)
    return dataclasses.replace(outcome, run=run)
