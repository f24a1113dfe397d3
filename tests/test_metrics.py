"""Metrics against hand-computed values, including the VTAB golden matrix of data_protocol.md §10."""
import numpy as np
import pytest

from benchmark.reporting.metrics import Evaluation, accuracy_percent, compute_metrics, forgetting_avalanche, forgetting_pilot

VTAB_TEST_SIZES = [1000, 400, 985, 5400, 834]
# correct predictions per group after each task, giving the golden matrix's percentages
VTAB_CORRECT = [
    [875],
    [875, 329],
    [875, 324, 926],
    [874, 323, 926, 4318],
    [873, 321, 926, 4320, 832],
]


def _evaluation(correct_per_group: list[int], sizes: list[int], classes_per_task: int = 10) -> Evaluation:
    labels, top1 = [], []
    for group, (correct, size) in enumerate(zip(correct_per_group, sizes)):
        group_labels = group * classes_per_task + np.arange(size) % classes_per_task
        wrong = (group_labels + 1) % (len(correct_per_group) * classes_per_task)
        labels.append(group_labels)
        top1.append(np.where(np.arange(size) < correct, group_labels, wrong))
    labels, top1 = np.concatenate(labels), np.concatenate(top1)
    top5 = np.stack([top1, (top1 + 2) % 50, (top1 + 3) % 50, (top1 + 4) % 50, (top1 + 5) % 50], axis=1)
    return Evaluation(labels=labels, top5=top5)


@pytest.fixture
def vtab_metrics():
    evaluations = [_evaluation(row, VTAB_TEST_SIZES[: len(row)]) for row in VTAB_CORRECT]
    return compute_metrics(evaluations, [10] * 5)


def test_vtab_golden_matrix(vtab_metrics):
    matrix = vtab_metrics["acc_matrix_rounded"]
    assert matrix[1][:2] == [87.5, 82.25]
    assert matrix[4] == [87.3, 80.25, 94.01, 80.0, 99.76]
    assert matrix[0][1] is None  # entries j > i do not exist


def test_accuracy_is_sample_weighted(vtab_metrics):
    assert vtab_metrics["accuracy_curve_rounded"] == [87.5, 86.0, 89.1, 82.74, 84.37]
    assert vtab_metrics["avg_acc"] == pytest.approx(85.942)
    assert vtab_metrics["last_acc"] == 84.37
    # the per-task mean differs: row 2 is (87.5 + 82.25) / 2
    row_means = [87.5, 84.875]
    assert vtab_metrics["avg_acc_task_mean"] != pytest.approx(vtab_metrics["avg_acc"])
    assert np.mean([87.5, 84.875]) == pytest.approx(np.mean(row_means))


def test_forgetting_definitions(vtab_metrics):
    assert vtab_metrics["forgetting_pilot"] == pytest.approx(0.55)
    assert vtab_metrics["forgetting_avalanche"] == pytest.approx(0.0054)


def test_forgetting_max_includes_later_steps():
    matrix = np.array([[50.0, np.nan, np.nan], [70.0, 60.0, np.nan], [40.0, 30.0, 90.0]])
    assert forgetting_pilot(matrix) == pytest.approx(((70 - 40) + (60 - 30)) / 2)
    assert forgetting_avalanche(matrix) == pytest.approx(((50 - 40) + (60 - 30)) / 2 / 100)


def test_single_task_has_no_forgetting():
    metrics = compute_metrics([_evaluation([5], [10], classes_per_task=2)], [2])
    assert metrics["forgetting_pilot"] == 0.0
    assert metrics["accuracy_curve"] == [50.0]
    assert metrics["top5_curve"][0] >= metrics["accuracy_curve"][0]


def test_accuracy_from_integer_counts_rounds_ties_as_the_official_toolkit():
    # 109 of 800: correct * 100 / n = 13.625 exactly -> 13.62; 100 * (correct / n) = 13.625000000000002 -> 13.63
    assert accuracy_percent(109, 800) == 13.625
    assert np.around(accuracy_percent(109, 800), 2) == 13.62
    metrics = compute_metrics([_evaluation([109], [800])], [10])
    assert metrics["accuracy_curve"] == [13.625] and metrics["accuracy_curve_rounded"] == [13.62]
    assert metrics["acc_matrix"][0] == [13.625] and metrics["acc_matrix_rounded"][0] == [13.62]
    assert metrics["last_acc"] == 13.62 and metrics["avg_acc"] == 13.62


def test_per_task_and_overall_figures_agree_on_the_same_images():
    # two tasks of 800 test images each; after task 2 task 1 scores 109/800 and task 2 scores 109/800 too
    metrics = compute_metrics([_evaluation([109], [800]), _evaluation([109, 109], [800, 800])], [10, 10])
    assert metrics["acc_matrix_rounded"][1] == [13.62, 13.62]
    assert metrics["accuracy_curve_rounded"] == [13.62, 13.62]  # 218 * 100 / 1600 = 13.625 as well
    assert metrics["accuracy_curve"][1] == metrics["acc_matrix"][1][0] == metrics["acc_matrix"][1][1]


def test_a_run_with_no_finished_task_has_nan_summaries():
    metrics = compute_metrics([], [2, 2])
    for key in ("avg_acc", "last_acc", "avg_acc_task_mean", "last_acc_task_mean"):
        assert np.isnan(metrics[key]), key
