"""The runner: for each (benchmark, method, seed), train task by task and evaluate on all seen classes.

The runner owns the data: a method gets only the current task's training images (rehearsal-free) and never
the test split; it returns logits, and the runner stores predictions from which metrics are computed. After
each task a checkpoint lets a killed run continue; finished runs are skipped unless ``fresh``.

:func:`execute` holds the run folder's lock (``benchmark/locking.py``) while it deletes (``fresh``), trains or
records, so whichever launcher calls it gets one process per run; a run locked by another process comes back
as a :class:`RunOutcome` in state ``locked`` whose reason names the holder. Stored state is checked
(``benchmark/integrity.py``) before a run resumes and before its metrics are computed.
"""
from __future__ import annotations

import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmark.backbones import build_backbone, input_size
from benchmark.checkpoints import checkpoint_state, restore_checkpoint, serialized_size
from benchmark.config import as_dict, resolve_hparams
from benchmark.errors import ClbenchError
from benchmark.integrity import (IntegrityError, check_predictions, config_digest, read_json_file, read_predictions,
                                 read_status, read_timing, stream_fingerprint)
from benchmark.locking import RunLocked, run_lock
from benchmark.method import Method, SilentMonitor, Task, TrainingMonitor
from benchmark.metrics import Evaluation, compute_metrics
from benchmark.precision import autocast, check_precision
from benchmark.provenance import git_commit, package_versions
from benchmark.registry import METHODS
from benchmark.results import RunStore, atomic_write_json
from benchmark.streams import Stream, benchmark_family, build_stream, parse_benchmark

DEFAULT_BACKBONES = {
    "cifar100": "vit_base_patch16_224.augreg_in21k",
    "imr": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "ima": "vit_base_patch16_224.augreg_in21k",
    "vtab": "vit_base_patch16_224.augreg_in21k",
    "digits": "vit_tiny_shapes",
}
DEFAULT_SEED = 1993


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU. An unavailable CUDA request is an error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ClbenchError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClbenchError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


@dataclass
class RunRequest:
    """Everything that describes one run; the CLI fills it from its options."""

    bench: str
    method: str
    seed: int = DEFAULT_SEED
    backbone: str | None = None
    weights: str | None = None
    device: str | None = "auto"
    data_root: Path = Path("data")
    overrides: dict[str, str] = field(default_factory=dict)
    results_dir: Path = Path("results")
    workers: int | None = None
    fresh: bool = False
    max_tasks: int | None = None
    variant: str | None = None  # a grid variant's name: the run folder is ``<method>[<variant>]``
    precision: str = "fp32"
    """Autocast precision of training and evaluation: fp32 (default), bf16, fp16 (``benchmark/precision.py``)."""


@dataclass
class ResolvedRun:
    """A validated request: method class, hyper-parameters and backbone name (no data loaded yet)."""

    request: RunRequest
    method_class: type[Method]
    family: str
    num_classes: int
    num_tasks: int
    hparams: Any
    backbone: str

    @property
    def name(self) -> str:
        """The method, with its grid variant: ``cl_lora`` or ``cl_lora[rank=5,targets=q+v]``."""
        variant = self.request.variant
        return f"{self.request.method}[{variant}]" if variant else self.request.method

    @property
    def store(self) -> RunStore:
        return RunStore(self.request.results_dir, self.request.bench, self.name, self.request.seed)


def resolve_run(request: RunRequest) -> ResolvedRun:
    """Check names and options (clear errors before any training) and resolve hyper-parameters."""
    spec, num_tasks = parse_benchmark(request.bench)
    family = benchmark_family(request.bench)
    method_class = METHODS.get(request.method)
    hparams = _resolve_method_hparams(request.method, method_class, family, request.overrides)
    backbone = request.backbone or method_class.default_backbones.get(family) or DEFAULT_BACKBONES[family]
    check_precision(request.precision)
    if request.max_tasks is not None and not 1 <= request.max_tasks <= num_tasks:
        raise ClbenchError(f"--max-tasks must be between 1 and {num_tasks} for {request.bench}")
    return ResolvedRun(request, method_class, family, spec.num_classes, num_tasks, hparams, backbone)


def _resolve_method_hparams(name: str, method_class: type[Method], family: str, overrides: dict[str, str]) -> Any:
    """Hyper-parameters of a method; an error names the method and the ``--set`` key(s) that caused it
    (``cl_lora: --set rank=-3: rank must be >= 1``)."""
    defaults = method_class.family_defaults(family)
    try:
        return resolve_hparams(method_class.config_class, defaults, overrides)
    except ClbenchError as error:
        message = str(error)
    if message.startswith("--set "):  # a parse error already names key and value
        raise ClbenchError(f"{name}: {message}") from None
    culprits = []
    for key, value in overrides.items():  # which override fails on its own names the key
        try:
            resolve_hparams(method_class.config_class, defaults, {key: value})
        except ClbenchError:
            culprits.append(f"{key}={value}")
    settings = ", ".join(culprits or [f"{key}={value}" for key, value in overrides.items()])
    raise ClbenchError(f"{name}: --set {settings}: {message}" if settings else f"{name}: {message}") from None


