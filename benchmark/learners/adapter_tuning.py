"""Tuning one AdaptFormer adapter set with a fresh cosine head: the training step that APER and RanPAC run on the
first task and EASE runs on every task.

Specs: ``../shared/specs/more_baselines.md`` §2.1-2.2 (APER) and §3 (EASE), ``../shared/specs/prompt_baselines.md``
§7 (RanPAC). The adapter set and a ``CosineLinear(dim, n)`` head with learnable σ are trained with CE on local
labels; SGD (momentum, weight decay on every trained tensor), CosineAnnealingLR(T_max = epochs, η_min) stepped
per epoch. Then the adapter set and the head are frozen; the method decides what to keep of the head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.method import MethodConfig, Task
from benchmark.models.classifiers import CosineLinear
from benchmark.training import build_optimizer, build_scheduler, optimizer_step, run_epochs


@dataclass
class AdapterTuningConfig(MethodConfig):
    """Hyper-parameters of adapter-set tuning (APER, RanPAC, EASE); methods override the defaults."""

    batch_size: int = 48
    epochs: int = 20
    """Epochs of each tuned task."""
    lr: float = 0.01
    """SGD learning rate, cosine-annealed per epoch; a new optimiser per tuned task."""
    weight_decay: float = 5e-4
    """On every trained tensor: the adapter set, the head weight and its σ."""
    momentum: float = 0.9
    """SGD momentum (hard-coded 0.9 upstream)."""
    bottleneck: int = 64
    """Adapter bottleneck r (``ffn_num``)."""
    adapter_scale: float = 0.1
    """s, the fixed scale of the adapter branch (``ffn_adapter_scalar``)."""
    adapter_dropout: float = 0.1
    """Dropout on the adapter bottleneck during training."""

    min_epochs: ClassVar[int] = 0
    """The fewest epochs a method accepts (APER and RanPAC may skip the tuning; EASE needs it)."""

    def validate(self) -> None:
        super().validate()
        if (self.epochs < self.min_epochs or self.bottleneck < 1 or self.lr <= 0
                or not 0.0 <= self.adapter_dropout < 1.0):
            raise ClbenchError(f"need epochs >= {self.min_epochs}, bottleneck >= 1, lr > 0 and "
                               "0 <= adapter_dropout < 1")


def tune_adapter_set(features: Callable[[torch.Tensor], torch.Tensor], adapter_parameters: list[nn.Parameter],
                     head: CosineLinear, task: Task, hparams: AdapterTuningConfig, device: torch.device,
                     min_lr: float = 0.0) -> CosineLinear:
    """Train ``adapter_parameters`` and ``head`` on ``task`` through ``features`` (images -> features with the
    adapter set on); freeze both and return the head. The caller sets train/eval mode around it."""
    optimizer = build_optimizer(adapter_parameters + list(head.parameters()), "sgd", hparams.lr,
                                hparams.weight_decay, hparams.momentum)
    scheduler = build_scheduler(optimizer, "cosine", hparams.epochs, eta_min=min_lr)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(head(features(images)), labels - task.known_classes)
        return optimizer_step(optimizer, loss)

    run_epochs(task, hparams.epochs, step, device, scheduler)
    for parameter in adapter_parameters:
        parameter.requires_grad_(False)
    return head.requires_grad_(False)
