"""EASE, expandable subspace ensemble (Zhou et al., CVPR 2024), as PILOT runs it (``prompt_baselines.md`` §6).

- **Per task t**: a new set of AdaptFormer adapters (one per block, parallel to the MLP;
  ``benchmark/models/peft/adapter.py``)
  and a fresh local cosine head (learnable sigma) over the task's classes. Only these two train: CE on local
  labels y - known, SGD with momentum, cosine annealing per epoch down to 0. The backbone and adapter sets
  0..t-1 are frozen.
- **After task t**: the local head is discarded; the global classifier W holds one prototype per class and
  adapter subspace, (C_seen, t + 1, D). Every class of task t gets its prototypes in all subspaces j <= t (mean
  feature of its training images, test transform, with adapter set j). Old classes get the new subspaces by
  *semantic completion*: for old task i and subspace j in i+1..t, with N the classes of tasks j..t,
  W[a, j] = sum_n softmax_n(cos(W[a, i], W[n, i])) W[n, j] (recomputed every task; ``recalc_sim``).
- **Inference**: the CLS feature f_j(x) under every adapter set j <= t; the logit of class c of task i is
  sum_j w_ij cos(f_j(x), W[c, j]) with w_ii = 1 and w_ij = alpha / t for j != i. The adapter sets run batched
  along the batch dimension (``max_sets_per_pass`` sets per pass), equal to one pass per set.

Switches: ``recalc_sim=false`` completes only the newest subspace and keeps older completions (PILOT's
``solve_similarity``); ``reweight=false`` scores the cosine between the concatenations of all subspaces
(PILOT's ``use_reweight: false``). PILOT's ``use_init_ptm``/``beta``/``use_diagonal``/``use_old_data`` are off in
every shipped config and are not implemented.

Defaults on the newer benchmarks, from the EASE repository (sun-hailong/CVPR24-Ease @ 6d67508) with its in21k
backbone, as on ImageNet-A and VTAB: ``exps/ease_cub_in21k.json`` (init/later_epochs 20, lines 15/17; lr 0.008,
lines 16/18; batch_size 32, line 19; weight_decay 0.0005, line 20; ffn_num 64, line 27; alpha 0.05, line 30) and
``exps/ease_obj_in21k.json`` (epochs 25; lr 0.05; batch_size 48; weight_decay 0.005; ffn_num 64; alpha 0.2; same
lines). Both OmniBenchmark configs (``ease_omni.json``, ``ease_omni_in21k.json``) need ``moni_adam`` with
``adapter_num`` 1 and ``use_init_ptm`` (lines 31-37, not implemented; so does the in1k ``ease_cub.json``, and
``ease_obj.json`` trains with Adam); DomainNet has no config. OmniBenchmark and DomainNet take the ImageNet-R recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.learners.adapter_tuning import AdapterTuningConfig, tune_adapter_set
from benchmark.method import Method, ParameterReport, Task, backbone_size, count_parameters, imagenet_r_recipe
from benchmark.models.backbones import cls_feature, embed_tokens, run_blocks
from benchmark.models.classifiers import CosineLinear, prototype_pass
from benchmark.models.peft.adapter import (
    AdaptedMLP,
    adapter_set_parameters,
    add_adapter_set,
    attach_adapters,
    use_adapter_chunks,
    use_adapter_set,
)
from benchmark.precision import full_precision
from benchmark.registry import register_method

GPU_PASS_IMAGES = 512
"""Default bound on the images of one batched multi-set pass on CUDA (``max_sets_per_pass=None``)."""
IN1K_FT = "vit_base_patch16_224.augreg_in21k_ft_in1k"
IN21K = "vit_base_patch16_224.augreg_in21k"


# -- the global classifier: prototypes per class and subspace (plain tensors) ---------------------------------
def task_offsets(task_sizes: list[int]) -> list[int]:
    """First class of each task, plus the total: ``[0, n_0, n_0 + n_1, ..., C]``."""
    return [0, *accumulate(task_sizes)]


def subspace_weights(task_sizes: list[int], alpha: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """w (C, S): w[c, j] = 1 where j is the task of class c, alpha / t elsewhere (t = S - 1, the last task's index).

    PILOT's ``forward_reweight`` (``backbone/linears.py``): off-diagonal cosines are scaled by alpha and divided
    by the current task's 0-based number.
    """
    tasks = len(task_sizes)
    own = torch.repeat_interleave(torch.arange(tasks, device=device), torch.as_tensor(task_sizes, device=device))
    off_diagonal = alpha / (tasks - 1) if tasks > 1 else 0.0
    weights = torch.full((len(own), tasks), off_diagonal, device=device)
    weights[torch.arange(len(own), device=device), own] = 1.0
    return weights


def reweighted_logits(features: torch.Tensor, prototypes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """logit[b, c] = sum_j weights[c, j] cos(features[j, b], prototypes[c, j]).

    ``features`` (S, B, D), one row per adapter set; ``prototypes`` (C, S, D); ``weights`` (C, S). Returns (B, C).
    """
    weighted = F.normalize(prototypes, dim=-1) * weights.unsqueeze(-1)
    return torch.einsum("sbd,csd->bc", F.normalize(features, dim=-1), weighted)


def concatenated_cosine(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """cos([f_0(x); ...; f_t(x)], [W[c, 0]; ...; W[c, t]]): the cosine of the concatenations (no reweighting)."""
    flat_features = features.permute(1, 0, 2).flatten(1)
    return F.normalize(flat_features, dim=-1) @ F.normalize(prototypes.flatten(1), dim=-1).T


def semantic_completion(prototypes: torch.Tensor, task_sizes: list[int], recompute: bool = True) -> None:
    """Fill the prototypes of old classes in newer subspaces, in place (PILOT ``solve_sim_reset``).

    For each old task i < t and each subspace j in i+1..t (only j = t unless ``recompute``), with N the classes
    of tasks j..t: W[a, j] = sum_n softmax_n(cos(W[a, i], W[n, i])) W[n, j] for every class a of task i.
    Every W read here is a measured prototype (subspace <= the class's task), so the order does not matter.
    """
    offsets = task_offsets(task_sizes)
    last = len(task_sizes) - 1
    for i in range(last):
        own = slice(offsets[i], offsets[i + 1])
        for j in (range(i + 1, last + 1) if recompute else (last,)):
            newer = slice(offsets[j], offsets[last + 1])
            with full_precision():  # prototype arithmetic stays float32 under --precision bf16/fp16
                cosines = F.normalize(prototypes[own, i], dim=-1) @ F.normalize(prototypes[newer, i], dim=-1).T
                prototypes[own, j] = torch.softmax(cosines, dim=1) @ prototypes[newer, j]


class SubspacePrototypes(nn.Module):
    """EASE's global classifier W, a (classes, subspaces, dim) buffer that grows by one subspace per task."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(0, 0, dim))

    @property
    def dim(self) -> int:
        return self.weight.shape[2]

    def expand(self, new_classes: int) -> None:
        """Add ``new_classes`` rows and one subspace, zero-initialised; old entries are kept."""
        classes, subspaces, dim = self.weight.shape
        grown = self.weight.new_zeros(classes + new_classes, subspaces + 1, dim)
        grown[:classes, :subspaces] = self.weight
        self.weight = grown

    def resize(self, classes: int, subspaces: int) -> None:
        """Zeros of the given shape (structure restore before loading a state dict)."""
        self.weight = self.weight.new_zeros(classes, subspaces, self.dim)

    def forward(self, features: torch.Tensor, task_sizes: list[int], alpha: float,
                reweight: bool = True) -> torch.Tensor:
        """Scores (B, C) from per-set features (S, B, D)."""
        if features.shape[0] != self.weight.shape[1]:
            raise ClbenchError(f"got features of {features.shape[0]} adapter sets for {self.weight.shape[1]} subspaces")
        if not reweight:
            return concatenated_cosine(features, self.weight)
        return reweighted_logits(features, self.weight, subspace_weights(task_sizes, alpha, features.device))


# -- the method --------------------------------------------------------------------------------------------
@dataclass
class EASEConfig(AdapterTuningConfig):
    """EASE hyper-parameters; class defaults are PILOT ``exps/ease.json`` (CIFAR-100), per family in ``default_cfgs``.
    Each task's adapter set is tuned as APER's and RanPAC's first one (:mod:`benchmark.learners.adapter_tuning`)."""

    batch_size: int = 48
    """Train batch size (also PILOT's test batch size; EASE's predictions do not depend on it)."""
    epochs: int = 20
    """Epochs per task (``init_epochs`` = ``later_epochs`` in every shipped config)."""
    lr: float = 0.025
    """SGD learning rate, cosine-annealed per epoch to 0 (``min_lr`` 0); a new optimiser per task."""
    bottleneck: int = 64
    """Adapter bottleneck r (``ffn_num``): 64, 16 in the EASE repository's VTAB configs."""
    defaults_source: str = "PILOT exps/ease.json"
    """Where the benchmark family's defaults come from (recorded in the saved config, not used in training)."""
    alpha: float = 0.1
    """Weight of the other subspaces' cosines, divided by the current task's 0-based number."""
    recalc_sim: bool = True
    """Recompute the semantic completion of every old subspace pair each task (PILOT default); false: only
    complete the newest subspace and keep the older completions (``solve_similarity``)."""
    reweight: bool = True
    """Reweighted subspace cosines (``use_reweight``); false: one cosine between the concatenated features."""
    max_sets_per_pass: int | None = None
    """Adapter sets batched along the batch dimension per inference pass (0: all). None: as many as fit in 512
    images per pass on CUDA; one per pass on CPU, where big batches are memory-bound. Results are equal."""

    min_epochs: ClassVar[int] = 1

    def validate(self) -> None:
        super().validate()
        if self.alpha < 0 or (self.max_sets_per_pass or 0) < 0:
            raise ClbenchError("alpha and max_sets_per_pass must be >= 0")


_INR = {"epochs": 20, "batch_size": 16, "lr": 0.05, "weight_decay": 5e-3, "bottleneck": 64}


@register_method("ease")
class EASE(Method):
    """One adapter set per task, prototypes in every subspace, semantic completion, reweighted cosine inference."""

    config_class = EASEConfig
    default_cfgs = {
        "cifar100": {"epochs": 20, "batch_size": 48, "lr": 0.025, "weight_decay": 5e-4, "bottleneck": 64,
                     "defaults_source": "PILOT exps/ease.json (cifar224, 5/5)"},
        "imr": {**_INR, "defaults_source": "PILOT exps/ease_inr.json (imagenetr, 20/20)"},
        "ima": {**_INR, "batch_size": 32, "defaults_source": "EASE repo exps/ease_ina_in21k.json (20/20)"},
        "vtab": {"epochs": 45, "batch_size": 16, "lr": 0.03, "weight_decay": 5e-3, "bottleneck": 16,
                 "defaults_source": "EASE repo exps/ease_vtab_in21k.json (10/10)"},
        "cub": {"epochs": 20, "batch_size": 32, "lr": 0.008, "weight_decay": 5e-4, "bottleneck": 64, "alpha": 0.05,
                "defaults_source": "EASE repo exps/ease_cub_in21k.json (10/10)"},
        "objnet": {"epochs": 25, "batch_size": 48, "lr": 0.05, "weight_decay": 5e-3, "bottleneck": 64, "alpha": 0.2,
                   "defaults_source": "EASE repo exps/ease_obj_in21k.json (10/10)"},
        **imagenet_r_recipe(_INR, "PILOT exps/ease_inr.json", ("omni",), "the EASE repo's needs moni_adam"),
        **imagenet_r_recipe(_INR, "PILOT exps/ease_inr.json", ("domainnet",)),
        "digits": {"epochs": 2, "batch_size": 32, "lr": 0.5, "weight_decay": 5e-4, "bottleneck": 8,
                   "defaults_source": "ours, for the tiny 4-block digits ViT (not official)"},
    }
    # Backbones as the configs the defaults come from (spec §6 table): PILOT's in1k-ft on CIFAR-100 and
    # ImageNet-R (and where its recipe applies), the EASE repository's in21k on ImageNet-A, VTAB, CUB, ObjectNet.
    default_backbones = {"cifar100": IN1K_FT, "imr": IN1K_FT, "ima": IN21K, "vtab": IN21K, "cub": IN21K,
                         "objnet": IN21K, "omni": IN1K_FT, "domainnet": IN1K_FT}

    def __init__(self, backbone, hparams: EASEConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.freeze_backbone()
        self.backbone_parameters = backbone_size(self.backbone)
        self.feature_dim = self.backbone.num_features
        # A plain list: the wrappers are registered once, inside the backbone.
        self.wrappers: list[AdaptedMLP] = attach_adapters(self.backbone)
        self.classifier = SubspacePrototypes(self.feature_dim)
        self.to(self.device)

    # -- structure ---------------------------------------------------------------------------------
    @property
    def num_sets(self) -> int:
        """Adapter sets attached so far (one per started task)."""
        return len(self.wrappers[0].adapters) if self.wrappers else 0

    def set_parameters(self, index: int) -> list[nn.Parameter]:
        """The parameters of adapter set ``index`` over all blocks."""
        return adapter_set_parameters(self.wrappers, index)

    def _add_set(self, index: int) -> torch.Generator:
        generator = self.make_generator(1 + index)
        hp = self.hparams
        add_adapter_set(self.wrappers, hp.bottleneck, hp.adapter_scale, hp.adapter_dropout, generator)
        return generator

    def restore_structure(self, task_sizes: list[int]) -> None:
        """Frozen adapter sets and a zero global classifier, as after learning tasks of ``task_sizes``."""
        for index in range(self.num_sets, len(task_sizes)):
            self._add_set(index)
            for parameter in self.set_parameters(index):
                parameter.requires_grad_(False)
        self.classifier.resize(sum(task_sizes), len(task_sizes))
        self.task_sizes = list(task_sizes)

    # -- forward passes ----------------------------------------------------------------------------
    def set_feature(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """f_index(x): the CLS feature after the final LayerNorm with adapter set ``index`` (one full pass)."""
        with use_adapter_set(self.wrappers, index):
            return self.backbone(images)

    def _sets_per_pass(self, batch: int, sets: int) -> int:
        limit = self.hparams.max_sets_per_pass
        if limit is None:
            return max(1, GPU_PASS_IMAGES // batch) if self.device.type == "cuda" else 1
        return limit or sets

    def set_features(self, images: torch.Tensor, sets: list[int] | None = None) -> torch.Tensor:
        """(S, B, D): f_j(x) for every adapter set j in ``sets`` (default all), sets batched along the batch.

        The embedding runs once; the blocks run once per group of ``max_sets_per_pass`` sets, each set on its
        own chunk of the repeated tokens.
        """
        sets = list(range(self.num_sets)) if sets is None else list(sets)
        vit, batch = self.backbone, images.shape[0]
        tokens = embed_tokens(vit, images)
        per_pass = self._sets_per_pass(batch, len(sets))
        features = []
        for start in range(0, len(sets), per_pass):
            group = sets[start:start + per_pass]
            with use_adapter_chunks(self.wrappers, group):
                hidden = run_blocks(vit, tokens.repeat(len(group), 1, 1))
            features.append(cls_feature(vit, hidden).view(len(group), batch, -1))
        return torch.cat(features)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Reweighted subspace cosines over all seen classes. Every adapter set's features of the batch; set k is
        frozen after task k + 1, so evaluation keeps its features and runs only the sets an image lacks."""
        hp, sets = self.hparams, range(self.num_sets)
        features = self.frozen_stack([f"set{index}" for index in sets], [index + 1 for index in sets], images,
                                     lambda subset, indices: self.set_features(subset, indices))
        return self.classifier(features, self.task_sizes, hp.alpha, hp.reweight)

    # -- training ----------------------------------------------------------------------------------
    def train_task(self, task: Task) -> None:
        """Train a new adapter set and local head on the task; then prototypes and semantic completion."""
        index = self.num_sets
        if index != len(self.task_sizes):
            raise ClbenchError(f"EASE holds {index} adapter sets for {len(self.task_sizes)} learned tasks")
        generator = self._add_set(index)
        head = CosineLinear(self.feature_dim, task.num_classes, generator=generator).to(self.device)
        tune_adapter_set(lambda images: self.set_feature(images, index), self.set_parameters(index), head, task,
                         self.hparams, self.device)
        self.update_classifier(task)

    def update_classifier(self, task: Task) -> None:
        """Prototypes of the task's classes in every subspace; semantic completion of the old classes."""
        was_training = self.training
        self.eval()
        sets = self.num_sets
        prototypes = prototype_pass(lambda images: self.set_features(images).permute(1, 0, 2).flatten(1),
                                    task.train_eval_loader, task.classes, self.device)
        self.train(was_training)
        self.classifier.expand(task.num_classes)
        self.classifier.weight[-task.num_classes:] = prototypes.view(task.num_classes, sets, self.feature_dim)
        semantic_completion(self.classifier.weight, [*self.task_sizes, task.num_classes], self.hparams.recalc_sim)

    # -- reporting ---------------------------------------------------------------------------------
    def parameter_report(self) -> ParameterReport:
        """Per task: one adapter set (the local head separately); stored: every set and W (C x D x T)."""
        tasks = len(self.task_sizes)
        per_set = count_parameters(self.set_parameters(tasks - 1)) if tasks else 0
        head = self.feature_dim * self.task_sizes[-1] + 1 if tasks else 0
        adapters = count_parameters(p for wrapper in self.wrappers for p in wrapper.adapters.parameters())
        stored = adapters + self.classifier.weight.numel()
        return ParameterReport(
            backbone=self.backbone_parameters, trainable_task=per_set, head=head, trainable_total=per_set + head,
            stored=stored,
            notes=f"per task: one adapter set (r = {self.hparams.bottleneck}); head = local cosine head "
                  f"(discarded); stored = {tasks} adapter sets + global prototypes "
                  f"{tuple(self.classifier.weight.shape)}")
