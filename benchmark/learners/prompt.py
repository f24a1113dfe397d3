"""The learner that L2P and DualPrompt share (PILOT ``models/l2p.py``, ``models/dualprompt.py``).

Frozen ViT, prompts chosen by key matching against the frozen query, one task-masked ``Linear(dim, C_total)``
head. Per task (``prompt_baselines.md`` §1.2, §1.7, §1.10): a new Adam optimiser (weight decay 0, constant lr);
each step minimises CE(logits with columns [0, known) at -inf, y) - pull_coeff * S, S the pull-constraint term
of the selected keys. Prediction slices the logits to the seen classes without a mask.

Test-time prompt selection uses the batch-wise majority by default, so predictions depend on the test batch:
the runner evaluates in PILOT's order (class by class) with ``eval_batch_size`` (default ``batch_size``, as
PILOT's test loaders). ``batchwise_prompt=false`` selects per sample.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.heads import linear_head, mask_to_current_task
from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size, count_parameters
from benchmark.peft.prompts import Selection
from benchmark.training import build_optimizer, optimizer_step, run_epochs


@dataclass
class PromptLearnerConfig(MethodConfig):
    """Hyper-parameters common to L2P and DualPrompt (switches of ``prompt_baselines.md`` §10)."""

    epochs: int = 5
    lr: float = 0.001
    """Adam, constant, weight decay 0."""
    pull_coeff: float = 0.1
    """Weight of the pull-constraint term (PILOT 0.1; JH-DP 1.0)."""
    batchwise_prompt: bool = True
    """Batch-wise majority selection in training and test (official); false = per sample."""
    grad_clip: float | None = None
    """Gradient-norm clip (PILOT none; the JH ports 1.0)."""
    defaults_source: str = ""
    """Where the benchmark family's defaults come from; harness choices are labelled as such (not used in
    training, recorded in the saved config)."""


class PromptLearner(Method):
    """Base of L2P and DualPrompt: subclasses build their prompts and implement :meth:`prompted_forward`."""

    config_class = PromptLearnerConfig

    def __init__(self, backbone, hparams: PromptLearnerConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.freeze_backbone()
        self.head = linear_head(self.backbone.num_features, self.num_classes, self.make_generator(0))

    @abstractmethod
    def prompted_forward(self, images: torch.Tensor, task_index: int | None) -> tuple[torch.Tensor, Selection]:
        """Logits over all C_total classes and the prompt selection; ``task_index`` is None at test time."""

    def train_task(self, task: Task) -> None:
        """Masked cross-entropy minus the weighted pull term, with a fresh Adam optimiser."""
        hp = self.hparams
        optimizer = build_optimizer(self.trainable_parameters(), "adam", hp.lr)

        def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits, selection = self.prompted_forward(images, task.index)
            logits = mask_to_current_task(logits, task.known_classes, task.seen_classes)
            loss = F.cross_entropy(logits, labels) - hp.pull_coeff * selection.pull()
            return optimizer_step(optimizer, loss, hp.grad_clip)

        run_epochs(task, hp.epochs, step, self.device)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.prompted_forward(images, None)[0][:, : self.seen_classes]

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
