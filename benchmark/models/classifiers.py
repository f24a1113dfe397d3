"""Classifiers shared by methods: cosine linear heads, cosine prototype classifiers, the prototype pass."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


class CosineLinear(nn.Module):
    """logits_c = sigma * cos(f, w_c); weights U(+-1/sqrt(in_features)), sigma a learnable scalar at 1.

    (PILOT's ``CosineLinear`` / CL-LoRA's ``CosineLinearFeature`` training head.)
    """

    def __init__(self, in_features: int, out_features: int, learn_sigma: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter((torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound)
        self.sigma = nn.Parameter(torch.ones(1)) if learn_sigma else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))
        return logits if self.sigma is None else self.sigma * logits


class CosinePrototypeClassifier(nn.Module):
    """Scores = cos(f, p_c) over stored class prototypes (sigma = 1, nothing trained). Grows per task.

    The prototype buffer is resized when a state dict of another size is loaded, so a fresh classifier
    can be restored without knowing the class count in advance.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(0, feature_dim))

    @property
    def num_classes(self) -> int:
        """Number of stored prototypes."""
        return self.prototypes.shape[0]

    def add(self, prototypes: torch.Tensor) -> None:
        """Append prototypes (rows) for new classes."""
        self.prototypes = torch.cat([self.prototypes, prototypes.to(self.prototypes)], dim=0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "prototypes"
        if key in state_dict:
            self.prototypes = torch.zeros_like(state_dict[key], device=self.prototypes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@torch.inference_mode()
def extract_features(feature_fn: FeatureFn, loader: Iterable, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every batch of ``loader`` (no gradient), concatenated, on ``device``.

    The features are float32 whatever the autocast precision of the pass (means and statistics need it).
    """
    features, labels = [], []
    for images, targets in loader:
        features.append(feature_fn(images.to(device, non_blocking=True)).float())
        labels.append(targets.to(device))
    return torch.cat(features), torch.cat(labels)


def class_means(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Mean feature of each class in ``classes`` (rows in that order), vectorised over samples and classes.

    Sums in float32 (or the features' wider dtype), outside autocast.
    """
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    class_ids = torch.as_tensor(classes, device=labels.device, dtype=torch.long)
    size = max(int(class_ids.max().item()), int(labels.max().item()) if labels.numel() else 0) + 1
    position = torch.full((size,), -1, dtype=torch.long, device=labels.device)
    position[class_ids] = torch.arange(len(classes), device=labels.device)
    rows = position[labels]
    keep = rows >= 0
    sums = features.new_zeros(len(classes), features.shape[1]).index_add_(0, rows[keep], features[keep])
    counts = torch.bincount(rows[keep], minlength=len(classes)).clamp_min(1).to(features.dtype)
    return sums / counts.unsqueeze(1)


def prototype_pass(feature_fn: FeatureFn, loader: Iterable, classes: list[int], device: torch.device
                   ) -> torch.Tensor:
    """Class prototypes: the mean raw feature of each class's images (PILOT's ``replace_fc`` pass)."""
    features, labels = extract_features(feature_fn, loader, device)
    return class_means(features, labels, classes)
