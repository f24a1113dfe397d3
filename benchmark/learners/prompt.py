"""The learner that the prompt methods share (PILOT ``models/l2p.py``, ``models/dualprompt.py``,
``models/coda_prompt.py``).

Frozen ViT, prompts computed from the frozen query, one task-masked ``Linear(dim, C_total)`` head. Per task
(``prompt_baselines.md`` §1.2, §1.7, §1.10): a new Adam optimiser (weight decay 0) with the method's per-epoch
schedule; each step minimises CE(logits with columns [0, known) at -inf, y) plus the method's prompt term.
Prediction slices the logits to the seen classes without a mask.

- :class:`PromptLearner`: the skeleton; a method sets ``schedule`` (``constant`` or ``coda_cosine``),
  ``drop_last`` (drop the last incomplete train batch), ``head_init`` and implements :meth:`~PromptLearner.
  prompted_forward` and :meth:`~PromptLearner.prompt_loss`;
- :class:`KeyMatchingLearner` (L2P, DualPrompt): prompts chosen by key matching, constant lr, prompt term
  = -pull_coeff * S, S the pull-constraint term of the selected keys.

Test-time prompt selection of L2P and DualPrompt uses the batch-wise majority by default, so predictions depend
on the test batch: the runner evaluates in PILOT's order (class by class) with ``eval_batch_size`` (default
``batch_size``, as PILOT's test loaders). ``batchwise_prompt=false`` selects per sample.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size, count_parameters
from benchmark.models.heads import linear_head, mask_to_current_task
from benchmark.models.peft.prompts import Selection, frozen_query
from benchmark.training import build_optimizer, build_scheduler, drop_last_loader, optimizer_step, run_epochs


@dataclass
class PromptLearnerConfig(MethodConfig):
    """Hyper-parameters common to the prompt methods."""

    epochs: int = 5
    lr: float = 0.001
    """Adam, weight decay 0 (schedule: the method's)."""
    grad_clip: float | None = None
    """Gradient-norm clip (PILOT none; the JH ports 1.0)."""


@dataclass
class KeyMatchingConfig(PromptLearnerConfig):
    """Hyper-parameters common to L2P and DualPrompt (switches of ``prompt_baselines.md`` §10)."""

    pull_coeff: float = 0.1
    """Weight of the pull-constraint term (PILOT 0.1; JH-DP 1.0)."""
    batchwise_prompt: bool = True
    """Batch-wise majority selection in training and test (official); false = per sample."""


class PromptLearner(Method):
    """Base of the prompt methods: subclasses build their prompts and implement :meth:`prompted_forward`."""

    config_class = PromptLearnerConfig
    schedule: ClassVar[str] = "constant"
    """Per-epoch lr schedule of :func:`benchmark.training.build_scheduler`."""
    drop_last: ClassVar[bool] = False
    """Drop the last incomplete training batch of every epoch (CODA-P's train loader)."""
    head_init: ClassVar[str] = "trunc_normal"
    """Init of the ``Linear(dim, C_total)`` head (:func:`benchmark.models.heads.linear_head`)."""

    def __init__(self, backbone, hparams: PromptLearnerConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.freeze_backbone()
        self.head = linear_head(self.backbone.num_features, self.num_classes, self.make_generator(0),
                                init=self.head_init)

    @abstractmethod
    def prompted_forward(self, images: torch.Tensor, task_index: int | None) -> tuple[torch.Tensor, Any]:
        """Logits over all C_total classes and what :meth:`prompt_loss` needs; ``task_index`` is None at test."""

    @abstractmethod
    def prompt_loss(self, auxiliary: Any) -> torch.Tensor:
        """The term added to the masked cross-entropy, from the second output of :meth:`prompted_forward`."""

    def train_task(self, task: Task) -> None:
        """Masked cross-entropy plus the prompt term, with a fresh Adam optimiser and the method's schedule."""
        hp = self.hparams
        optimizer = build_optimizer(self.trainable_parameters(), "adam", hp.lr)
        scheduler = build_scheduler(optimizer, self.schedule, hp.epochs)
        loader = drop_last_loader(task.train_loader) if self.drop_last else None

        def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits, auxiliary = self.prompted_forward(images, task.index)
            logits = mask_to_current_task(logits, task.known_classes, task.seen_classes)
            loss = F.cross_entropy(logits, labels) + self.prompt_loss(auxiliary)
            return optimizer_step(optimizer, loss, hp.grad_clip)

        run_epochs(task, hp.epochs, step, self.device, scheduler, loader)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.prompted_forward(images, None)[0][:, : self.seen_classes]

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """q(x), the frozen pretrained ViT's CLS feature (:func:`frozen_query`); it never changes, so evaluation
        keeps it."""
        return self.frozen("query", 0, images, lambda subset: frozen_query(self.backbone, subset))

    def report(self, trainable_task: int, notes: str) -> ParameterReport:
        """The parameter report given the prompt-side count of the last task (spec §1.11).

        Trainable (total) counts the whole head, as the official ``count_parameters``; the head part of the
        last task is its rows (weights and biases) of the last task's classes; everything trainable is stored.
        """
        total = count_parameters(self.trainable_parameters())
        task_classes = self.task_sizes[-1] if self.task_sizes else 0
        return ParameterReport(backbone=backbone_size(self.backbone), trainable_task=trainable_task,
                               head=(self.head.in_features + 1) * task_classes, trainable_total=total,
                               stored=total, notes=notes)


class KeyMatchingLearner(PromptLearner):
    """Base of L2P and DualPrompt: :meth:`prompted_forward` returns the key-matching :class:`Selection`."""

    config_class = KeyMatchingConfig

    @abstractmethod
    def prompted_forward(self, images: torch.Tensor, task_index: int | None) -> tuple[torch.Tensor, Selection]:
        """Logits over all C_total classes and the prompt selection; ``task_index`` is None at test time."""

    def prompt_loss(self, auxiliary: Selection) -> torch.Tensor:
        """-pull_coeff * S, S the pull-constraint term of the selected keys."""
        return -self.hparams.pull_coeff * auxiliary.pull()
