"""The epoch loop, optimisers and schedules shared by trained methods.

A method builds its optimiser with :func:`build_optimizer` and a per-epoch schedule with
:func:`build_scheduler`, then calls :func:`run_epochs` with a ``step(images, labels) -> loss`` function that
does its forward pass, backward pass and optimiser step(s) (:func:`optimizer_step` for the usual single step).
The loop moves batches to the device, reports progress to the task's monitor, steps the schedule once per
epoch and stops with :class:`TrainingDiverged` on a NaN or infinite loss.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Literal, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark import precision
from benchmark.errors import ClbenchError, TrainingDiverged
from benchmark.method import Task

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_optimizer(parameters: Iterable[nn.Parameter], name: Literal["sgd", "adam", "adamw"], lr: float,
                    weight_decay: float = 0.0, momentum: float = 0.9,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam/AdamW over the given parameters; a new one per task resets momentum."""
    parameters = [p for p in parameters if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (sgd, adam, adamw)")


def build_scheduler(optimizer: torch.optim.Optimizer,
                    name: Literal["cosine", "coda_cosine", "constant", "multistep"], epochs: int,
                    eta_min: float = 0.0, milestones: Sequence[int] = (),
                    gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-epoch schedule, or ``None`` for a constant lr.

    - ``cosine``: CosineAnnealingLR(T_max=epochs, eta_min);
    - ``coda_cosine``: the CODA-Prompt/InfLoRA ``CosineSchedule`` as the official code runs it: epoch e (0-based)
      of K trains at base for e = 0 and at base * cos(99 pi (e - 1) / (200 (K - 1))) for e >= 1 (base lr when
      K = 1). The official scheduler steps once in its constructor and then resets its counter, so its first
      ``step()`` after epoch 0 sets epoch 0 again: epochs 0 and 1 both run at base and the last runs at
      0.097 * base for K = 20, not at ``eta_min`` (``inflora_olora.md`` "Schedule", ``prompt_baselines.md`` §5);
    - ``multistep``: MultiStepLR(milestones, gamma), the lr times ``gamma`` at each milestone epoch (SD-LoRA).
    """
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=eta_min)
    if name == "coda_cosine":
        def factor(epoch: int) -> float:
            if epochs <= 1 or epoch == 0:
                return 1.0
            return math.cos(99 * math.pi * (epoch - 1) / (200 * (epochs - 1)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    if name == "constant":
        return None
    raise ValueError(f"unknown schedule '{name}' (cosine, coda_cosine, constant, multistep)")


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   grad_clip: float | None = None) -> torch.Tensor:
    """zero_grad (to None), backward, optional grad-norm clipping, one step. Returns the detached loss."""
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss)  # loss-scaled under fp16 (benchmark/precision.py)
    precision.step(optimizer, grad_clip)
    return loss.detach()


def drop_last_loader(loader: Iterable) -> Iterable:
    """The same loader (dataset, sampler and its generator, batch size, workers) without the last incomplete
    batch of each epoch, for methods whose official loaders use ``drop_last`` (CODA-P, PILOT
    ``models/coda_prompt.py:L57``; LAE); the shuffle order is the one ``loader`` would give. Any other iterable
    of batches (``bench speed``'s fixed batches) is returned as it is.

    A dataset smaller than one batch would train on nothing: that is a :class:`ClbenchError`.
    """
    if not isinstance(loader, DataLoader):
        return loader
    if loader.batch_size is None or len(loader.dataset) < loader.batch_size:
        raise ClbenchError(f"a task has {len(loader.dataset)} training images, fewer than one batch of "
                           f"{loader.batch_size} with drop_last: lower batch_size")
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      drop_last=True, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      persistent_workers=loader.persistent_workers)


def run_epochs(task: Task, epochs: int, step: StepFn, device: torch.device,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               loader: Iterable | None = None,
               on_epoch_start: Callable[[int], None] | None = None) -> list[float]:
    """Train for ``epochs`` over ``loader`` (default: the task's train loader); returns mean loss per epoch.

    ``on_epoch_start(epoch)`` runs before each epoch's first batch (e.g. LAE's freeze phase).
    """
    loader = task.train_loader if loader is None else loader
    task.monitor.start_epochs(epochs, len(loader))
    epoch_losses = []
    for epoch in range(epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        total = torch.zeros((), device=device)
        batches = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = step(images, labels)
            value = float(loss)
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} in task {task.index + 1}, epoch {epoch + 1}")
            total += loss
            batches += 1
            task.monitor.end_batch(value)
        if scheduler is not None:
            scheduler.step()
        mean = float(total) / max(batches, 1)
        epoch_losses.append(mean)
        task.monitor.end_epoch(epoch, mean)
    return epoch_losses
