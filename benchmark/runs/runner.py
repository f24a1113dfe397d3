"""The runner: for each (benchmark, method, seed), train task by task and evaluate on all seen classes.

The runner owns the data: a method gets only the current task's training images (rehearsal-free) and never
the test split; it returns logits, and the runner stores predictions from which metrics are computed. After
each task a checkpoint lets a killed run continue; finished runs are skipped unless ``fresh``.

:func:`execute` holds the run folder's lock (``benchmark/store/locking.py``) while it deletes (``fresh``), trains or
records, so whichever launcher calls it gets one process per run; a run locked by another process comes back
as a :class:`RunOutcome` in state ``locked`` whose reason names the holder. Stored state is checked
(``benchmark/store/integrity.py``) before a run resumes and before its metrics are computed.
"""
from __future__ import annotations

import resource
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from benchmark.checkpoints import checkpoint_state, restore_checkpoint
from benchmark.config import as_dict
from benchmark.data.streams import Stream, build_stream
from benchmark.errors import ClbenchError
from benchmark.method import SilentMonitor, Task, TrainingMonitor
from benchmark.models.backbones import input_size
from benchmark.reporting.metrics import compute_metrics
from benchmark.reporting.trackers import Trackers
from benchmark.runs.eval_cache import EvalCache
from benchmark.runs.evaluation import evaluate, make_loader
from benchmark.runs.resolve import ResolvedRun, build_method, default_workers, describe_parameters, resolve_device
from benchmark.runs.stored import check_resumable, resume_fields, verify_predictions
from benchmark.store.integrity import IntegrityError, config_digest, read_json_file, read_timing, stream_fingerprint
from benchmark.store.locking import RunLocked, run_lock
from benchmark.store.provenance import git_commit, package_versions
from benchmark.store.results import RunStore, atomic_write_json


def run_config(run: ResolvedRun, stream: Stream, device: torch.device) -> dict:
    """The resolved config saved beside the results."""
    request = run.request
    return {
        "bench": request.bench,
        "method": request.method,
        "variant": request.variant,
        "seed": request.seed,
        "backbone": run.backbone,
        "weights": str(request.weights) if request.weights else None,
        "device": str(device),
        "data_root": str(request.data_root),
        "hparams": as_dict(run.hparams),
        "precision": request.precision,
        "eval_cache": request.eval_cache,
        "overrides": dict(request.overrides),
        "stream": stream.describe(),
        "fingerprint": {"config_sha256": config_digest(resume_fields(run)), **stream_fingerprint(
            stream.class_order, [stream.eval_labels(index) for index in range(stream.num_tasks)]),
            "dataset_sha256": stream.raw.fingerprint},  # a declared dataset's file and image list (else None)
        "versions": package_versions(),
        "git": git_commit(),
        "command": sys.argv,
    }


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


class RunLog:
    """Writes a run's log lines to its ``log.txt`` and, unless silenced, to the console."""

    def __init__(self, store: RunStore, echo: Callable[[str], None] | None) -> None:
        self.store, self.echo = store, echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        self.store.append_log(line)
        if self.echo is not None:
            self.echo(message)


@dataclass
class RunOutcome:
    """How a run ended: ``finished``, ``partial`` (``--max-tasks``), ``skipped`` (already finished),
    ``locked`` (another process holds the run; ``reason`` names it), or ``failed`` with a reason."""

    run: ResolvedRun
    state: str
    metrics: dict | None = None
    reason: str | None = None


MonitorFactory = Callable[[str, int], TrainingMonitor]


def execute(run: ResolvedRun, monitor_factory: MonitorFactory | None = None,
            echo: Callable[[str], None] | None = print) -> RunOutcome:
    """Train and evaluate one run task by task under its folder's lock, resuming from its checkpoint.

    Failures are recorded (and the caller goes on with other runs); a run another process holds comes back
    ``locked``; Ctrl-C records the run as ``interrupted`` and propagates.
    """
    store = run.store
    try:
        with run_lock(store.path):
            return _execute_locked(run, store, monitor_factory, echo)
    except RunLocked as error:
        return RunOutcome(run, "locked", reason=str(error))
    except OSError as error:  # the run folder or its lock cannot even be created (read-only or full disk)
        return RunOutcome(run, "failed", reason=f"cannot use {store.path}: {error.strerror or error}")


