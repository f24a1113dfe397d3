"""``bench speed``: CL-LoRA inference with the shared trunk computed once vs one full pass per task.

The official code runs T full passes per image (one per task adapter); running blocks [0, l) once and the
task-specific blocks once for all tasks (batched) costs l + (N - l) T block passes instead of N T, with equal
logits (spec ``cl_lora.md``, "Permitted optimisations" 1). Both paths are timed on the same random inputs with a
randomly initialised backbone and random non-zero adapters and prototypes, so no weights or data are needed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from benchmark.models.backbones import build_backbone, input_size
from benchmark.registry import METHODS

CLASSES_PER_TASK = 10


def _randomise(method: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-zero up-projections and prototypes (a fresh method has zero ups, which would hide a routing bug)."""
    with torch.no_grad():
        for name, tensor in method.named_parameters():
            if name.endswith(".up"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        prototypes = method.prototypes.prototypes
        prototypes.copy_(torch.randn(prototypes.shape, generator=generator))


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """``fn()`` and its wall seconds (CUDA synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - began


def speed_report(backbone: str = "vit_base_patch16_224.augreg_in21k", num_tasks: int = 10, batch_size: int = 32,
                 device: str | None = None, repeats: int = 3, rank: int = 10) -> dict[str, Any]:
    """Time CL-LoRA's shared-trunk inference against T full passes; images/s of each, ratio, logit difference.

    The split is l = depth // 2 (6 on ViT-B/16). Times are the best of ``repeats`` (the paths alternate); on CUDA
    one untimed warm-up call of each path comes first.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vit = build_backbone(backbone, pretrained=False)
    method_class = METHODS.get("cl_lora")
    depth = len(vit.blocks)
    hparams = method_class.config_class(rank=rank, shared_blocks=depth // 2, batch_size=batch_size)
    method = method_class(vit, hparams, num_classes=num_tasks * CLASSES_PER_TASK, num_tasks=num_tasks,
                          device=dev, seed=0)
    method.restore_structure([CLASSES_PER_TASK] * num_tasks)
    generator = torch.Generator().manual_seed(0)
    _randomise(method, generator)
    method.to(dev).eval()
    size = input_size(vit)
    images = torch.rand(batch_size, 3, size, size, generator=generator).to(dev)

    best = {"fast": float("inf"), "naive": float("inf")}
    logits: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        if dev.type == "cuda":
            method.predict(images)
            method.predict(images, shared_trunk=False)
        for _ in range(max(repeats, 1)):
            for name, shared in (("fast", True), ("naive", False)):
                logits[name], seconds = timed(lambda: method.predict(images, shared_trunk=shared), dev)
                best[name] = min(best[name], seconds)
    split = hparams.shared_blocks
    return {
        "backbone": backbone,
        "device": str(dev),
        "num_tasks": num_tasks,
        "batch_size": batch_size,
        "depth": depth,
        "shared_blocks": split,
        "rank": rank,
        "repeats": max(repeats, 1),
        "block_passes_fast": split + (depth - split) * num_tasks,
        "block_passes_naive": depth * num_tasks,
        "ideal_speedup": depth * num_tasks / (split + (depth - split) * num_tasks),
        "fast_seconds": best["fast"],
        "naive_seconds": best["naive"],
        "fast_images_per_s": batch_size / best["fast"],
        "naive_images_per_s": batch_size / best["naive"],
        "speedup": best["naive"] / best["fast"],
        "max_abs_logit_diff": float((logits["fast"] - logits["naive"]).abs().max()),
        "same_predictions": bool((logits["fast"].argmax(1) == logits["naive"].argmax(1)).all()),
    }


def format_speed_report(report: dict[str, Any]) -> str:
    """A few human-readable lines of a :func:`speed_report` result."""
    return "\n".join([
        f"CL-LoRA inference on {report['backbone']} ({report['device']}), T={report['num_tasks']} tasks, "
        f"batch {report['batch_size']}, l={report['shared_blocks']} of {report['depth']} blocks, "
        f"rank {report['rank']}, best of {report['repeats']}",
        f"  shared trunk once : {report['fast_images_per_s']:10.2f} images/s  "
        f"({report['block_passes_fast']} block passes per image)",
        f"  full pass per task: {report['naive_images_per_s']:10.2f} images/s  "
        f"({report['block_passes_naive']} block passes per image)",
        f"  speed-up {report['speedup']:.2f}x (ideal {report['ideal_speedup']:.2f}x); "
        f"max |logit difference| {report['max_abs_logit_diff']:.2e}; "
        f"same predictions: {'yes' if report['same_predictions'] else 'NO'}",
    ])


# -- every registered method: training steps and inference, per precision ---------------------------------
SPEED_FAMILY = "imr"
"""Default benchmark family whose hyper-parameters (batch size, rank, prompt sizes ...) the speed runs use."""


class _Enough(Exception):
    """Raised by :class:`_StepClock` to stop a method's task once the timed steps are done."""


class _StepClock:
    """A :class:`benchmark.method.TrainingMonitor` that timestamps the end of each training step (wall clock, and
    this process's CPU time: on a shared, loaded machine the CPU seconds per image are the steadier measure)."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps, self.device, self.times, self.cpu_times = steps, device, [], []

    def start_epochs(self, epochs: int, batches_per_epoch: int) -> None:
        pass

    def end_batch(self, loss: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        if len(self.times) > self.steps:
            raise _Enough

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        pass


class _PeakMemory:
    """Peak memory while a block runs: CUDA's max allocated bytes, or on CPU the process's resident set sampled
    every 2 ms above its level at the start (``/proc/self/statm``)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self.source = device, float("nan"), ""

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "_PeakMemory":
        import ctypes
        import threading

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:  # hand freed heap back to the OS first, so that an earlier run's pages do not hide this run's peak
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._stop = threading.Event()
        self._base = self._peak = self._rss()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._peak = max(self._peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb, self.source = torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        self.peak_mb, self.source = (self._peak - self._base) / 2**20, "cpu_rss_increase_sampled"


def build_from_shapes(name: str, backbone: str, num_tasks: int, device: torch.device, batch_size: int | None,
                      learned_tasks: int, family: str = SPEED_FAMILY, seed: int = 0):
    """A registered method on an untrained backbone, with the structure of ``learned_tasks`` tasks (no data)."""
    from benchmark.config import resolve_hparams

    method_class = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(method_class.config_class)}
    values = method_class.family_defaults(family)
    values.update({key: value for key, value in (("epochs", 1), ("batch_size", batch_size)) if key in fields
                   and value is not None})
    hparams = resolve_hparams(method_class.config_class, values, {})
    torch.manual_seed(seed)
    vit = build_backbone(backbone, pretrained=False)
    method = method_class(vit, hparams, num_classes=num_tasks * CLASSES_PER_TASK, num_tasks=num_tasks,
                          device=device, seed=seed)
    method.restore_structure([CLASSES_PER_TASK] * learned_tasks)
    method.task_sizes = [CLASSES_PER_TASK] * learned_tasks
    return method, vit


def train_speed(name: str, backbone: str, precision: str, device: torch.device, steps: int = 3,
                batch_size: int | None = None, num_tasks: int = 10, family: str = SPEED_FAMILY,
                task_index: int = 1) -> dict[str, Any]:
    """Images/s and peak memory of ``name``'s real training step (its own batch size unless given) on task
    ``task_index`` (0-based; default the second task).

    The method is built as after ``task_index`` learned tasks, zero-initialised added tensors made small and
    random (so distillation, projections against earlier tasks and prompt queries are all in the step), then
    ``learn`` runs under ``precision`` on random images: one untimed warm-up step, then ``steps`` timed steps;
    the task stops there (its end-of-task work is not timed). A method that trains nothing in that task
    reports no training steps.
    """
    from benchmark.method import Task

    method, vit = build_from_shapes(name, backbone, num_tasks, device, batch_size, learned_tasks=task_index,
                                    family=family)
    randomise_added(method, torch.Generator().manual_seed(2))  # as after a trained task (CL-LoRA's teacher ups)
    size, batch = input_size(vit), method.hparams.batch_size
    generator = torch.Generator().manual_seed(1)
    known = task_index * CLASSES_PER_TASK
    batches = [(torch.rand(batch, 3, size, size, generator=generator),
                torch.randint(known, known + CLASSES_PER_TASK, (batch,), generator=generator))
               for _ in range(steps + 1)]
    clock = _StepClock(steps, device)
    task = Task(index=task_index, classes=list(range(known, known + CLASSES_PER_TASK)), known_classes=known,
                seen_classes=known + CLASSES_PER_TASK, num_tasks=num_tasks, train_loader=batches,
                train_eval_loader=batches[:1], monitor=clock, precision=precision)
    method.train()
    with _PeakMemory(device) as memory:
        try:
            method.learn(task)
        except _Enough:
            pass
    timed = len(clock.times) - 1
    trained = timed >= 1
    seconds = clock.times[-1] - clock.times[0] if trained else float("nan")
    cpu_seconds = clock.cpu_times[-1] - clock.cpu_times[0] if trained else float("nan")
    return {"method": name, "precision": precision, "task": task_index + 1, "batch_size": batch, "trains": trained,
            "timed_steps": max(timed, 0), "images_per_s": batch * timed / seconds if trained else None,
            "images_per_cpu_s": batch * timed / cpu_seconds if trained and cpu_seconds > 0 else None,
            "peak_memory_mb": memory.peak_mb if trained else None, "peak_memory_source": memory.source}


def randomise_added(method: torch.nn.Module, generator: torch.Generator) -> None:
    """Small random values in every all-zero floating tensor the method added (zero-init up-projections,
    restored prototypes), so that no adapter or task path is trivially skipped. Each tensor draws from its own
    generator (seeded from ``generator`` and its position), so the values do not depend on whether an
    uninitialised buffer before it (RanPAC's statistics) happened to read as zeros."""
    pretrained = {id(t) for t in method.pretrained_weights.tensors.values()}
    base = int(torch.randint(2**31, (1,), generator=generator))
    with torch.no_grad():
        for position, tensor in enumerate(list(method.parameters()) + list(method.buffers())):
            if id(tensor) not in pretrained and tensor.is_floating_point() and tensor.numel() \
                    and not tensor.any():
                own = torch.Generator().manual_seed(base + position)
                tensor.copy_(torch.randn(tensor.shape, generator=own) * 0.02)


def inference_speed(name: str, backbone: str, precision: str, device: torch.device, num_tasks: int,
                    batch_size: int, repeats: int = 1, family: str = SPEED_FAMILY) -> list[dict[str, Any]]:
    """Images/s of ``predict`` after ``num_tasks`` tasks, for the default path and each ``predict_variants``
    entry (with the max |logit difference| to the default), under ``precision``; best of ``repeats``."""
    from benchmark.precision import autocast

    method, vit = build_from_shapes(name, backbone, num_tasks, device, None, learned_tasks=num_tasks, family=family)
    randomise_added(method, torch.Generator().manual_seed(2))
    method.eval()
    size = input_size(vit)
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(3)).to(device)
    paths = {"default": {}, **type(method).predict_variants}
    best = {path: float("inf") for path in paths}
    logits: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), autocast(precision, device):
        if device.type == "cuda":
            for kwargs in paths.values():
                method.predict(images, **kwargs)
        for _ in range(max(repeats, 1)):
            for path, kwargs in paths.items():
                out, seconds = timed(lambda: method.predict(images, **kwargs), device)
                logits[path], best[path] = out.float(), min(best[path], seconds)
    return [{"method": name, "precision": precision, "path": path, "num_tasks": num_tasks, "batch_size": batch_size,
             "images_per_s": batch_size / best[path],
             "default_speedup": best[path] / best["default"],
             "max_abs_logit_diff": float((logits[path] - logits["default"]).abs().max())} for path in paths]


