"""Continual-learning metrics computed from stored predictions and labels (as Continuum does).

Definitions follow ``data_protocol.md`` ("Metrics"): tasks t = 1..T, groups = the tasks' class blocks.
- ``acc_matrix[i][j]``: top-1 % on task j's test images after training task i (NaN for j > i);
- ``accuracy_curve[i]`` (A_i): top-1 % over **all** seen test images after task i (sample-weighted);
- ``avg_acc``: the official toolbox's Ā = mean of the A_i **rounded to 2 decimals** (PILOT ``trainer.py``);
  ``avg_acc_unrounded`` without the rounding;
- ``last_acc``: A_T;
- ``avg_acc_task_mean`` / ``last_acc_task_mean``: the same with A_i replaced by the plain mean of row i of the
  matrix (the per-task mean that some other harnesses report; differs when task test sets differ in size);
- ``forgetting_pilot``: mean over j < T of (max_{i >= j} acc[i][j] - acc[T][j]) on the rounded matrix, in points;
- ``forgetting_avalanche``: mean over j < T of (acc[j][j] - acc[T][j]), rounded matrix, as a fraction in [0, 1].

Every accuracy is computed from integer counts as ``correct * 100 / n`` (:func:`accuracy_percent`), the official
toolkit's order of operations: ``100 * (correct / n)`` rounds the other way at exact .xx5 ties (109 of 800 gives
13.625 exactly, which rounds to 13.62, but 13.625000000000002, which rounds to 13.63).
"""
from __future__ import annotations

import numpy as np

from benchmark.store.results import Evaluation


def accuracy_percent(correct: int | np.ndarray, total: int | np.ndarray) -> float | np.ndarray:
    """Top-1 % from integer counts, ``correct * 100 / total`` (the official order of operations); NaN for 0."""
    correct, total = np.asarray(correct, dtype=np.int64), np.asarray(total, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(total > 0, correct * 100 / np.maximum(total, 1), np.nan)
    return float(result) if result.ndim == 0 else result


def task_of_labels(labels: np.ndarray, increments: list[int]) -> np.ndarray:
    """Task index (0-based) of each global label, given classes per task."""
    boundaries = np.cumsum(increments)
    return np.searchsorted(boundaries, labels, side="right")


def accuracy_row(evaluation: Evaluation, increments: list[int], task_index: int) -> np.ndarray:
    """Top-1 % per task group 0..task_index after training ``task_index`` (vectorised over samples)."""
    groups = task_of_labels(evaluation.labels, increments)
    n_groups = task_index + 1
    hits = np.bincount(groups[evaluation.top1 == evaluation.labels], minlength=n_groups)[:n_groups]
    counts = np.bincount(groups, minlength=n_groups)[:n_groups]
    return accuracy_percent(hits, counts)


def compute_metrics(evaluations: list[Evaluation], increments: list[int]) -> dict:
    """All metrics of a run (or of its finished prefix) from its per-task evaluations."""
    steps = len(evaluations)
    matrix = np.full((steps, steps), np.nan)
    curve, top5_curve = [], []
    for i, evaluation in enumerate(evaluations):
        matrix[i, : i + 1] = accuracy_row(evaluation, increments, i)
        total = len(evaluation.labels)
        curve.append(accuracy_percent(int(np.sum(evaluation.top1 == evaluation.labels)), total))
        top5_curve.append(accuracy_percent(int(np.sum((evaluation.top5 == evaluation.labels[:, None]).any(axis=1))),
                                           total))
    rounded_matrix = np.around(matrix, 2)
    rounded_curve = [float(np.around(value, 2)) for value in curve]
    row_means = [float(np.nanmean(matrix[i, : i + 1])) for i in range(steps)]
    return {
        "tasks_evaluated": steps,
        "acc_matrix": _nested_list(matrix),
        "acc_matrix_rounded": _nested_list(rounded_matrix),
        "accuracy_curve": curve,
        "accuracy_curve_rounded": rounded_curve,
        "top5_curve": top5_curve,
        "avg_acc": float(np.mean(rounded_curve)) if steps else float("nan"),
        "avg_acc_unrounded": float(np.mean(curve)) if steps else float("nan"),
        "last_acc": rounded_curve[-1] if steps else float("nan"),
        "last_acc_unrounded": curve[-1] if steps else float("nan"),
        "avg_acc_task_mean": float(np.mean(row_means)) if steps else float("nan"),
        "last_acc_task_mean": row_means[-1] if steps else float("nan"),
        "forgetting_pilot": forgetting_pilot(rounded_matrix),
        "forgetting_avalanche": forgetting_avalanche(rounded_matrix),
    }


def forgetting_pilot(matrix: np.ndarray) -> float:
    """PILOT: mean over j < T of (max over i >= j of acc[i][j] - acc[T][j]), in points; 0 for T = 1."""
    steps = matrix.shape[0]
    if steps < 2:
        return 0.0
    best = np.nanmax(matrix[:, : steps - 1], axis=0)
    return float(np.mean(best - matrix[-1, : steps - 1]))


def forgetting_avalanche(matrix: np.ndarray) -> float:
    """Avalanche: mean over j < T of (acc[j][j] - acc[T][j]), as a fraction; can be negative."""
    steps = matrix.shape[0]
    if steps < 2:
        return 0.0
    after_learning = np.diag(matrix)[: steps - 1]
    return float(np.mean(after_learning - matrix[-1, : steps - 1]) / 100.0)


def _nested_list(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(value) else float(value) for value in row] for row in matrix]