def _execute_locked(run: ResolvedRun, store: RunStore, monitor_factory: MonitorFactory | None,
                    echo: Callable[[str], None] | None) -> RunOutcome:
    request = run.request
    if request.fresh:
        store.clear()
    store.remove_temporaries()
    try:
        status = store.status()
        if status["state"] == "finished" and store.metrics_path.exists():
            return RunOutcome(run, "skipped", metrics=read_json_file(store.metrics_path))
    except IntegrityError as error:  # left as found: the user decides (--fresh)
        return RunOutcome(run, "failed", reason=str(error))
    log = RunLog(store, echo)
    trackers = Trackers(request.trackers, store.path, request.results_dir,
                        f"{request.bench}/{run.name}/seed{request.seed}", lambda line: _echo_or_log(log, line))
    try:
        return _train_and_evaluate(run, store, log, trackers.monitor_factory(
            monitor_factory or (lambda label, total: SilentMonitor())), trackers)
    except KeyboardInterrupt:
        _record(run, store, log, "interrupted", "interrupted (Ctrl-C)")
        raise
    except IntegrityError as error:
        reason = str(error)
        _echo_or_log(log, f"FAILED {request.bench}/{request.method}/seed{request.seed}: {reason}")
        return RunOutcome(run, "failed", reason=reason)
    except ClbenchError as error:
        reason = str(error)
    except Exception as error:  # recorded, and the other runs continue
        reason = f"{type(error).__name__}: {error}"
        try:
            store.append_log(traceback.format_exc())
        except OSError:
            pass  # the disk that failed the run may refuse the log too; the reason still reaches the caller
    finally:
        trackers.finish("failed")  # closes the trackers' runs of a run that did not get to finish them
    return RunOutcome(run, "failed", reason=_record(run, store, log, "failed", reason))


def _echo_or_log(log: RunLog, message: str) -> bool:
    """Log a line; when the run's folder refuses it (read-only, full), only echo it. True if written."""
    try:
        log(message)
        return True
    except OSError:
        if log.echo is not None:
            log.echo(message)
        return False


def _record(run: ResolvedRun, store: RunStore, log: RunLog, state: str, reason: str) -> str:
    """Record a failed or interrupted run in its log and status; a disk that refuses says so in the returned
    reason instead of raising (the recorder must survive a read-only or full disk)."""
    request = run.request
    _echo_or_log(log, f"{state.upper()} {request.bench}/{request.method}/seed{request.seed}: {reason}")
    try:
        try:
            tasks_done = store.status().get("tasks_done", 0)
        except IntegrityError:
            tasks_done = 0
        store.write_status(state, tasks_done, reason)
    except OSError as error:
        reason = f"{reason} (not recorded in {store.status_path}: {error.strerror or error})"
    return reason


