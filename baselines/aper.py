"""APER w/ Adapter (Zhou et al., IJCV 2024; also called ADAM), as the authors' code runs it.

Spec: ``../shared/specs/more_baselines.md`` §2 (RevisitingCIL / PILOT ``models/aper_adapter.py``).

- **First task only:** one AdaptFormer adapter set (r = 64, s = 0.1, dropout 0.1) and a cosine head with
  learnable σ are trained with CE (SGD, cosine annealing per epoch); then the adapters are frozen and the head
  is discarded (:mod:`benchmark.learners.first_task_adapter`).
- **Merged feature:** φ(x) = [f_pre(x) ; f_ad(x)], the CLS after the final LayerNorm of the same frozen ViT with
  the adapters off, then on (raw, concatenated in this order; 1,536-d at ViT-B/16). By default both halves come
  from one pass over [x ; x] with the adapters on for the second half only (spec §2.8; ``batch_branches``).
- **Every task (the first included):** the prototype of each new class is the mean φ of its training images
  under the test transform; prototypes are appended and never recomputed.
- **Inference:** cos(φ(x), p_c) over all seen classes (σ = 1; the whole 1,536-d vector is normalised), argmax.

Defaults are the authors' RevisitingCIL configs per benchmark (IN21k backbone); ``aper_recipe=pilot`` takes
PILOT's configs instead (which ran the IN1k-fine-tuned backbone: pass ``--backbone`` with it). CUB-200,
ObjectNet and OmniBenchmark have RevisitingCIL configs, ``exps/aper_adapter/cub_10_10_vit-b_adapter.json``,
``objectnet_10_10_vit-b_adapter.json`` and ``omni_30_30_vit-b_adapter.json``: each sets weight_decay 0.0005
(line 12), ffn_num 64 (line 14), tuned_epoch 20 (line 23), init_lr 0.01 (line 24) and batch_size 48 (line 25).
DomainNet has none, and PILOT ships none of the four: there the ImageNet-R recipe applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from benchmark.learners.first_task_adapter import ADAPTER_SET, FirstTaskAdapterConfig, FirstTaskAdapterLearner
from benchmark.method import ParameterReport, Task
from benchmark.models.classifiers import CosineLinear, CosinePrototypeClassifier, prototype_pass
from benchmark.models.peft.adapter import use_adapter_chunks, use_adapter_set
from benchmark.registry import register_method

IN21K = "vit_base_patch16_224.augreg_in21k"
FAMILIES = ("cifar100", "imr", "ima", "vtab", "cub", "objnet", "omni", "domainnet")

_SMALL = {"epochs": 20, "batch_size": 48, "lr": 0.01, "weight_decay": 5e-4}
_INR_AUTHORS = {"epochs": 20, "batch_size": 24, "lr": 0.05, "weight_decay": 5e-3}
_INR_PILOT = {"epochs": 10, "batch_size": 16, "lr": 0.05, "weight_decay": 5e-3}
_OURS = ({"epochs": 5, "batch_size": 32, "lr": 0.01, "weight_decay": 5e-4},
         "ours, for the tiny digits ViT (not official)")
RECIPES: dict[str, dict[str, tuple[dict, str]]] = {
    "revisitingcil": {
        "cifar100": (_SMALL, "RevisitingCIL exps/aper_adapter/cifar224_5_5_vit-b_adapter.json (5/5 = cifar100_t20; "
                             "the same recipe at other T)"),
        "imr": (_INR_AUTHORS, "RevisitingCIL exps/aper_adapter/imagenetr_5_5_vit-b_adapter.json (5/5 = imr_t40; "
                              "the same recipe at other T)"),
        "ima": (_SMALL, "RevisitingCIL exps/aper_adapter/imageneta_10_10_vit-b_adapter.json (10/10 = ima_t20; "
                        "the same recipe at other T)"),
        "vtab": (_SMALL, "RevisitingCIL exps/aper_adapter/vtab_10_10_vit-b_adapter.json (10/10 = vtab_t5; the "
                         "same recipe at other T)"),
        "cub": (_SMALL, "RevisitingCIL exps/aper_adapter/cub_10_10_vit-b_adapter.json (10/10 = cub_t20; the same "
                        "recipe at other T)"),
        "objnet": (_SMALL, "RevisitingCIL exps/aper_adapter/objectnet_10_10_vit-b_adapter.json (10/10 = objnet_t20; "
                           "the same recipe at other T)"),
        "omni": (_SMALL, "RevisitingCIL exps/aper_adapter/omni_30_30_vit-b_adapter.json (30/30 = omni_t10; the same "
                         "recipe at other T)"),
        "domainnet": (_INR_AUTHORS, "ImageNet-R recipe (no official config for domainnet): RevisitingCIL "
                                    "exps/aper_adapter/imagenetr_5_5_vit-b_adapter.json"),
        "digits": _OURS,
    },
    "pilot": {
        "cifar100": (_SMALL, "PILOT exps/aper_aperpter.json (cifar224 10/10)"),
        "imr": (_INR_PILOT, "PILOT exps/aper_aperpter_inr.json (imagenetr 20/20)"),
        "ima": (_SMALL, "harness choice: PILOT exps/aper_aperpter.json values (PILOT ships no ImageNet-A config)"),
        "vtab": (_SMALL, "harness choice: PILOT exps/aper_aperpter.json values (PILOT ships no VTAB config)"),
        **{family: (_INR_PILOT, f"ImageNet-R recipe (no PILOT config for {family}): PILOT exps/aper_aperpter_inr.json")
           for family in ("cub", "objnet", "omni", "domainnet")},
        "digits": _OURS,
    },
}


@dataclass
class AperConfig(FirstTaskAdapterConfig):
    """APER hyper-parameters. epochs, batch_size, lr and weight_decay left at None come from ``aper_recipe``
    for the benchmark family (spec §2.5); a value given with ``--set`` wins."""

    batch_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    aper_recipe: Literal["revisitingcil", "pilot"] = "revisitingcil"
    """Whose configs give the defaults: the authors' RevisitingCIL (IN21k backbone) or PILOT's (which ran the
    IN1k-fine-tuned backbone: pass --backbone vit_base_patch16_224.augreg_in21k_ft_in1k with it)."""
    recipe_family: str = "cifar100"
    """Benchmark family whose recipe applies (set by the family defaults)."""
    batch_branches: bool = True
    """Compute f_pre and f_ad in one pass over [x; x] (spec §2.8, same outputs); false: two passes."""

    def __post_init__(self) -> None:
        recipes = RECIPES.get(self.aper_recipe, RECIPES["revisitingcil"])
        values, source = recipes.get(self.recipe_family, recipes["cifar100"])
        for key, value in values.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.defaults_source = self.defaults_source or source


@register_method("aper")
class APER(FirstTaskAdapterLearner):
    """First-task adapter tuning, then a cosine prototype classifier over [pretrained ; adapted] features."""

    config_class = AperConfig
    default_cfgs = {**{family: {"recipe_family": family} for family in FAMILIES},
                    "digits": {"recipe_family": "digits", "bottleneck": 8}}
    default_backbones = {family: IN21K for family in FAMILIES}

    def __init__(self, backbone, hparams: AperConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.classifier = CosinePrototypeClassifier(2 * self.backbone.num_features)
        self.to(self.device)

    def keep_first_head(self, head: CosineLinear) -> None:
        """The training head is discarded: the merged classifier is built from prototypes, with σ = 1."""

    def merged_features(self, images: torch.Tensor) -> torch.Tensor:
        """φ(x) = [f_pre(x) ; f_ad(x)]: adapters off, then on (raw CLS-after-LN features)."""
        if self.hparams.batch_branches:
            with use_adapter_chunks(self.adapters, [None, ADAPTER_SET]):
                pretrained, adapted = self.backbone(torch.cat([images, images])).chunk(2)
        else:
            with use_adapter_set(self.adapters, None):
                pretrained = self.backbone(images)
            adapted = self.adapted_features(images)
        return torch.cat([pretrained, adapted], dim=1)

    def absorb_task(self, task: Task) -> None:
        """Append the new classes' prototypes: mean φ over their training images (test transform)."""
        self.classifier.add(prototype_pass(self.merged_features, task.train_eval_loader, task.classes,
                                           self.device))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.frozen("merged", 1, images, self.merged_features))  # adapters frozen after task 1

    def restore_structure(self, task_sizes: list[int]) -> None:
        super().restore_structure(task_sizes)
        self.classifier.prototypes = self.classifier.prototypes.new_zeros(sum(task_sizes),
                                                                         2 * self.backbone.num_features)

    def parameter_report(self) -> ParameterReport:
        adapters, head = self.trained_counts()
        return ParameterReport(
            backbone=self.backbone_parameters, trainable_task=adapters, head=head,
            trainable_total=adapters + head, stored=adapters + self.classifier.prototypes.numel(),
            notes="everything is trained in the first task (adapter set + its cosine head, dim*n_0+1, discarded "
                  "after it); later tasks train nothing; stored = adapters + merged prototypes (2*dim per class)")
