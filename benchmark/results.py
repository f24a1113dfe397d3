"""The result store: one folder per (benchmark, method, seed), atomic files, a checkpoint after each task.

Layout of ``<results>/<bench>/<method>/seed<k>/``:
- ``config.json``: the resolved run config (hyper-parameters, stream record, versions, git commit);
- ``status.json``: ``running`` / ``finished`` / ``failed`` (with the reason) and the tasks done;
- ``predictions/task<i>.npz``: labels and top-5 predictions after task i (metrics are computed from these);
- ``timing.json``: train/eval seconds and peak memory per task;
- ``checkpoint.pt``: the method's state after the last finished task (resume), removed when the run finishes;
- ``metrics.json``: the metrics of the finished run plus the parameter report;
- ``log.txt``: the run's log lines.

Every file is written to a temporary name in the same folder and renamed, so none is ever half-written.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.metrics import Evaluation


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
        """The stored status, or ``{"state": "new"}``."""
        return read_json(self.status_path) if self.status_path.exists() else {"state": "new"}

    def write_status(self, state: str, tasks_done: int, reason: str | None = None) -> None:
        """Record ``running``/``finished``/``failed``."""
        payload = {"state": state, "tasks_done": tasks_done}
        if reason:
            payload["reason"] = reason
        atomic_write_json(self.status_path, payload)

    def clear(self) -> None:
        """Remove every file of this run (``--fresh``)."""
        if self.path.exists():
            for item in sorted(self.path.rglob("*"), reverse=True):
                item.unlink() if item.is_file() or item.is_symlink() else item.rmdir()

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
            with np.load(self.prediction_path(index)) as data:
                evaluations.append(Evaluation(labels=data["labels"], top5=data["top5"]))
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
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def append_log(self, line: str) -> None:
        """Append one line to ``log.txt`` (append-only, so a partial line can only be the last one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "log.txt", "a") as file:
            file.write(line.rstrip("\n") + "\n")


def find_runs(root: Path) -> list[Path]:
    """Every run folder (holding a ``config.json``) under a results root."""
    return sorted(path.parent for path in Path(root).glob("*/*/seed*/config.json"))
