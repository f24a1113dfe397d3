"""The learner that APER (w/ Adapter) and RanPAC share: adapt on the first task only, then freeze.

Specs: ``../shared/specs/more_baselines.md`` §2.1-2.2 (APER), ``../shared/specs/prompt_baselines.md`` §7 (RanPAC).

- A frozen ViT with one AdaptFormer adapter set (:mod:`benchmark.models.peft.adapter`; r, s = 0.1, dropout 0.1).
- **First task only:** the adapters and a fresh cosine head ``CosineLinear(dim, n_0)`` with learnable σ are
  trained with CE; SGD (momentum 0.9, weight decay on every trained tensor), CosineAnnealingLR(T_max = epochs,
  η_min = ``min_lr``) stepped per epoch; train mode (adapter dropout on). Then the adapters are frozen and the
  head is handed to the method (APER discards it, RanPAC keeps its σ).
- **Every task (the first included, after the step above):** :meth:`FirstTaskAdapterLearner.absorb_task`, the
  method's training-free update (prototypes, ridge statistics). No optimiser is built after the first task.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.classifiers import CosineLinear
from benchmark.errors import ClbenchError
from benchmark.method import Method, MethodConfig, Task, backbone_size, count_parameters
from benchmark.models.peft.adapter import adapter_set_parameters, add_adapter_set, attach_adapters, use_adapter_set
from benchmark.training import build_optimizer, build_scheduler, optimizer_step, run_epochs

ADAPTER_SET = 0
"""The one adapter set of these methods."""


@dataclass
class FirstTaskAdapterConfig(MethodConfig):
    """Hyper-parameters of the first-task adaptation (shared by APER and RanPAC)."""

    batch_size: int = 48
    epochs: int = 20
    """Epochs of the first task (later tasks train nothing)."""
    lr: float = 0.01
    """SGD learning rate of the first task."""
    weight_decay: float = 5e-4
    """On the adapters, the head weight and σ."""
    momentum: float = 0.9
    """SGD momentum (hard-coded 0.9 upstream)."""
    min_lr: float = 0.0
    """η_min of the per-epoch cosine annealing (0 in the configs)."""
    bottleneck: int = 64
    """Adapter bottleneck r (``ffn_num``)."""
    adapter_scale: float = 0.1
    """s, the fixed scale of the adapter branch."""
    adapter_dropout: float = 0.1
    """Dropout on the adapter bottleneck during training."""

    def validate(self) -> None:
        super().validate()
        if self.epochs < 0 or self.bottleneck < 1 or self.lr <= 0 or not 0.0 <= self.adapter_dropout < 1.0:
            raise ClbenchError("need epochs >= 0, bottleneck >= 1, lr > 0 and 0 <= adapter_dropout < 1")


class FirstTaskAdapterLearner(Method):
    """Base of APER and RanPAC. Subclasses implement :meth:`absorb_task` (every task, no gradient) and
    :meth:`keep_first_head` (what to keep of the trained first-task head)."""

    config_class = FirstTaskAdapterConfig

    def __init__(self, backbone: nn.Module, hparams: FirstTaskAdapterConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.backbone_parameters = backbone_size(self.backbone)
        """The headless backbone size without the adapters (the denominator of every percentage)."""
        self.freeze_backbone()
        self.adapters = attach_adapters(self.backbone)
        add_adapter_set(self.adapters, hparams.bottleneck, hparams.adapter_scale, hparams.adapter_dropout,
                        generator=self.make_generator(1))

    # -- the algorithm ----------------------------------------------------------------------------------
    def train_task(self, task: Task) -> None:
        """First task: tune the adapters with a cosine head. Every task: :meth:`absorb_task`."""
        if not self.task_sizes:
            self.keep_first_head(self.tune_adapters(task))
        self.backbone.eval()
        self.absorb_task(task)

    def tune_adapters(self, task: Task) -> CosineLinear:
        """Train the adapter set and a fresh ``CosineLinear(dim, n)`` on ``task`` (CE, SGD, cosine schedule);
        freeze the adapters and return the trained head."""
        hp = self.hparams
        head = CosineLinear(self.backbone.num_features, task.num_classes, learn_sigma=True,
                            generator=self.make_generator(2)).to(self.device)
        parameters = self.adapter_parameters() + list(head.parameters())
        optimizer = build_optimizer(parameters, "sgd", hp.lr, hp.weight_decay, hp.momentum)
        scheduler = build_scheduler(optimizer, "cosine", hp.epochs, eta_min=hp.min_lr)

        def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            loss = F.cross_entropy(head(self.adapted_features(images)), labels - task.known_classes)
            return optimizer_step(optimizer, loss)

        self.backbone.train()
        try:
            run_epochs(task, hp.epochs, step, self.device, scheduler)
        finally:
            self.backbone.eval()
        for parameter in self.adapter_parameters():
            parameter.requires_grad_(False)
        return head.requires_grad_(False)

    @abstractmethod
    def keep_first_head(self, head: CosineLinear) -> None:
        """Called once, after the first task's training, with the trained (frozen) head."""

    @abstractmethod
    def absorb_task(self, task: Task) -> None:
        """The training-free update of every task (eval mode; use ``task.train_eval_loader``)."""

    def restore_structure(self, task_sizes: list[int]) -> None:
        if task_sizes:  # the first task is done: the adapters are frozen
            for parameter in self.adapter_parameters():
                parameter.requires_grad_(False)

    # -- pieces ---------------------------------------------------------------------------------------
    def adapted_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLS after the final LayerNorm with the adapters on."""
        with use_adapter_set(self.adapters, ADAPTER_SET):
            return self.backbone(images)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The adapter set's tensors (12 adapters at ViT-B/16)."""
        return adapter_set_parameters(self.adapters, ADAPTER_SET)

    def trained_counts(self) -> tuple[int, int]:
        """(adapter parameters, first-task head parameters dim * n_0 + 1): everything this method trains."""
        head = self.backbone.num_features * self.task_sizes[0] + 1 if self.task_sizes else 0
        return count_parameters(self.adapter_parameters()), head