def _train_and_evaluate(run: ResolvedRun, store: RunStore, log: RunLog,
                        monitor_factory: MonitorFactory, trackers: Trackers) -> RunOutcome:
    request = run.request
    device = resolve_device(request.device)
    method = build_method(run, device)
    stream = build_stream(request.bench, request.data_root, image_size=input_size(method.backbone),
                          seed=request.seed, profile=method.transform_profile,
                          order=run.method_class.requested_class_order(run.hparams))
    config = run_config(run, stream, device)
    checkpoint = store.load_checkpoint()
    if store.config_path.exists() and checkpoint is not None:
        check_resumable(run)
        stored = read_json_file(store.config_path)
        if stored.get("stream", {}).get("class_order") != config["stream"]["class_order"] or any(
                stored.get("fingerprint", {}).get(key, config["fingerprint"][key]) != config["fingerprint"][key]
                for key in ("class_order_sha256", "eval_labels_sha256", "dataset_sha256")):
            raise IntegrityError(store.config_path, "was run on another stream (class order, evaluation labels "
                                                    "or declared dataset differ)")
    atomic_write_json(store.config_path, config)
    for warning in stream.warnings:
        log(f"warning: {warning}")

    timing: list[dict] = read_timing(store.timing_path) if store.timing_path.exists() else []
    start = 0
    if checkpoint is not None:
        start = checkpoint["tasks_done"]
        if not 0 <= start <= run.num_tasks:
            raise IntegrityError(store.checkpoint_path, f"records {start} tasks done; {request.bench} has "
                                                        f"{run.num_tasks}")
        verify_predictions(run, store, stream, start)
        try:
            restore_checkpoint(method, checkpoint)  # lean: the frozen pretrained tensors come from the backbone
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise IntegrityError(store.checkpoint_path, f"does not fit {request.method} "
                                                        f"({type(error).__name__}: {error})") from None
        timing = timing[:start]
        log(f"resuming {request.bench}/{request.method}/seed{request.seed} after task {start}")
    stop = request.max_tasks or run.num_tasks
    workers = request.workers if request.workers is not None else default_workers(run.family)
    batch_size = run.hparams.batch_size
    # Kept for this process only: a resumed run recomputes what an earlier process held.
    cache = EvalCache(len(stream.eval_labels(run.num_tasks - 1))) if request.eval_cache else None
    store.write_status("running", start)
    trackers.start(config, lambda: describe_parameters(run), start)
    for index in range(start, stop):
        task_data = stream.tasks[index]
        # Seeding per task makes a resumed run identical to an uninterrupted one (augmentation, shuffling).
        torch.manual_seed(request.seed * 1000 + index)
        loader_generator = torch.Generator().manual_seed(request.seed * 1000 + index)
        task = Task(
            index=index, classes=list(task_data.classes), known_classes=sum(stream.increments[:index]),
            seen_classes=sum(stream.increments[: index + 1]), num_tasks=run.num_tasks,
            train_loader=make_loader(task_data.train, batch_size, workers, device, shuffle=True,
                                     generator=loader_generator),
            train_eval_loader=make_loader(task_data.train_eval, method.eval_batch_size, workers, device),
            monitor=monitor_factory(f"task {index + 1}/{run.num_tasks}", index), precision=request.precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        method.train()
        method.learn(task)
        train_seconds = time.perf_counter() - began
        eval_loader = make_loader(stream.eval_dataset(index), method.eval_batch_size, workers, device)
        began = time.perf_counter()
        evaluation = evaluate(method, eval_loader, device, request.precision, cache)
        eval_seconds = time.perf_counter() - began
        peak, peak_source = _peak_memory_mb(device)
        store.save_evaluation(index, evaluation)
        timing.append({"task": index, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                       "peak_memory_mb": peak, "peak_memory_source": peak_source,
                       "eval_cache_mb": cache.nbytes / 2**20 if cache else 0.0})
        atomic_write_json(store.timing_path, timing)
        store.save_checkpoint({"tasks_done": index + 1, **checkpoint_state(method)})  # lean: no frozen backbone
        store.write_status("running", index + 1)
        partial = compute_metrics(store.load_evaluations(index + 1), stream.increments)
        log(f"{request.method} task {index + 1}/{run.num_tasks}: A_{index + 1} = "
            f"{partial['accuracy_curve_rounded'][-1]:.2f}  avg = {partial['avg_acc']:.2f}  "
            f"(train {train_seconds:.1f}s, eval {eval_seconds:.1f}s"
            + (f", eval cache {cache.nbytes / 2**20:.1f} MB)" if cache and cache.nbytes else ")"))
        trackers.log_task(index, partial, train_seconds, eval_seconds)
    if stop < run.num_tasks:
        store.write_status("partial", stop)
        log(f"stopped after task {stop} of {run.num_tasks} (--max-tasks); run again to continue")
        trackers.finish("partial")
        return RunOutcome(run, "partial")
    verify_predictions(run, store, stream, run.num_tasks)
    metrics = compute_metrics(store.load_evaluations(run.num_tasks), stream.increments)
    metrics["parameters"] = method.parameter_report().as_dict()
    metrics["train_seconds"] = sum(entry["train_seconds"] for entry in timing)
    metrics["eval_seconds"] = sum(entry["eval_seconds"] for entry in timing)
    metrics["peak_memory_mb"] = max(entry["peak_memory_mb"] for entry in timing)
    atomic_write_json(store.metrics_path, metrics)
    store.write_status("finished", run.num_tasks)
    store.checkpoint_path.unlink(missing_ok=True)
    trackers.finish("finished", metrics)
    log(f"finished {request.bench}/{request.method}/seed{request.seed}: avg_acc {metrics['avg_acc']:.2f}, "
        f"last_acc {metrics['last_acc']:.2f}, forgetting (PILOT) {metrics['forgetting_pilot']:.2f}")
    return RunOutcome(run, "finished", metrics=metrics)


