"""Results dirs written with the store's own API, with hand-chosen numbers, for report/figure/compare tests.

:func:`write_results` fills a results dir with:
- ``digits_t5``: ``simplecil`` and ``finetune`` over seeds 1, 2, 3 (the numbers of :data:`DIGITS`), ``ranpac``
  over seeds 1, 2 (Welch against either) and ``l2p`` over seed 1 only (no interval); a ``failed`` run of ``aper``,
  a ``partial`` (incomplete) run of ``ease`` and a ``running`` run of ``olora`` that no process holds (``stopped``);
- ``cifar100_t20``: one ``l2p`` run whose Ā lies within the published 85.50 ± 1.23 and whose A_T does not
  (published 79.51 ± 0.67).
"""
from __future__ import annotations

from pathlib import Path

from benchmark.store.results import RunStore, atomic_write_json

# method -> seed -> (Ā, A_T, forgetting, trainable %)
DIGITS = {
    "simplecil": {1: (80.0, 70.0, 5.0, 0.0), 2: (82.0, 71.0, 6.0, 0.0), 3: (84.0, 72.0, 7.0, 0.0)},
    "finetune": {1: (78.0, 60.0, 40.0, 100.0), 2: (81.0, 62.0, 42.0, 100.0), 3: (80.0, 61.0, 44.0, 100.0)},
    "ranpac": {1: (70.0, 65.0, 3.0, 2.1), 2: (70.5, 66.0, 4.0, 2.1)},
    "l2p": {1: (66.0, 50.0, 20.0, 0.93)},
}
FAILED_REASON = "RuntimeError: fabricated failure in task 2"


def _curve(avg: float, last: float, tasks: int) -> list[float]:
    """A curve of ``tasks`` points ending at ``last`` whose mean is ``avg`` (the first tasks share the rest)."""
    first = (avg * tasks - last) / (tasks - 1)
    return [round(first, 2)] * (tasks - 1) + [last]


def write_run(root: Path, bench: str, method: str, seed: int, numbers: tuple, tasks: int = 5,
              classes: int = 10) -> None:
    """A finished run whose metrics.json holds ``numbers`` = (Ā, A_T, forgetting, trainable %)."""
    avg, last, forgetting, trainable_pct = numbers
    store = RunStore(root, bench, method, seed)
    order = list(range(classes))[::-1] if seed % 2 else list(range(classes))
    atomic_write_json(store.config_path, {
        "bench": bench, "method": method, "seed": seed, "backbone": "vit_tiny_shapes", "precision": "fp32",
        "device": "cpu", "git": {"commit": "0123456789abcdef0123", "dirty": seed == 3},
        "versions": {"torch": "2.0", "python": "3.11"}, "fingerprint": {"config_sha256": f"{seed:064x}"},
        "stream": {"class_order": order}})
    curve = _curve(avg, last, tasks)
    matrix = [[curve[i] if j <= i else None for j in range(tasks)] for i in range(tasks)]
    atomic_write_json(store.metrics_path, {
        "avg_acc": avg, "last_acc": last, "forgetting_pilot": forgetting, "accuracy_curve_rounded": curve,
        "acc_matrix_rounded": matrix, "parameters": {"trainable_task": int(trainable_pct * 1000),
                                                      "trainable_task_pct": trainable_pct}})
    store.write_status("finished", tasks)


def write_results(root: Path) -> Path:
    """The results dir described in the module docstring, under ``root``; returns ``root``."""
    for method, seeds in DIGITS.items():
        for seed, numbers in seeds.items():
            write_run(root, "digits_t5", method, seed, numbers)
    RunStore(root, "digits_t5", "aper", 1).write_status("failed", 1, FAILED_REASON)
    RunStore(root, "digits_t5", "ease", 1).write_status("partial", 2)
    RunStore(root, "digits_t5", "olora", 1).write_status("running", 3)
    write_run(root, "cifar100_t20", "l2p", 1, (85.0, 70.0, 8.0, 0.2), tasks=20, classes=100)
    return root