def method_speed_report(methods: list[str], backbone: str, precisions: list[str], device: torch.device,
                        train: bool = True, steps: int = 3, train_batch_size: int | None = None,
                        num_tasks: int = 10, eval_batch_size: int = 32, repeats: int = 1,
                        family: str = SPEED_FAMILY, echo=print) -> dict[str, Any]:
    """Training and inference speed of every method in every precision. The precisions alternate within each
    method and repeat (so a load change on a shared machine hits both alike); the best of ``repeats`` is kept."""
    training: list[dict[str, Any]] = []
    inference: list[dict[str, Any]] = []
    for name in methods:
        for phase in (("train", "inference") if train else ("inference",)):
            best: dict[tuple, dict[str, Any]] = {}
            for _ in range(max(repeats, 1)):
                for precision in precisions:
                    if phase == "train":
                        row = train_speed(name, backbone, precision, device, steps, train_batch_size, num_tasks,
                                          family)
                        if not row["trains"]:  # trains on the first task only (APER, RanPAC): time that one
                            row = train_speed(name, backbone, precision, device, steps, train_batch_size,
                                              num_tasks, family, task_index=0)
                        rows = [row]
                    else:
                        rows = inference_speed(name, backbone, precision, device, num_tasks, eval_batch_size,
                                               family=family)
                    for row in rows:
                        key = (row["precision"], row.get("path"))
                        if key not in best or (row["images_per_s"] or 0) > (best[key]["images_per_s"] or 0):
                            best[key] = row
                    echo(f"  {name} {phase} {precision}: " + ", ".join(
                        f"{row.get('path', 'step')} {row['images_per_s']:.2f} img/s" if row["images_per_s"]
                        else "nothing trained" for row in rows))
            (training if phase == "train" else inference).extend(best.values())
    return {"backbone": backbone, "device": str(device), "device_name": device_name(device),
            "precisions": precisions, "num_tasks": num_tasks, "eval_batch_size": eval_batch_size,
            "train_batch_size": train_batch_size, "steps": steps, "repeats": repeats,
            "hyper_parameters_of": family, "training": training, "inference": inference}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        with open("/proc/cpuinfo") as file:
            model = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    return f"{model}, {torch.get_num_threads()} threads"


