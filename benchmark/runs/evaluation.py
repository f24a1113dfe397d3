"""Evaluation on all seen classes: the loaders of a task and the batched, order-keeping prediction pass."""
from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader

from benchmark.method import Method
from benchmark.precision import autocast
from benchmark.runs.eval_cache import EvalCache
from benchmark.store.results import Evaluation


@torch.inference_mode()
def evaluate(method: Method, loader: DataLoader, device: torch.device, precision: str = "fp32",
             cache: EvalCache | None = None) -> Evaluation:
    """Labels and top-5 predictions of ``method`` on the seen-class test set, batched, in loader order.

    ``predict`` runs under the run's autocast precision; the top-5 are taken from float32 logits. With ``cache``,
    the method's frozen computations are served from it, each image identified by its position in the loader
    (the stream's evaluation sets are prefixes of one order).
    """
    method.eval()
    labels, top5 = [], []
    offset = 0
    for images, targets in loader:
        ids = torch.arange(offset, offset + len(targets))
        offset += len(targets)
        with autocast(precision, device), (cache.serving(method, ids) if cache else contextlib.nullcontext()):
            logits = method.predict(images.to(device, non_blocking=True)).float()
        if logits.ndim != 2 or logits.shape[1] != method.seen_classes:
            raise RuntimeError(f"{method.registry_name}.predict returned shape {tuple(logits.shape)}, expected "
                               f"(batch, {method.seen_classes})")
        top5.append(logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu())
        labels.append(targets)
    return Evaluation(labels=torch.cat(labels).numpy(), top5=torch.cat(top5).numpy())


def make_loader(dataset, batch_size: int, workers: int, device: torch.device, shuffle: bool = False,
                generator: torch.Generator | None = None) -> DataLoader:
    """A task's loader; on CUDA with pinned memory and (with workers) persistent workers, so that the workers'
    start-up is paid once per loader rather than once per epoch."""
    cuda = device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
                      pin_memory=cuda, persistent_workers=cuda and workers > 0)
