"""``bench speed --eval``: a whole T-task evaluation schedule timed with and without the evaluation cache.

After task t the protocol evaluates the test images of tasks 1..t; here each task has ``images_per_task``
synthetic images. Each method is built from shapes (no data, no weights: ``build_from_shapes``), its structure
grown task by task with ``restore_structure``, and every tensor it adds that is still all-zero filled with small
seeded random values (so that no adapter path is trivially skipped), identically in both schedules. Reported per
method: images/s of each schedule (evaluated images / wall seconds), the ratio, whether the predictions are
identical and the largest logit difference, and the cache's final size.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from benchmark.errors import ClbenchError
from benchmark.models.backbones import input_size
from benchmark.precision import autocast
from benchmark.runs.eval_cache import EvalCache
from benchmark.runs.speed import CLASSES_PER_TASK, SPEED_FAMILY, build_from_shapes, randomise_added, timed


def evaluation_schedule(name: str, backbone: str, num_tasks: int, images_per_task: int, batch_size: int,
                        device: torch.device, cached: bool, precision: str = "fp32",
                        family: str = SPEED_FAMILY) -> tuple[list[torch.Tensor], float, int]:
    """(logits of every evaluation batch; wall seconds of the evaluations; cache bytes at the end)."""
    method, vit = build_from_shapes(name, backbone, num_tasks, device, None, learned_tasks=0, family=family)
    method.eval()
    size = input_size(vit)
    images = torch.rand(num_tasks * images_per_task, 3, size, size, generator=torch.Generator().manual_seed(3))
    cache = EvalCache(len(images)) if cached else None
    logits, seconds = [], 0.0
    for task in range(num_tasks):
        sizes = [CLASSES_PER_TASK] * (task + 1)
        method.restore_structure(sizes)
        method.task_sizes = sizes
        randomise_added(method, torch.Generator().manual_seed(100 + task))
        if task == 0:  # warm-up, untimed and uncached (first-call allocations and kernel selection)
            with torch.inference_mode(), autocast(precision, device):
                method.predict(images[:batch_size].to(device))
        seen = (task + 1) * images_per_task
        for start in range(0, seen, batch_size):
            batch = images[start:min(start + batch_size, seen)].to(device)
            ids = torch.arange(start, start + len(batch))

            def run() -> torch.Tensor:
                with torch.inference_mode(), autocast(precision, device):
                    if cache is None:
                        return method.predict(batch).float()
                    with cache.serving(method, ids):
                        return method.predict(batch).float()

            out, elapsed = timed(run, device)
            logits.append(out.cpu())
            seconds += elapsed
    return logits, seconds, cache.nbytes if cache else 0


def eval_speed_report(methods: list[str], backbone: str, num_tasks: int, images_per_task: int, batch_size: int,
                      device: torch.device, family: str = SPEED_FAMILY,
                      echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per method: both schedules side by side (see the module docstring)."""
    evaluated = images_per_task * num_tasks * (num_tasks + 1) // 2
    rows = []
    for name in methods:
        echo(f"{name}: evaluation schedule of {num_tasks} tasks, {evaluated} image evaluations, without and with "
             "the cache")
        try:
            plain, plain_seconds, _ = evaluation_schedule(name, backbone, num_tasks, images_per_task, batch_size,
                                                          device, cached=False, family=family)
        except ClbenchError as error:  # e.g. a prompt pool smaller than the task count: the other methods go on
            echo(f"{name}: skipped ({error})")
            continue
        cached, cached_seconds, cache_bytes = evaluation_schedule(name, backbone, num_tasks, images_per_task,
                                                                  batch_size, device, cached=True, family=family)
        rows.append({"method": name, "num_tasks": num_tasks, "images_per_task": images_per_task,
                     "evaluated_images": evaluated, "batch_size": batch_size,
                     "images_per_s_without": evaluated / plain_seconds, "images_per_s_with": evaluated / cached_seconds,
                     "ratio": plain_seconds / cached_seconds,
                     "identical_predictions": all(torch.equal(a.argmax(1), b.argmax(1)) for a, b in zip(plain, cached)),
                     "max_abs_logit_diff": max(float((a - b).abs().max()) for a, b in zip(plain, cached)),
                     "cache_mb": cache_bytes / 2**20})
    return rows


def render_eval_speed(rows: list[dict[str, Any]], backbone: str, device: str):
    """A rich table of :func:`eval_speed_report`'s rows."""
    from rich.table import Table

    table = Table(title=f"evaluation schedule, {backbone} on {device}: without vs with the evaluation cache")
    for column in ("method", "T", "images", "img/s without", "img/s with", "ratio", "identical", "max |Δ logit|",
                   "cache MB"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(row["method"], str(row["num_tasks"]), f"{row['evaluated_images']:,}",
                      f"{row['images_per_s_without']:.1f}", f"{row['images_per_s_with']:.1f}", f"{row['ratio']:.2f}x",
                      "yes" if row["identical_predictions"] else "NO", f"{row['max_abs_logit_diff']:.1e}",
                      f"{row['cache_mb']:.2f}")
    return table
