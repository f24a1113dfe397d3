"""SimpleCIL (Zhou et al., IJCV 2024): frozen backbone, class-mean prototypes, cosine classifier.

Nothing is trained. After each task the prototype of every new class is the mean raw feature (CLS after the
final LayerNorm) of its training images under the test transform; prediction is the cosine to every prototype
(sigma = 1), argmax over all seen classes. Deterministic, so its curves check the data pipeline end to end
(``data_protocol.md`` §10). Spec: ``prompt_baselines.md`` §4.

Defaults: SimpleCIL reads no hyper-parameter from any config; its one number, the batch size of the prototype
and test loaders, is hard-coded 128 in PILOT ``models/simplecil.py`` line 16 (and RevisitingCIL's, line 16), the
same on every benchmark, CUB-200, ObjectNet, OmniBenchmark and DomainNet included (RevisitingCIL ships
``exps/simplecil/{cub_10_10,objectnet_10_10,omni_30_30}_vit-b_simplecil.json``, whose keys SimpleCIL does not
read). The backbone is PILOT's IN1k-fine-tuned ViT-B/16 on every real benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size
from benchmark.models.classifiers import CosinePrototypeClassifier, prototype_pass
from benchmark.registry import register_method


@dataclass
class SimpleCILConfig(MethodConfig):
    """SimpleCIL has no hyper-parameters besides the prototype/test batch size (hard-coded 128 upstream)."""

    batch_size: int = 128


@register_method("simplecil")
class SimpleCIL(Method):
    """Frozen ViT + cosine classifier over class-mean prototypes (the deterministic reference baseline)."""

    config_class = SimpleCILConfig
    default_cfgs = {"default": {"batch_size": 128, "defaults_source": "PILOT models/simplecil.py line 16 (batch 128 "
                                                                      "hard-coded; no config key is read)"}}
    default_backbones = {family: "vit_base_patch16_224.augreg_in21k_ft_in1k"
                         for family in ("cifar100", "imr", "ima", "vtab", "cub", "objnet", "omni", "domainnet")}

    def __init__(self, backbone, hparams, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.freeze_backbone()
        self.classifier = CosinePrototypeClassifier(self.backbone.num_features)
        self.to(self.device)

    def train_task(self, task: Task) -> None:
        """Append the prototypes of the task's classes (no training)."""
        self.backbone.eval()
        prototypes = prototype_pass(self.backbone, task.train_eval_loader, task.classes, self.device)
        self.classifier.add(prototypes)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.frozen("embedding", 0, images, self.backbone))

    def restore_structure(self, task_sizes: list[int]) -> None:
        self.classifier.prototypes = self.classifier.prototypes.new_zeros(sum(task_sizes),
                                                                         self.backbone.num_features)

    def parameter_report(self) -> ParameterReport:
        return ParameterReport(backbone=backbone_size(self.backbone), trainable_task=0, head=0,
                               trainable_total=0, stored=self.classifier.prototypes.numel(),
                               notes="nothing trained; stored = class prototypes")
