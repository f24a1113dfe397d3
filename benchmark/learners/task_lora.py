"""The learner that InfLoRA and O-LoRA share (InfLoRA's ``SiNet`` harness, ``inflora_olora.md`` §1, §3.3).

Frozen ViT with one new LoRA branch per task on the fused qkv of every block, all branches summed, plus one
``Linear(dim, C_t)`` head per task. Per task: a new Adam optimiser (betas (0.9, 0.999), weight decay 0) and the
per-epoch CODA cosine schedule; each step minimises CE(head_t(feature), y − first class of task t) plus the
method's regulariser. Prediction concatenates all heads (task-agnostic argmax over the seen classes).

Branches of finished tasks are frozen and stacked into one branch (downs by rows, ups by columns) when the next
task starts: the same function as separate branches, one low-rank product per block whatever the task count,
and the pretrained weights are never modified. The newest branch stays separate, so the parameter report counts
the last task's real tensors.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size, count_parameters
from benchmark.models.heads import TaskLinearHeads
from benchmark.models.peft.lora import LoRABranch, LoRAQKV, attach_lora
from benchmark.training import build_optimizer, build_scheduler, optimizer_step, run_epochs


@dataclass
class TaskLoRAConfig(MethodConfig):
    """Hyper-parameters common to InfLoRA and O-LoRA (InfLoRA's Adam recipe)."""

    batch_size: int = 128
    epochs: int = 20
    lr: float = 5e-4
    """Adam (betas 0.9/0.999, weight decay 0) with the per-epoch CODA cosine schedule."""
    rank: int = 10
    """Rank of each task's LoRA branch."""

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.rank < 1 or self.lr <= 0:
            raise ClbenchError("epochs and rank must be >= 1 and lr > 0")


class TaskLoRALearner(Method):
    """Base of InfLoRA and O-LoRA. Subclasses define the branches and hooks:

    - :meth:`new_branch`: the qkv slots adapted and how a task's branch starts;
    - :meth:`task_parameters`: the branch tensors trained in a task (besides the task's head);
    - :meth:`start_task` / :meth:`finish_task`: work before and after the epochs;
    - :meth:`loss`: the training loss (default: the local cross-entropy).
    """

    config_class = TaskLoRAConfig

    def __init__(self, backbone: nn.Module, hparams: TaskLoRAConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.backbone_parameters = backbone_size(self.backbone)
        self.freeze_backbone()
        # A plain list: the wrappers are registered once, inside the backbone.
        self.lora_layers: list[LoRAQKV] = attach_lora(self.backbone)
        self.heads = TaskLinearHeads(self.backbone.num_features)
        self.to(self.device)

    # -- what subclasses define --------------------------------------------------------------------
    @abstractmethod
    def new_branch(self, layer: LoRAQKV, generator: torch.Generator) -> LoRABranch:
        """Add this task's (initial) branch to ``layer`` and return it."""

    @abstractmethod
    def task_parameters(self, branch: LoRABranch) -> list[nn.Parameter]:
        """The tensors of a task's branch that its task trains."""

    def start_task(self, task: Task) -> None:
        """Work after the task's branches and head exist and before the epochs (default: none)."""

    def finish_task(self, task: Task) -> None:
        """Work after the epochs (default: none)."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss from the current head's logits and task-local labels (default: plain CE)."""
        return F.cross_entropy(logits, targets)

    # -- structure ---------------------------------------------------------------------------------
    def current_branches(self) -> list[LoRABranch]:
        """The newest task's branch in every block."""
        return [layer.branches[-1] for layer in self.lora_layers]

    def _grow(self, index: int, num_classes: int) -> None:
        """Stack the finished branches, add task ``index``'s branches and head; only they stay trainable."""
        generator = self.make_generator(1 + index)
        for layer in self.lora_layers:
            if len(layer.branches) > 1:
                layer.stack_branches(range(len(layer.branches)))
            for branch in layer.branches:
                branch.requires_grad_(False)
            self.new_branch(layer, generator)
        for head in self.heads.heads:
            head.requires_grad_(False)
        self.heads.add_head(num_classes, generator).to(self.device)
        for branch in self.current_branches():
            branch.requires_grad_(False)
            for parameter in self.task_parameters(branch):
                parameter.requires_grad_(True)

    def restore_structure(self, task_sizes: list[int]) -> None:
        """Branches and heads as after learning tasks of ``task_sizes`` classes (values come from a state dict)."""
        for index in range(len(self.task_sizes), len(task_sizes)):
            self._grow(index, task_sizes[index])
        self.task_sizes = list(task_sizes)

    # -- training and prediction ---------------------------------------------------------------------
    def train_task(self, task: Task) -> None:
        """New branches and head, the method's preparation, the epochs, then the method's wrap-up."""
        hp = self.hparams
        self._grow(task.index, task.num_classes)
        self.start_task(task)
        optimizer = build_optimizer(self.trainable_parameters(), "adam", hp.lr)
        scheduler = build_scheduler(optimizer, "coda_cosine", hp.epochs)

        def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = self.heads.current(self.backbone(images))
            return optimizer_step(optimizer, self.loss(logits, labels - task.known_classes))

        self.train()
        try:
            run_epochs(task, hp.epochs, step, self.device, scheduler)
        finally:
            self.eval()  # LoRA dropout (O-LoRA) acts in training mode only
        self.finish_task(task)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Concatenated logits of all task heads, on the feature with every branch active."""
        return self.heads(self.backbone(images))

    # -- reporting ---------------------------------------------------------------------------------
    def lora_report(self, notes: str) -> ParameterReport:
        """Trainable: the last task's branch tensors and head; stored: every branch (downs and ups)."""
        if not self.task_sizes:
            return ParameterReport(self.backbone_parameters, 0, 0, 0, 0, notes)
        trainable = count_parameters(p for b in self.current_branches() for p in self.task_parameters(b))
        head = count_parameters(self.heads.heads[-1].parameters())
        stored = count_parameters(t for layer in self.lora_layers for b in layer.branches for t in (b.down, b.up))
        return ParameterReport(backbone=self.backbone_parameters, trainable_task=trainable, head=head,
                               trainable_total=trainable + head, stored=stored, notes=notes)
