"""Sequential fine-tuning: the lower bound of class-incremental learning.

The whole backbone and one linear head over all classes are trained with plain cross-entropy over every class
seen so far, task after task, with no protection of old knowledge. Old classes get no training data after
their task, so their logits are pushed down and the model forgets them (catastrophic forgetting).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size, count_parameters
from benchmark.registry import register_method
from benchmark.training import build_optimizer, build_scheduler, optimizer_step, run_epochs


@dataclass
class FinetuneConfig(MethodConfig):
    """Optimiser settings of sequential fine-tuning (ours; no official config exists for ViTs)."""

    epochs: int = 5
    lr: float = 0.005
    weight_decay: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"
    schedule: Literal["cosine", "constant"] = "cosine"

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ClbenchError("finetune needs epochs >= 1, lr > 0 and weight_decay >= 0")


@register_method("finetune")
class Finetune(Method):
    """Fine-tune backbone + a linear head on each task in turn (no forgetting counter-measure)."""

    config_class = FinetuneConfig
    trains_backbone = True
    global_rng_tensors = frozenset({"head.weight", "head.bias"})  # nn.Linear's own init, from the run-seeded RNG
    default_cfgs = {
        "default": {"epochs": 5, "lr": 0.005, "batch_size": 32,
                    "defaults_source": "ours: one recipe for every benchmark (no official ViT config exists)"},
        "digits": {"epochs": 4, "lr": 0.01, "batch_size": 32, "defaults_source": "ours, for the tiny digits ViT"},
    }

    def __init__(self, backbone, hparams, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.head = nn.Linear(self.backbone.num_features, self.num_classes)
        self.to(self.device)

    def train_task(self, task: Task) -> None:
        """Cross-entropy over all seen classes, every parameter trained."""
        hp = self.hparams
        optimizer = build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)
        scheduler = build_scheduler(optimizer, hp.schedule, hp.epochs)

        def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = self.head(self.backbone(images))[:, : task.seen_classes]
            return optimizer_step(optimizer, F.cross_entropy(logits, labels))

        run_epochs(task, hp.epochs, step, self.device, scheduler)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))[:, : self.seen_classes]

    def parameter_report(self) -> ParameterReport:
        backbone = backbone_size(self.backbone)
        head = count_parameters(self.head.parameters())
        return ParameterReport(backbone=backbone, trainable_task=backbone, head=head,
                               trainable_total=backbone + head, stored=backbone + head,
                               notes="the whole backbone is trained and kept")
