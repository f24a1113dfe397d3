"""CL-LoRA (He, Duan, Zhu, CVPR 2025): task-shared and task-specific LoRA for rehearsal-free CIL.

Spec: ``../shared/specs/cl_lora.md`` (the official code, JiangpengHe/CL-LoRA @ df4e74e). The code's
behaviour is the default; the paper's variants and the Table 2/3 ablations are switches of :class:`CLLoRAConfig`.

- **Adapters** on the fused ``attn.qkv`` of a timm ViT (q and v by default, rank r, no scaling):
  blocks ``[0, l)`` hold one task-shared LoRA for the whole run (down-projection a fixed random orthonormal
  matrix, up-projection zero-init and trained in every task); blocks ``[l, depth)`` get a new task-specific
  LoRA per task (trained, then frozen), scaled by that task's block weights (3 x (depth - l), U(0.5, 1.5)).
- **Training** on task t: a fresh cosine head over the task's classes, local labels, CE on the full pass. From
  task 2 on, KD at the early exit (CLS after the l shared blocks and the final LayerNorm, through the same head)
  from the previous task's shared up-projections (temperature 2, weight 5, no T^2); the KD gradient of each
  shared up-projection is rescaled row by row with the teacher's row norms (gradient reassignment); an
  orthogonality term on the block weights (weight 1e-4). Two SGD steps per batch, ported as the spec's §3
  prescribes: both gradients at the pre-update parameters, KD step first, then the CE step.
- **After the task**: class prototypes = mean raw feature of each class's training images (test transform)
  through the task's own adapter; frozen from then on.
- **Inference**: the logit of class c of task k is cos(f_k(x), p_c), where f_k uses task k's specific adapter.
  The shared trunk runs once per batch, and the specific blocks run once for all tasks with the task adapters
  batched along the batch dimension: l + (N - l) T block passes (spec "Permitted optimisations" 1).

Switches (``--set key=value``):
- ``kd``, ``grad_reassign``, ``block_weights``: the Table 2 components (``grad_reassign`` acts on the KD gradient:
  no effect when ``kd`` is off; without block weights w = 1 and there is no orthogonality term);
- ``targets``, ``rank``: the Table 3 LoRA configuration; ``shared_blocks``: the split position l (Fig. 3);
- paper variants where the code differs (spec §8): ``update=joint`` (one objective CE + 5 KD + 1e-4 L_orth and one
  SGD step), ``orth=eq12`` (Eq. 12 on one block weight per block shared by all slots, unnormalised and summed),
  ``shared_down_init=gaussian_svd`` (Eq. 7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from benchmark import precision
from benchmark.errors import ClbenchError
from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size, count_parameters
from benchmark.models.backbones import cls_feature, embed_tokens, run_blocks
from benchmark.models.classifiers import CosineLinear, CosinePrototypeClassifier, prototype_pass
from benchmark.models.peft.lora import LoRABranch, LoRAQKV, attach_lora
from benchmark.registry import register_method
from benchmark.training import build_optimizer, build_scheduler, run_epochs
from methods.cl_lora_defaults import DEFAULT_CFGS

STUDENT, TEACHER = 0, 1
"""Branch indices on the shared wrappers: the trained shared adapter, and (during a task) its frozen snapshot."""
GPU_BRANCH_BATCH = 512
"""Default bound on the images per pass of the batched task-specific blocks on CUDA (memory)."""


@dataclass
class CLLoRAConfig(MethodConfig):
    """CL-LoRA hyper-parameters. Defaults per benchmark: the official ``exps/*.json`` (``cl_lora_defaults``)."""

    epochs: int = 20
    """Epochs per task (cosine schedule stepped per epoch, down to 0)."""
    lr: float = 0.05
    """SGD learning rate (a new optimiser per task)."""
    weight_decay: float = 5e-4
    """On every trainable tensor: LoRA, block weights, head and its sigma."""
    momentum: float = 0.9
    """SGD momentum (hard-coded 0.9 upstream)."""
    rank: int = 10
    """LoRA rank r of the shared and specific adapters (8 on CIFAR-100 in the code, 10 elsewhere)."""
    targets: tuple[str, ...] = ("q", "v")
    """Which of q, k, v get LoRA (Table 3)."""
    shared_blocks: int = 6
    """l: blocks [0, l) hold the task-shared adapter, blocks [l, depth) the task-specific ones."""
    kd: bool = True
    """Early-exit knowledge distillation from the previous task's shared adapter (Table 2, KD)."""
    grad_reassign: bool = True
    """Rescale the KD gradient of the shared up-projections by the teacher's row norms (Table 2, GR)."""
    block_weights: bool = True
    """Learnable block-wise weights per task and their orthogonality term (Table 2, BW); off: w = 1."""
    update: Literal["two_step", "joint"] = "two_step"
    """``two_step``: the code's KD step then CE(+orth) step; ``joint``: the paper's Eq. 13, one step."""
    orth: Literal["cosine", "eq12"] = "cosine"
    """``cosine``: the code's |cos| of 3 x (depth-l) weights averaged over old tasks; ``eq12``: the paper's."""
    shared_down_init: Literal["qr_uniform", "gaussian_svd"] = "qr_uniform"
    """Shared down-projection: the code's QR of U[0,1), or the paper's Gaussian + SVD (Eq. 7)."""
    kd_weight: float = 5.0
    """lambda_1, the weight of the KD loss (hard-coded upstream)."""
    kd_temperature: float = 2.0
    """KD temperature (no T^2 factor, as upstream)."""
    orth_weight: float = 1e-4
    """lambda_2, the weight of the orthogonality term on the block weights."""
    max_branch_batch: int | None = None
    """Most images per pass through the task-specific blocks at inference, task adapters batched up to it (0: all
    tasks in one pass). None: 512 on CUDA; one task per pass on CPU, where big batches are memory-bound."""

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise ClbenchError("rank must be >= 1")
        if not self.targets or len(set(self.targets)) != len(self.targets) or \
                any(t not in ("q", "k", "v") for t in self.targets):
            raise ClbenchError(f"targets must be distinct slots among q, k, v, got {self.targets}")
        if self.shared_blocks < 0:
            raise ClbenchError("shared_blocks must be >= 0")
        if self.epochs < 1 or self.lr <= 0 or (self.max_branch_batch or 0) < 0:
            raise ClbenchError("epochs must be >= 1, lr > 0 and max_branch_batch >= 0")


class StepLosses(NamedTuple):
    """The loss terms of one training batch (``kd`` and ``orth`` are ``None`` where they do not apply)."""

    ce: torch.Tensor
    kd: torch.Tensor | None
    orth: torch.Tensor | None


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """(1/B) sum_b sum_c -softmax(teacher/T) log_softmax(student/T): no T^2, teacher not detached (spec §3).

    Softmaxes in float32 whatever the autocast precision of the logits.
    """
    with precision.full_precision():
        targets = torch.softmax(teacher.float() / temperature, dim=1)
        return -(targets * torch.log_softmax(student.float() / temperature, dim=1)).sum(1).mean()


def reassignment_weights(teacher_up: torch.Tensor) -> torch.Tensor:
    """omega_i = d * s_i / sum_k s_k with s_i the L2 norm of row i of each teacher up-projection (Eq. 10).

    ``teacher_up``: (M, d, r); returns (M, d, 1), to multiply the KD gradient of the student's up-projections.
    """
    norms = teacher_up.norm(dim=2)
    return (norms.shape[1] * norms / norms.sum(dim=1, keepdim=True)).unsqueeze(-1)


def orthogonality_cosine(current: torch.Tensor, previous: list[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """The code's L_orth: mean over old tasks k of |<w_t/(|w_t|+eps), w_k/(|w_k|+eps)>| (flattened weights)."""
    with precision.full_precision():
        unit = current.flatten() / (current.norm() + eps)
        olds = torch.stack([w.flatten() / (w.norm() + eps) for w in previous])
        return (olds @ unit).abs().mean()


def orthogonality_eq12(current: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
    """The paper's Eq. 12 read literally: sum over old tasks i of sum_{j,k} |(U_t^T U_i)_jk| (U: per-block weights)."""
    with precision.full_precision():
        olds = torch.stack([w.flatten() for w in previous])
        return (current.flatten()[None, :, None] * olds[:, None, :]).abs().sum()


@register_method("cl_lora")
class CLLoRA(Method):
    """Task-shared LoRA in the first l blocks, task-specific weighted LoRA after them, per-task prototypes."""

    config_class = CLLoRAConfig
    default_cfgs = DEFAULT_CFGS
    """Per family, with its source: :mod:`methods.cl_lora_defaults`."""
    predict_variants = {"per-task passes": {"shared_trunk": False}}
    # Backbones: the harness defaults (runs/resolve.py) are CL-LoRA's: AugReg in21k, in21k -> in1k on ImR (inr.json).

    def __init__(self, backbone, hparams: CLLoRAConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        depth = len(self.backbone.blocks)
        if hparams.shared_blocks > depth:
            raise ClbenchError(f"shared_blocks={hparams.shared_blocks} exceeds the backbone's {depth} blocks")
        self.freeze_backbone()
        self.backbone_parameters = backbone_size(self.backbone)
        self.feature_dim = self.backbone.num_features
        self.split = hparams.shared_blocks
        # Plain lists: the wrappers are registered once, inside the backbone.
        self.shared_qkv: list[LoRAQKV] = attach_lora(self.backbone, range(self.split))
        self.specific_qkv: list[LoRAQKV] = attach_lora(self.backbone, range(self.split, depth))
        generator = self.make_generator(0)
        for wrapper in self.shared_qkv:
            branch = wrapper.add_branch(hparams.rank, hparams.targets, hparams.shared_down_init, generator)
            branch.down.requires_grad_(False)
        self.prototypes = CosinePrototypeClassifier(self.feature_dim)
        self.current_task: int | None = None
        """Index of the task in training (its specific adapter is the last branch), else ``None``."""
        self.current_known = 0
        """Classes learned before the task in training (its labels become local by subtracting it)."""
        self.train_head: CosineLinear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.reassign: list[torch.Tensor] = []
        self.to(self.device)

    # -- structure ---------------------------------------------------------------------------------
    def _add_task_adapters(self, index: int) -> tuple[torch.Generator, list[LoRABranch]]:
        """New specific LoRA (QR init, zero up) and block weights U(0.5, 1.5) for task ``index``."""
        hp = self.hparams
        generator = self.make_generator(1 + index)
        branches = []
        for wrapper in self.specific_qkv:
            scale = None
            if hp.block_weights:
                scale = torch.rand(1 if hp.orth == "eq12" else 3, generator=generator) + 0.5
            branches.append(wrapper.add_branch(hp.rank, hp.targets, "qr_uniform", generator, scale))
        return generator, branches

    def _shared_branches(self) -> list[LoRABranch]:
        return [wrapper.branches[STUDENT] for wrapper in self.shared_qkv]

    def _task_branches(self, index: int) -> list[LoRABranch]:
        return [wrapper.branches[index] for wrapper in self.specific_qkv]

    def block_weight_tensor(self, index: int) -> torch.Tensor:
        """Task ``index``'s block weights, (slots, depth - l): rows q, k, v (or one row with ``orth=eq12``)."""
        scales = [branch.scale for branch in self._task_branches(index)]
        if not scales:
            return torch.zeros(1, 0, device=self.device)
        return torch.stack(scales, dim=1)

    def restore_structure(self, task_sizes: list[int]) -> None:
        """Specific adapters (frozen) and zero prototypes for ``task_sizes``, as after learning those tasks."""
        for index in range(len(self.task_sizes), len(task_sizes)):
            for branch in self._add_task_adapters(index)[1]:
                branch.requires_grad_(False)
        self.prototypes.prototypes = self.prototypes.prototypes.new_zeros(sum(task_sizes), self.feature_dim)
        self.task_sizes = list(task_sizes)

    # -- forward passes ----------------------------------------------------------------------------
    def _route(self, shared: int = STUDENT, specific: list[int] | None = None, batched: bool = False) -> None:
        """Select the shared branch, and the specific branch (or one branch per batch chunk when ``batched``).

        Without ``specific`` no specific branch acts (never the sum of all of them).
        """
        specific = list(specific or [])
        for wrapper in self.shared_qkv:
            wrapper.active, wrapper.per_chunk = [shared], None
        for wrapper in self.specific_qkv:
            wrapper.active, wrapper.per_chunk = (None, specific) if batched else (specific, None)

    def task_feature(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """The feature of task ``index``'s branch: a full pass, shared adapter then task ``index``'s adapter."""
        self._route(specific=[index])
        return cls_feature(self.backbone, run_blocks(self.backbone, embed_tokens(self.backbone, images)))

    def task_features(self, images: torch.Tensor, shared_trunk: bool = True) -> torch.Tensor:
        """Features of every task's branch, (T, B, D).

        ``shared_trunk``: run blocks [0, l) once, then blocks [l, depth) once for all tasks, the task adapters
        batched (up to ``max_branch_batch`` images per pass); otherwise T full passes (the official code).
        """
        tasks = list(range(len(self.task_sizes)))
        if not shared_trunk:
            return torch.stack([self.task_feature(images, index) for index in tasks])
        self._route()
        trunk = run_blocks(self.backbone, embed_tokens(self.backbone, images), 0, self.split)
        limit = self.hparams.max_branch_batch
        if limit is None:
            limit = GPU_BRANCH_BATCH if images.device.type == "cuda" else images.shape[0]
        per_pass = max(1, limit // images.shape[0]) if limit else len(tasks)
        features = []
        for start in range(0, len(tasks), per_pass):
            group = tasks[start:start + per_pass]
            self._route(specific=group, batched=True)
            tokens = run_blocks(self.backbone, trunk.repeat(len(group), 1, 1), self.split)
            features.append(cls_feature(self.backbone, tokens).view(len(group), images.shape[0], -1))
        self._route()
        return torch.cat(features)

    def prototype_logits(self, features: torch.Tensor) -> torch.Tensor:
        """logit(c) = cos(f_{task(c)}, p_c) from per-task features (T, B, D); (B, classes)."""
        sizes = torch.as_tensor(self.task_sizes, device=features.device)
        task_of_class = torch.repeat_interleave(torch.arange(len(sizes), device=features.device), sizes)
        features = F.normalize(features, dim=-1)[task_of_class]
        prototypes = F.normalize(self.prototypes.prototypes, dim=-1)
        return torch.einsum("nbd,nd->bn", features, prototypes)

    def predict(self, images: torch.Tensor, shared_trunk: bool = True) -> torch.Tensor:
        """Cosine to each class's prototype, with the feature of the class's own task (no task id)."""
        return self.prototype_logits(self.task_features(images, shared_trunk))

    # -- training ----------------------------------------------------------------------------------
    def train_task(self, task: Task) -> None:
        """Train the shared ups, a new specific adapter and block weights; then store prototypes."""
        self.start_task(task)
        scheduler = build_scheduler(self.optimizer, "cosine", self.hparams.epochs)
        run_epochs(task, self.hparams.epochs, self.training_step, self.device, scheduler)
        self.finish_task(task)

    def start_task(self, task: Task) -> None:
        """New specific adapters, block weights and cosine head; snapshot the teacher; new SGD optimiser."""
        hp = self.hparams
        index = self.current_task = len(self.task_sizes)
        self.current_known = task.known_classes
        generator, _ = self._add_task_adapters(index)
        self.train_head = CosineLinear(self.feature_dim, task.num_classes, generator=generator).to(self.device)
        if index > 0 and hp.kd:
            self.reassign = []
            for wrapper in self.shared_qkv:
                student = wrapper.branches[STUDENT]
                teacher = wrapper.add_branch(hp.rank, hp.targets, "zeros")
                teacher.load_state_dict(student.state_dict())
                teacher.requires_grad_(False)
                self.reassign.append(reassignment_weights(teacher.up))
        self.optimizer = build_optimizer(self.trainable_parameters(), "sgd", hp.lr, hp.weight_decay, hp.momentum)

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> StepLosses:
        """CE of the training head on the full pass (local labels); KD at the early exit; L_orth."""
        hp, vit = self.hparams, self.backbone
        index = self.current_task
        self._route(specific=[index])
        tokens = embed_tokens(vit, images)
        trunk = run_blocks(vit, tokens, 0, self.split)
        logits = self.train_head(cls_feature(vit, run_blocks(vit, trunk, self.split)))
        ce = F.cross_entropy(logits, labels - self.current_known)
        kd = orth = None
        if index > 0 and hp.kd:
            # The student's early exit is the CE pass's trunk (spec optimisation 4); the teacher runs its own.
            student = self.train_head(cls_feature(vit, trunk))
            with torch.no_grad():
                self._route(shared=TEACHER)
                teacher_trunk = run_blocks(vit, tokens, 0, self.split)
                self._route()
            teacher = self.train_head(cls_feature(vit, teacher_trunk))
            kd = hp.kd_weight * distillation_loss(student, teacher, hp.kd_temperature)
        if index > 0 and hp.block_weights:
            previous = [self.block_weight_tensor(k) for k in range(index)]
            current = self.block_weight_tensor(index)
            orth = orthogonality_cosine(current, previous) if hp.orth == "cosine" else \
                orthogonality_eq12(current, previous)
        return StepLosses(ce, kd, orth)

    def _reassign_kd_gradients(self) -> None:
        if self.hparams.grad_reassign:
            for branch, weights in zip(self._shared_branches(), self.reassign):
                if branch.up.grad is not None:
                    branch.up.grad.mul_(weights)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One batch: a single SGD step without KD; with KD the code's two steps (or one, ``update=joint``)."""
        ce, kd, orth = self.losses(images, labels)
        main = ce if orth is None else ce + self.hparams.orth_weight * orth
        # Backward passes and steps through benchmark/precision.py: loss-scaled (and inf-checked) under fp16.
        optimizer = self.optimizer
        optimizer.zero_grad(set_to_none=True)
        if kd is None:
            precision.backward(main)
            precision.step(optimizer)
            return main.detach()
        if self.hparams.update == "joint":
            precision.backward(kd, retain_graph=True)
            self._reassign_kd_gradients()
            precision.backward(main)
            precision.step(optimizer)
        else:
            # Spec §3 port: both gradients at the pre-update parameters; step 1 leaves grad-None params alone.
            precision.backward(main, retain_graph=True)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            stash, stash_scale = [p.grad for p in params], precision.loss_scale()
            optimizer.zero_grad(set_to_none=True)
            precision.backward(kd)
            self._reassign_kd_gradients()
            precision.step(optimizer)
            rescale = precision.loss_scale() / stash_scale  # fp16: step 1 may have changed the loss scale
            for param, grad in zip(params, stash):
                param.grad = grad if grad is None or rescale == 1.0 else grad * rescale
            precision.step(optimizer)
        return (main + kd).detach()

    def finish_task(self, task: Task) -> None:
        """Freeze the task's adapter; prototypes of its classes through its own adapter; drop teacher and head."""
        index = self.current_task
        for branch in self._task_branches(index):
            branch.requires_grad_(False)
        for wrapper in self.shared_qkv:
            del wrapper.branches[STUDENT + 1:]
        self.reassign, self.optimizer, self.train_head, self.current_task = [], None, None, None
        was_training = self.training
        self.eval()
        prototypes = prototype_pass(lambda images: self.task_feature(images, index), task.train_eval_loader,
                                    task.classes, self.device)
        self._route()
        self.prototypes.add(prototypes)
        self.train(was_training)

    # -- reporting ---------------------------------------------------------------------------------
    def parameter_report(self) -> ParameterReport:
        """Per task: shared ups + the task's specific LoRA and block weights; stored: what inference keeps."""
        shared = self._shared_branches()
        shared_ups = count_parameters(branch.up for branch in shared)
        tasks = len(self.task_sizes)
        last = count_parameters(p for b in self._task_branches(tasks - 1) for p in b.parameters()) if tasks else 0
        head = self.feature_dim * self.task_sizes[-1] + 1 if self.task_sizes else 0
        specific = count_parameters(p for w in self.specific_qkv for p in w.branches.parameters())
        stored = count_parameters(p for b in shared for p in b.parameters()) + specific + \
            self.prototypes.prototypes.numel()
        return ParameterReport(
            backbone=self.backbone_parameters, trainable_task=shared_ups + last, head=head,
            trainable_total=shared_ups + last + head, stored=stored,
            notes=f"per task: shared up-projections {shared_ups:,} + task-specific LoRA and block weights "
                  f"{last:,}; head = cosine training head (discarded); stored = shared LoRA + {tasks} specific "
                  f"LoRA sets + {self.prototypes.num_classes} prototypes")