def default_workers(family: str) -> int:
    """DataLoader workers when ``--workers`` is not given: 0 for the in-memory digits, else min(8, CPUs
    available to this process)."""
    from benchmark.preflight import default_workers as available_workers

    return 0 if family == "digits" else available_workers()


def build_method(run: ResolvedRun, device: torch.device, pretrained: bool = True) -> Method:
    """Seed torch as the official code does (before the model is built), then build backbone and method."""
    torch.manual_seed(run.request.seed)
    backbone = build_backbone(run.backbone, run.request.weights, pretrained=pretrained)
    return run.method_class(backbone, run.hparams, num_classes=run.num_classes, num_tasks=run.num_tasks,
                            device=device, seed=run.request.seed)


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
        "overrides": dict(request.overrides),
        "stream": stream.describe(),
        "fingerprint": {"config_sha256": config_digest(resume_fields(run)), **stream_fingerprint(
            stream.class_order, [stream.eval_labels(index) for index in range(stream.num_tasks)])},
        "versions": package_versions(),
        "git": git_commit(),
        "command": sys.argv,
    }


RESUME_KEYS = ("bench", "method", "seed", "backbone", "weights", "hparams", "precision")


def resume_fields(run: ResolvedRun) -> dict[str, Any]:
    """The config fields a stored run must share with this one to be resumed or skipped."""
    request = run.request
    return {"bench": request.bench, "method": request.method, "seed": request.seed, "backbone": run.backbone,
            "weights": str(request.weights) if request.weights else None, "hparams": as_dict(run.hparams),
            "precision": request.precision}


def check_resumable(run: ResolvedRun) -> None:
    """Stored results of a different config under the same folder are an error (unless ``fresh``); a stored
    config that does not match its own fingerprint (edited, or garbage) is an :class:`IntegrityError`."""
    store = run.store
    if run.request.fresh or not store.config_path.exists():
        return
    stored = read_json_file(store.config_path)
    fingerprint = stored.get("fingerprint")
    # (configs stored before precisions existed have no "precision" in their fingerprint)
    fingerprinted = {key: stored.get(key) for key in RESUME_KEYS if key != "precision" or "precision" in stored}
    if fingerprint is not None and (not isinstance(fingerprint, dict) or fingerprint.get("config_sha256")
                                    != config_digest(fingerprinted)):
        raise IntegrityError(store.config_path, "does not match its own fingerprint (edited or damaged)")
    current = resume_fields(run)
    # Runs stored before precisions existed ran in fp32.
    changed = [key for key in RESUME_KEYS if stored.get(key, "fp32" if key == "precision" else None) != current[key]]
    if changed:
        raise ClbenchError(f"{store.path} holds a run with a different config ({', '.join(changed)}); pass --fresh "
                           "to replace it or choose another --results-dir")


def seen_classes(run: ResolvedRun, task_index: int) -> int:
    """Classes seen after task ``task_index`` (every benchmark splits its classes evenly)."""
    return run.num_classes // run.num_tasks * (task_index + 1)


def check_stored_run(run: ResolvedRun) -> None:
    """Everything a run has stored, checked without building its stream (the preflight's part): status,
    config (resumable, fingerprint), timing, metrics of a finished run, and, for a run that will resume, the
    checkpoint against the task count and each predictions file against the stored fingerprint."""
    store = run.store
    status = read_status(store.status_path, run.num_tasks) if store.status_path.exists() else {"state": "new"}
    check_resumable(run)
    if status["state"] == "finished" and store.metrics_path.exists():
        read_json_file(store.metrics_path)
        return
    if store.timing_path.exists():
        read_timing(store.timing_path)
    checkpoint = store.load_checkpoint()
    if checkpoint is None:
        return  # the run starts from task 0 and rewrites every file
    done = checkpoint["tasks_done"]
    if not 0 <= done <= run.num_tasks:
        raise IntegrityError(store.checkpoint_path, f"records {done} tasks done; {run.request.bench} has "
                                                    f"{run.num_tasks}")
    fingerprint = read_json_file(store.config_path).get("fingerprint", {}) if store.config_path.exists() else {}
    digests = fingerprint.get("eval_labels_sha256") if isinstance(fingerprint, dict) else None
    if digests is None:  # stored before fingerprints existed: the runner checks against the stream
        digests = [None] * run.num_tasks
    elif not isinstance(digests, list) or len(digests) != run.num_tasks:
        raise IntegrityError(store.config_path, f"holds a fingerprint of {len(digests)} tasks, not "
                                                f"{run.num_tasks}" if isinstance(digests, list) else
                             "holds a damaged fingerprint")
    for index in range(done):
        path = store.prediction_path(index)
        labels, top5 = read_predictions(path)
        check_predictions(path, labels, top5, None, seen_classes(run, index), digests[index])


