"""Integrity of stored run state: fingerprints of the stream and the config, and checks of every stored file.

A run's ``config.json`` carries a ``fingerprint``: the SHA-256 of the class order, the label sequence of each
task's evaluation set (one hash per task) and of the resume-relevant config fields. Before a run resumes,
and before metrics are computed, every stored predictions file is checked against the labels the stream says
that task's evaluation holds, and the checkpoint against the task count. A file that cannot be read or does
not fit is an :class:`IntegrityError`: one line naming the file and the fix (``--fresh`` for that run).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmark.errors import ClbenchError

FRESH_HINT = "rerun this run with --fresh to discard its stored results"


class IntegrityError(ClbenchError):
    """A stored file of a run is unreadable or inconsistent with the run; the message names it and the fix."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {problem}; {FRESH_HINT}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def labels_digest(labels: np.ndarray) -> str:
    """SHA-256 of a label sequence (as little-endian int64, so dtype and platform do not matter)."""
    return _sha256(np.ascontiguousarray(np.asarray(labels), dtype="<i8").tobytes())


def config_digest(fields: dict[str, Any]) -> str:
    """SHA-256 of the resume-relevant config fields (canonical JSON)."""
    return _sha256(json.dumps(fields, sort_keys=True, default=str).encode())


def stream_fingerprint(class_order: Sequence[int], eval_labels: Sequence[np.ndarray]) -> dict[str, Any]:
    """The stream part of a fingerprint: class order, per-task evaluation label digests and counts."""
    per_task = [labels_digest(labels) for labels in eval_labels]
    return {"class_order_sha256": _sha256(json.dumps([int(c) for c in class_order]).encode()),
            "eval_labels_sha256": per_task, "eval_counts": [int(len(labels)) for labels in eval_labels],
            "stream_sha256": _sha256("".join(per_task).encode()
                                     + json.dumps([int(c) for c in class_order]).encode())}


# -- reading stored files --------------------------------------------------------------------------------
def read_json_file(path: Path, expected: type | tuple[type, ...] = dict) -> Any:
    """Parse a stored JSON file; unreadable, not JSON, or not of the ``expected`` type: :class:`IntegrityError`."""
    try:
        payload = json.loads(Path(path).read_bytes())
    except OSError as error:
        raise IntegrityError(path, f"cannot be read ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise IntegrityError(path, f"is not valid JSON ({error})") from None
    if not isinstance(payload, expected):
        raise IntegrityError(path, f"holds a JSON {type(payload).__name__}, not the expected structure")
    return payload


def read_status(path: Path, num_tasks: int | None = None) -> dict:
    """A stored ``status.json``: a dict with a string ``state`` and an integer ``tasks_done`` in range."""
    status = read_json_file(path)
    state, tasks_done = status.get("state"), status.get("tasks_done", 0)
    if not isinstance(state, str) or not isinstance(tasks_done, int) or isinstance(tasks_done, bool) \
            or tasks_done < 0 or (num_tasks is not None and tasks_done > num_tasks):
        raise IntegrityError(path, f"is not a run status (state {state!r}, tasks_done {tasks_done!r})")
    return status


def read_timing(path: Path) -> list[dict]:
    """A stored ``timing.json``: a list of per-task dicts."""
    timing = read_json_file(path, list)
    if not all(isinstance(entry, dict) and isinstance(entry.get("train_seconds"), (int, float))
               for entry in timing):
        raise IntegrityError(path, "is not a list of per-task timings")
    return timing


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, top5)`` of a stored predictions file, checked for shape and dtype."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise IntegrityError(path, "is not a predictions file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            labels, top5 = np.asarray(data["labels"]), np.asarray(data["top5"])
    except FileNotFoundError:
        raise IntegrityError(path, "is missing") from None
    except Exception as error:  # BadZipFile, KeyError, ValueError, EOFError, OSError: they vary by numpy version
        raise IntegrityError(path, f"cannot be read as a predictions file ({type(error).__name__}: {error})") \
            from None
    if labels.ndim != 1 or top5.ndim != 2 or len(top5) != len(labels) \
            or not np.issubdtype(labels.dtype, np.integer) or not np.issubdtype(top5.dtype, np.integer):
        raise IntegrityError(path, f"holds labels {labels.shape} and top5 {top5.shape}, not N and N x k integers")
    return labels, top5


def check_predictions(path: Path, labels: np.ndarray, top5: np.ndarray, expected_labels: np.ndarray | None,
                      seen_classes: int, expected_digest: str | None = None) -> None:
    """Predictions after a task must hold exactly that task's evaluation labels (same order) and top-k class
    ids among the seen classes. ``expected_labels`` (from the stream) or ``expected_digest`` (from the stored
    fingerprint) gives the labels."""
    if expected_labels is not None and (len(labels) != len(expected_labels)
                                        or not np.array_equal(labels, expected_labels)):
        raise IntegrityError(path, f"holds {len(labels)} labels that are not this task's evaluation labels "
                                   f"({len(expected_labels)} expected)")
    if expected_digest is not None and labels_digest(labels) != expected_digest:
        raise IntegrityError(path, "holds labels that are not this task's evaluation labels (fingerprint differs)")
    if top5.shape[1] != min(5, seen_classes) or (top5.size and (top5.min() < 0 or top5.max() >= seen_classes)):
        raise IntegrityError(path, f"holds predictions of shape {top5.shape} or class ids outside "
                                   f"0..{seen_classes - 1}")
