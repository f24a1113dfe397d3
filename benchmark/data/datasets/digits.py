"""The built-in offline dataset ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values
0-16, bright strokes on a dark background), upsampled bilinearly to 32 px RGB.

Split (fixed, deterministic, stratified): within each class, the first 80 % of its images in dataset order
(``count * 4 // 5``) are train, the rest test: 1,433 train and 364 test images. Class order: identity.
Transforms: :func:`benchmark.data.transforms.digits_transforms`. No data root and no download are needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.data.datasets.images import ArrayImages, RawData
from benchmark.data.datasets.spec import DatasetSpec, ReferenceCounts
from benchmark.data.transforms import digits_transforms
from benchmark.registry import register_dataset

IMAGE_SIZE = 32
TRAIN_FRACTION = (4, 5)


def upsample_digits(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """N x 8 x 8 values in [0, 16] -> N x size x size x 3 uint8 (bilinear, grey replicated to RGB)."""
    import torch
    import torch.nn.functional as F

    grey = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    pixels = (grey.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return np.repeat(pixels[..., None], 3, axis=-1)


def stratified_train_mask(targets: np.ndarray) -> np.ndarray:
    """True for the first ``count * 4 // 5`` images of each class in dataset order."""
    order = np.argsort(targets, kind="stable")
    counts = np.bincount(targets)
    rank = np.empty_like(targets)
    rank[order] = np.arange(len(targets)) - np.repeat(np.cumsum(counts) - counts, counts)
    numerator, denominator = TRAIN_FRACTION
    return rank < (counts * numerator // denominator)[targets]


def load_digits_data(spec: DatasetSpec, root: Path | None) -> RawData:
    """Both splits of the upsampled digits (the data root is not used)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = upsample_digits(bunch.images)
    targets = np.asarray(bunch.target, dtype=np.int64)
    train = stratified_train_mask(targets)
    return RawData(train=ArrayImages(images[train], targets[train]),
                   test=ArrayImages(images[~train], targets[~train]),
                   class_names=[str(digit) for digit in range(10)])


DIGITS = register_dataset("digits")(DatasetSpec(
    name="digits", title="digits (scikit-learn 8x8, upsampled to 32 px)", num_classes=10, shuffle=False,
    loader=load_digits_data, transforms=digits_transforms, named_tasks=(5,),
    reference_counts=ReferenceCounts(1_433, 364, True, True), needs_data_root=False,
))