def verify_predictions(run: ResolvedRun, store: RunStore, stream: Stream, tasks: int) -> None:
    """Each stored predictions file of tasks 0..tasks-1 holds that task's evaluation labels, as the stream
    says, and class ids among the seen classes: checked on resume and before metrics are computed."""
    for index in range(tasks):
        path = store.prediction_path(index)
        labels, top5 = read_predictions(path)
        check_predictions(path, labels, top5, stream.eval_labels(index), sum(stream.increments[: index + 1]))


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


@torch.inference_mode()
def evaluate(method: Method, loader: DataLoader, device: torch.device, precision: str = "fp32") -> Evaluation:
    """Labels and top-5 predictions of ``method`` on the seen-class test set, batched, in loader order.

    ``predict`` runs under the run's autocast precision; the top-5 are taken from float32 logits.
    """
    method.eval()
    labels, top5 = [], []
    for images, targets in loader:
        with autocast(precision, device):
            logits = method.predict(images.to(device, non_blocking=True)).float()
        if logits.ndim != 2 or logits.shape[1] != method.seen_classes:
            raise RuntimeError(f"{method.registry_name}.predict returned shape {tuple(logits.shape)}, expected "
                               f"(batch, {method.seen_classes})")
        top5.append(logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu())
        labels.append(targets)
    return Evaluation(labels=torch.cat(labels).numpy(), top5=torch.cat(top5).numpy())


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


def make_loader(dataset, batch_size: int, workers: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> DataLoader:
    """A task's loader; on CUDA with pinned memory and (with workers) persistent workers, so that the workers'
    start-up is paid once per loader rather than once per epoch."""
    cuda = device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
                      pin_memory=cuda, persistent_workers=cuda and workers > 0)


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
    try:
        return _train_and_evaluate(run, store, log, monitor_factory or (lambda label, total: SilentMonitor()))
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
                        monitor_factory: MonitorFactory) -> RunOutcome:
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
                for key in ("class_order_sha256", "eval_labels_sha256")):
            raise IntegrityError(store.config_path, "was run on another stream (class order or evaluation labels "
                                                    "differ)")
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
    store.write_status("running", start)
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
        evaluation = evaluate(method, eval_loader, device, request.precision)
        eval_seconds = time.perf_counter() - began
        peak, peak_source = _peak_memory_mb(device)
        store.save_evaluation(index, evaluation)
        timing.append({"task": index, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                       "peak_memory_mb": peak, "peak_memory_source": peak_source})
        atomic_write_json(store.timing_path, timing)
        store.save_checkpoint({"tasks_done": index + 1, **checkpoint_state(method)})  # lean: no frozen backbone
        store.write_status("running", index + 1)
        partial = compute_metrics(store.load_evaluations(index + 1), stream.increments)
        log(f"{request.method} task {index + 1}/{run.num_tasks}: A_{index + 1} = "
            f"{partial['accuracy_curve_rounded'][-1]:.2f}  avg = {partial['avg_acc']:.2f}  "
            f"(train {train_seconds:.1f}s, eval {eval_seconds:.1f}s)")
    if stop < run.num_tasks:
        store.write_status("partial", stop)
        log(f"stopped after task {stop} of {run.num_tasks} (--max-tasks); run again to continue")
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
    log(f"finished {request.bench}/{request.method}/seed{request.seed}: avg_acc {metrics['avg_acc']:.2f}, "
        f"last_acc {metrics['last_acc']:.2f}, forgetting (PILOT) {metrics['forgetting_pilot']:.2f}")
    return RunOutcome(run, "finished", metrics=metrics)


def describe_parameters(run: ResolvedRun) -> dict:
    """Parameter report after all tasks of the benchmark, built from shapes only (no data, no weights)."""
    method = build_method(run, torch.device("cpu"), pretrained=False)
    spec, num_tasks = parse_benchmark(run.request.bench)
    per_task = spec.num_classes // num_tasks
    method.restore_structure([per_task] * num_tasks)
    method.task_sizes = [per_task] * num_tasks
    report = method.parameter_report().as_dict()
    report["checkpoint_bytes"] = serialized_size(checkpoint_state(method))
    report["checkpoint_full_bytes"] = serialized_size(method.state_dict())
    return report

