"""``bench speed``: CL-LoRA inference with the shared trunk computed once vs one full pass per task.

The official code runs T full passes per image (one per task adapter); running blocks [0, l) once and the
task-specific blocks once for all tasks (batched) costs l + (N - l) T block passes instead of N T, with equal
logits (spec ``cl_lora.md``, "Permitted optimisations" 1). Both paths are timed on the same random inputs with a
randomly initialised backbone and random non-zero adapters and prototypes, so no weights or data are needed.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from benchmark.backbones import build_backbone, input_size
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


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
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
                logits[name], seconds = _timed(lambda: method.predict(images, shared_trunk=shared), dev)
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
