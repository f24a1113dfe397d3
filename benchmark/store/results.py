"""The result store: one folder per (benchmark, method, seed), atomic files, a checkpoint after each task.

Layout of ``<results>/<bench>/<method>/seed<k>/``:
- ``config.json``: the resolved run config (hyper-parameters, stream record, versions, git commit);
- ``status.json``: ``running`` / ``finished`` / ``failed`` (with the reason) and the tasks done;
- ``predictions/task<i>.npz``: labels and top-5 predictions after task i (metrics are computed from these);
- ``timing.json``: train/eval seconds and peak memory per task;
- ``checkpoint.pt``: the method's state after the last finished task (resume), removed when the run finishes;
- ``metrics.json``: the metrics of the finished run plus the parameter report;
- ``log.txt``: the run's log lines;
- ``.lock``: the run's lock while a process works on it (``benchmark/store/locking.py``).

Every file is written to a temporary name in the same folder and renamed, so none is ever half-written;
a temporary left by a killed process (``.*.tmp``) is removed at the next run of that folder. Files get the
usual permissions (``0666`` less the umask, ``0644`` under the common umask), so a shared results dir stays
readable. Stored files are read through :mod:`benchmark.store.integrity`: an unreadable one is one clear error.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.store.integrity import IntegrityError, read_predictions, read_status
from benchmark.store.locking import LOCK_NAME


@dataclass
class Evaluation:
    """Predictions after one task: ``labels`` (N,), ``top5`` (N, k) class ids best first (k <= 5)."""

    labels: np.ndarray
    top5: np.ndarray

    @property
    def top1(self) -> np.ndarray:
        """The argmax predictions."""
        return self.top5[:, 0]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp creates 0600: teammates could not read results
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """JSON with sorted keys, written atomically."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


class RunStore:
    """Files of one run (benchmark, method, seed) under a results root."""

    def __init__(self, root: Path, bench: str, method: str, seed: int) -> None:
        self.path = Path(root) / bench / method / f"seed{seed}"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def timing_path(self) -> Path:
        return self.path / "timing.json"

    def prediction_path(self, task_index: int) -> Path:
        """Where the evaluation after ``task_index`` is stored."""
        return self.path / "predictions" / f"task{task_index}.npz"

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> dict:
        """The stored status, or ``{"state": "new"}``; an unreadable one is an :class:`IntegrityError`."""
        return read_status(self.status_path) if self.status_path.exists() else {"state": "new"}

    def write_status(self, state: str, tasks_done: int, reason: str | None = None) -> None:
        """Record ``running``/``finished``/``failed``/``interrupted``."""
        payload = {"state": state, "tasks_done": tasks_done}
        if reason:
            payload["reason"] = reason
        atomic_write_json(self.status_path, payload)

    def clear(self) -> None:
        """Remove every file of this run (``--fresh``) but its lock file, which the caller holds."""
        if self.path.exists():
            for item in sorted(self.path.rglob("*"), reverse=True):
                if item == self.path / LOCK_NAME:
                    continue
                item.unlink() if item.is_file() or item.is_symlink() else item.rmdir()

    def remove_temporaries(self) -> list[Path]:
        """Delete ``.*.tmp`` files left by a killed writer (call only while holding the run's lock)."""
        leftovers = [path for folder in (self.path, self.path / "predictions") for path in folder.glob(".*.tmp")]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    # -- per-task data ------------------------------------------------------------------------------
    def save_evaluation(self, task_index: int, evaluation: Evaluation) -> None:
        """Store labels and top-5 predictions after a task."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=evaluation.labels, top5=evaluation.top5)
        atomic_write_bytes(self.prediction_path(task_index), buffer.getvalue())

    def load_evaluations(self, tasks: int) -> list[Evaluation]:
        """The evaluations after tasks 0..tasks-1."""
        evaluations = []
        for index in range(tasks):
            labels, top5 = read_predictions(self.prediction_path(index))
            evaluations.append(Evaluation(labels=labels, top5=top5))
        return evaluations

    def save_checkpoint(self, state: dict) -> None:
        """Store the resume state (method state dict, tasks done) atomically."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(self) -> dict | None:
        """The resume state, or None."""
        if not self.checkpoint_path.exists():
            return None
        if not zipfile.is_zipfile(self.checkpoint_path):
            raise IntegrityError(self.checkpoint_path, "is not a checkpoint (not a torch zip archive)")
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as error:  # truncated zip, foreign pickle, unreadable file, ...
            raise IntegrityError(self.checkpoint_path, f"cannot be read as a checkpoint ({type(error).__name__}: "
                                                       f"{error})") from None
        if not isinstance(state, dict) or not isinstance(state.get("tasks_done"), int):
            raise IntegrityError(self.checkpoint_path, "is not a checkpoint of this harness (no tasks_done)")
        return state

    def append_log(self, line: str) -> None:
        """Append one line to ``log.txt`` (append-only, so a partial line can only be the last one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "log.txt", "a") as file:
            file.write(line.rstrip("\n") + "\n")


def find_runs(root: Path) -> list[Path]:
    """Every run folder (holding a ``config.json`` or a ``status.json``: a run that failed before its config
    was written has only the latter) under a results root."""
    return sorted({path.parent for name in ("config.json", "status.json")
                   for path in Path(root).glob(f"*/*/seed*/{name}")})