def render_method_speed(report: dict[str, Any]) -> list:
    """rich Tables of a :func:`method_speed_report`: training (precisions side by side) and inference."""
    from rich.table import Table

    precisions = report["precisions"]
    tables = []
    if report["training"]:
        table = Table(title=f"training step, {report['backbone']} on {report['device_name']} "
                            f"(best of {report['repeats']}, {report['steps']} timed steps)")
        table.add_column("method")
        table.add_column("task", justify="right")
        table.add_column("batch", justify="right")
        for precision in precisions:
            table.add_column(f"{precision} img/s", justify="right")
            table.add_column(f"{precision} peak MB", justify="right")
        if len(precisions) > 1:
            table.add_column(f"{precisions[1]}/{precisions[0]}", justify="right")
            table.add_column(f"{precisions[1]}/{precisions[0]} CPU s", justify="right")
        for name in dict.fromkeys(row["method"] for row in report["training"]):
            rows = {row["precision"]: row for row in report["training"] if row["method"] == name}
            first_row = next(iter(rows.values()))
            cells = [name, str(first_row.get("task", 2)), str(first_row["batch_size"])]
            for precision in precisions:
                row = rows[precision]
                cells += [f"{row['images_per_s']:.2f}", f"{row['peak_memory_mb']:.0f}"] if row["trains"] \
                    else ["nothing trained", "–"]
            if len(precisions) > 1:
                first, second = rows[precisions[0]], rows[precisions[1]]
                cells.append(f"{second['images_per_s'] / first['images_per_s']:.2f}x" if first["trains"] else "–")
                cpu = first.get("images_per_cpu_s") and second.get("images_per_cpu_s")
                cells.append(f"{second['images_per_cpu_s'] / first['images_per_cpu_s']:.2f}x" if cpu else "–")
            table.add_row(*cells)
        tables.append(table)
    if report["inference"]:
        table = Table(title=f"inference after T={report['num_tasks']} tasks, batch {report['eval_batch_size']}")
        table.add_column("method")
        table.add_column("path")
        for precision in precisions:
            table.add_column(f"{precision} img/s", justify="right")
        table.add_column("default is", justify="right")
        table.add_column("max |Δlogit|", justify="right")
        for name in dict.fromkeys(row["method"] for row in report["inference"]):
            for path in dict.fromkeys(row["path"] for row in report["inference"] if row["method"] == name):
                rows = {row["precision"]: row for row in report["inference"]
                        if row["method"] == name and row["path"] == path}
                first = rows[precisions[0]]
                table.add_row(name, path, *[f"{rows[p]['images_per_s']:.2f}" for p in precisions],
                              f"{first['default_speedup']:.2f}x faster" if path != "default" else "–",
                              f"{first['max_abs_logit_diff']:.1e}")
        tables.append(table)
    return tables
