"""Checks of what a run folder has stored: a resumable config and fingerprint, status, timing, checkpoint and
predictions. The preflight runs them without building the stream; the runner again on resume, against it."""
from __future__ import annotations

from typing import Any

from benchmark.config import as_dict
from benchmark.data.streams import Stream
from benchmark.errors import ClbenchError
from benchmark.runs.resolve import ResolvedRun
from benchmark.store.integrity import (
    IntegrityError,
    check_predictions,
    config_digest,
    read_json_file,
    read_predictions,
    read_status,
    read_timing,
)
from benchmark.store.results import RunStore

RESUME_KEYS = ("bench", "method", "seed", "backbone", "weights", "hparams", "precision")
PROVENANCE_HPARAMS = ("defaults_source",)
"""Saved hyper-parameter fields that only document a run: not compared when a stored run is matched."""


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
    changed = [key for key in RESUME_KEYS if _compared(key, stored.get(key, "fp32" if key == "precision" else None))
               != _compared(key, current[key])]
    if changed:
        raise ClbenchError(f"{store.path} holds a run with a different config ({', '.join(changed)}); pass --fresh "
                           "to replace it or choose another --results-dir")


def _compared(key: str, value: Any) -> Any:
    """A resume field as matched: hyper-parameters without :data:`PROVENANCE_HPARAMS`."""
    if key == "hparams" and isinstance(value, dict):
        return {name: item for name, item in value.items() if name not in PROVENANCE_HPARAMS}
    return value


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
