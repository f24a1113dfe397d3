"""Raw image splits (in-memory arrays or files on disk) and the torch dataset that serves them with labels."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from benchmark.errors import DataError


class ImageSource(ABC):
    """One split of a dataset: ``targets`` (raw labels, int64) and the image at each position."""

    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    @abstractmethod
    def load(self, index: int) -> Image.Image:
        """The RGB PIL image at ``index``."""


class ArrayImages(ImageSource):
    """Images held in memory as an N x H x W x 3 uint8 array (CIFAR-100, digits)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int]) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected an N x H x W x 3 uint8 array, got {images.shape} {images.dtype}")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} targets")

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class FileImages(ImageSource):
    """Image files on disk, opened with PIL and converted to RGB when loaded."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int]) -> None:
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.targets) != len(self.paths):
            raise ValueError(f"{len(self.paths)} files but {len(self.targets)} targets")

    def load(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot read image {path}: {error}") from None


class LabelledImages(Dataset):
    """``(transform(image), label)`` for the positions ``indices`` of a source, ``label = labels[position]``.

    ``labels`` holds one label per source position (the stream's new labels); without a transform the
    image is returned as a PIL image (Avalanche applies its transform groups on top).
    """

    def __init__(self, source: ImageSource, labels: np.ndarray, indices: np.ndarray | None = None,
                 transform: Callable | None = None) -> None:
        self.source = source
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        position = int(self.indices[item])
        image = self.source.load(position)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[position])


@dataclass
class RawData:
    """A loaded and validated dataset: both splits with raw labels, the class names (index = raw label),
    file checksums (name -> status record) where the format has known ones, non-fatal warnings, and the
    fingerprint of a declared dataset (SHA-256 of its declaration file and file list)."""

    train: ImageSource
    test: ImageSource
    class_names: list[str]
    checksums: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fingerprint: str | None = None


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
