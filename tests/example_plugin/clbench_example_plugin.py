"""An example plugin, as a plugin author would ship it in their own package: one method registered through the
``clbench.methods`` entry point, plus two deliberately broken variants that the conformance kit must catch.

``NearestMeanCIL`` is a nearest-class-mean learner on the frozen backbone with Euclidean distances (a different
classifier from SimpleCIL's cosine prototypes), built only from the public interface.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmark.method import Method, MethodConfig, ParameterReport, Task, backbone_size
from benchmark.registry import register_method


@dataclass
class NearestMeanConfig(MethodConfig):
    """Hyper-parameters of the example (frozen backbone, nothing trained)."""

    temperature: float = 1.0
    """Logits are -squared distance / temperature."""


class ClassMeans(nn.Module):
    """One mean feature per seen class. A child module: ``Method.load_state_dict`` rebuilds the structure (through
    ``restore_structure``) before children load their tensors, so per-task tensors live in children."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(0, dim))

    def resize(self, num_classes: int) -> None:
        """Zeros for ``num_classes`` classes (the shape after learning them)."""
        self.means = torch.zeros(num_classes, self.means.shape[1], device=self.means.device)


@register_method("example_nearest_mean")
class NearestMeanCIL(Method):
    """Nearest class mean in the frozen backbone's feature space (negative squared Euclidean distance)."""

    config_class = NearestMeanConfig
    default_cfgs = {"default": {"batch_size": 16}}

    def __init__(self, backbone, hparams: NearestMeanConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.freeze_backbone()
        self.class_means = ClassMeans(self.backbone.num_features)
        self.to(self.device)

    @torch.inference_mode()
    def train_task(self, task: Task) -> None:
        """Class means of the task's training images (test transform)."""
        self.backbone.eval()
        sums = torch.zeros(task.num_classes, self.backbone.num_features, device=self.device)
        counts = torch.zeros(task.num_classes, device=self.device)
        for images, labels in task.train_eval_loader:
            local = labels.to(self.device) - task.known_classes
            sums.index_add_(0, local, self.backbone(images.to(self.device)))
            counts += torch.bincount(local, minlength=task.num_classes)
        self.class_means.means = torch.cat([self.class_means.means, sums / counts[:, None]])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """-||f(x) - mean_c||² / temperature over the seen classes."""
        return -torch.cdist(self.backbone(images), self.class_means.means).square() / self.hparams.temperature

    def restore_structure(self, task_sizes: list[int]) -> None:
        self.class_means.resize(sum(task_sizes))

    def parameter_report(self) -> ParameterReport:
        return ParameterReport(backbone=backbone_size(self.backbone), trainable_task=0, head=0, trainable_total=0,
                               stored=self.class_means.means.numel(), notes="nothing trained; stored = one mean per class")


class AllClassesCIL(NearestMeanCIL):
    """Broken: scores every class of the stream, seen or not."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        seen = super().predict(images)
        unseen = torch.zeros(len(images), self.num_classes - seen.shape[1], device=seen.device)
        return torch.cat([seen, unseen], dim=1)


class GlobalRandomCIL(NearestMeanCIL):
    """Broken: draws a random projection from the global RNG at construction."""

    def __init__(self, backbone, hparams: NearestMeanConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.register_buffer("projection", torch.randn(self.backbone.num_features, self.backbone.num_features))



class UncheckedTemperatureCIL(NearestMeanCIL):
    """Broken: its config's validate does not call its parent's (a batch size of 0 gets through)."""

    @dataclass
    class Config(NearestMeanConfig):
        def validate(self) -> None:
            pass

    config_class = Config
