"""Shared fixtures: tiny ViTs and small synthetic class-incremental tasks (no files, no downloads)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmark.models.backbones import tiny_vit
from benchmark.testing.data import make_tasks, synthetic_images  # noqa: F401  (shared with the kit)

warnings.filterwarnings("ignore", message=r".*no QP solver.*")


def make_tiny_vit(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random-init tiny ViT (32 px, patch 4, embed 64, depth 4 unless overridden), in eval mode."""
    torch.manual_seed(seed)
    return tiny_vit(**kwargs).eval()


@torch.inference_mode()
def accuracy(method, datasets: list[TensorDataset], batch_size: int = 32) -> float:
    """Top-1 % of ``method.predict`` over the concatenation of ``datasets``."""
    correct = total = 0
    for dataset in datasets:
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            predictions = method.predict(images.to(method.device)).argmax(1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
    return 100.0 * correct / max(total, 1)


@pytest.fixture
def tiny_vit_model():
    """A fresh random tiny ViT."""
    return make_tiny_vit()
