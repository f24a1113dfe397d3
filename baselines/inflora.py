"""InfLoRA: Interference-Free Low-Rank Adaptation (Liang & Li, CVPR 2024), as the official code runs it.

Spec: ``inflora_olora.md`` (§1, §2; official code liangyanshuo/InfLoRA @ e08b00e). Names follow the code, not
the paper: A is the designed, frozen down-projection, B the trained up-projection.

- **Branches**: per task, k and v of every block's qkv get B_t^k A_t x and B_t^v A_t x (rank r, scale 1, no
  dropout); one A_t is shared by k and v. All branches 0..t act, in training and at test.
- **Before task t**: one no-grad pass over the task's train loader (train augmentation, branches 0..t-1) gives
  C_l = mean x xᵀ of each block's qkv input over all tokens; A_t = (top-r left singular vectors of Ĉ_l)ᵀ / √3,
  with Ĉ_l = C_l, C_l − MMᵀC_l ("remove" memory) or M⊥M⊥ᵀC_l ("retain" memory).
- **Trained**: B_t^k, B_t^v of every block and head_t, with plain CE on head_t (labels local to the task).
- **After task t**: a second pass with the trained model rebuilds C_l, and the DualGPM memory grows with
  threshold ε_t = λ_b + (λ_e − λ_b)·t/T, on σ⁴ energies as the code does (:mod:`benchmark.models.peft.gpm`).
- **Predict**: all heads concatenated, argmax over the seen classes (no task id, no calibration).

Skipped as dead in the official code: the KMeans "keys", ``classifier_pool_backup``, ``interface1``.

DomainNet: the official ``configs/domainnet_inflora.json`` (5 x 69, lines 9-10, 15) sets 5 epochs (lines 18, 20),
batch_size 128 (line 24), rank 30 (line 26), lamb 0.95 (line 27) and lame 1.0 (line 28). It runs another learner,
``InfLoRA_domain`` (line 11; SGD lrate 0.005, fc_lrate 0.01, lines 19-22; GPM): the optimiser here stays the main
learner's Adam 5e-4 (the paper states Adam for every dataset; spec ``inflora_olora.md`` §2.6). No official config
exists for CUB-200, ObjectNet or OmniBenchmark: they take the ImageNet-R recipe (``configs/mimg10_inflora.json``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from benchmark.errors import ClbenchError
from benchmark.learners.task_lora import TaskLoRAConfig, TaskLoRALearner
from benchmark.method import ParameterReport, Task, imagenet_r_recipe
from benchmark.models.peft.gpm import DualGPM, gpm_threshold, input_moments, single_threaded
from benchmark.models.peft.lora import LoRABranch, LoRAQKV
from benchmark.precision import full_precision
from benchmark.registry import register_method

log = logging.getLogger(__name__)

_INR = {"epochs": 50, "lr": 5e-4, "batch_size": 128, "rank": 10, "lamb": 0.98}


@dataclass
class InfLoRAConfig(TaskLoRAConfig):
    """InfLoRA's hyper-parameters (official ``configs/*_inflora.json``)."""

    lamb: float = 0.95
    """λ_b: the memory's energy threshold after the first task (ε_0)."""
    lame: float = 1.0
    """λ_e: the threshold ε_t approaches at the end of the stream (1.0 in every official config)."""

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.lamb <= self.lame <= 1.0:
            raise ClbenchError("InfLoRA needs 0 < lamb <= lame <= 1")


def design_down_projection(projected_moment: torch.Tensor, rank: int) -> torch.Tensor:
    """A = (top-``rank`` left singular vectors of Ĉ)ᵀ / √3: orthonormal rows of squared norm 1/3 (float32 SVD)."""
    with single_threaded(), full_precision():
        u, _, _ = torch.linalg.svd(projected_moment.float().cpu())
    return u[:, :rank].T / math.sqrt(3)


@register_method("inflora")
class InfLoRA(TaskLoRALearner):
    """InfLoRA with DualGPM on all blocks (the plain variant of the paper's main tables)."""

    config_class = InfLoRAConfig
    default_cfgs = {
        "cifar100": {"epochs": 20, "lr": 5e-4, "batch_size": 128, "rank": 10, "lamb": 0.95,
                     "defaults_source": "official configs/cifar100_inflora.json (cifar100_t10; the same recipe at "
                                        "T = 20)"},
        "imr": {**_INR, "defaults_source": "official configs/mimg{5,10,20}_inflora.json (imr_t5/t10/t20; the same "
                                           "recipe at T = 40)"},
        **imagenet_r_recipe(_INR, "official configs/mimg10_inflora.json", ("ima", "vtab", "cub", "objnet", "omni")),
        "domainnet": {"epochs": 5, "lr": 5e-4, "batch_size": 128, "rank": 30, "lamb": 0.95,
                      "defaults_source": "official configs/domainnet_inflora.json (epochs, batch, rank, lamb; the "
                                         "optimiser stays Adam 5e-4: the config's SGD belongs to InfLoRA_domain)"},
        "digits": {"epochs": 5, "lr": 5e-3, "batch_size": 32, "rank": 4, "lamb": 0.95,
                   "defaults_source": "ours, for the tiny digits ViT (not official)"},
    }
    def __init__(self, backbone, hparams: InfLoRAConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        if hparams.rank > self.backbone.num_features:
            raise ClbenchError(f"rank {hparams.rank} exceeds the backbone width {self.backbone.num_features}")
        self.memory = DualGPM(len(self.lora_layers), self.backbone.num_features).to(self.device)

    def new_branch(self, layer: LoRAQKV, generator: torch.Generator) -> LoRABranch:
        """k and v, rank r, zero up; the down is designed in :meth:`start_task`."""
        return layer.add_branch(self.hparams.rank, ("k", "v"), "zeros")

    def task_parameters(self, branch: LoRABranch) -> list[torch.nn.Parameter]:
        """Only the up-projections B^k, B^v train."""
        return [branch.up]

    @torch.no_grad()
    def start_task(self, task: Task) -> None:
        """Design A_t of every block from the task's input second moments and the memory."""
        # The new branch has zero A and B, so this is the model after task t-1.
        moments = input_moments(self.lora_layers, self.backbone, task.train_loader, self.device)
        for index, (branch, moment) in enumerate(zip(self.current_branches(), moments)):
            down = design_down_projection(self.memory.project(index, moment), self.hparams.rank)
            branch.down.copy_(down.to(branch.down).expand_as(branch.down))  # the same A for k and v

    @torch.no_grad()
    def finish_task(self, task: Task) -> None:
        """DualGPM update from the trained model's input second moments."""
        moments = input_moments(self.lora_layers, self.backbone, task.train_loader, self.device)
        threshold = gpm_threshold(task.index, task.num_tasks, self.hparams.lamb, self.hparams.lame)
        self.memory.update(moments, threshold)
        log.info("InfLoRA task %d: threshold %.4f, memory dims per block %s", task.index + 1, threshold,
                 self.memory.memory_dims())

    def parameter_report(self) -> ParameterReport:
        """Per task: B^k and B^v of every block (spec §6: 184,320 on ViT-B/16) plus the task's head."""
        repeated_downs = sum(b.down[1:].numel() for layer in self.lora_layers for b in layer.branches)
        report = self.lora_report("")
        report.notes = (
            f"per task: B^k, B^v (rank {self.hparams.rank}) in {len(self.lora_layers)} blocks; A designed and "
            f"frozen; head = Linear(dim, C_t) of the last task; stored = A and B of every task for k and v "
            f"({report.stored - repeated_downs:,} unique, A_k = A_v), heads and the DualGPM memory not counted")
        return report
