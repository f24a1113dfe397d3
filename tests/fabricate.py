"""Small fake datasets in the real on-disk layouts, for stream, dataset and CLI tests (fast: tiny images).

- :func:`write_cifar100`: torchvision's ``cifar-100-python/{train,test,meta}`` pickles (MD5s differ from the
  real files, so loading them records MD5 warnings);
- :func:`write_image_folders`: an APER-style ``<root>/<folder>/{train,test}/<class>/<file>`` tree;
- :func:`write_dataset`: either of them by harness dataset name (``cifar100``, ``imr``, ``ima``, ``vtab``).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

FOLDERS = {"imr": ("imagenet-r", 200), "ima": ("imagenet-a", 200), "vtab": ("vtab", 50)}


def cifar_pixels(position: int, label: int) -> np.ndarray:
    """The fabricated 32 x 32 x 3 image of a sample: R = position % 256, G = label, B = 255 - label."""
    image = np.empty((32, 32, 3), dtype=np.uint8)
    image[..., 0] = position % 256
    image[..., 1] = label
    image[..., 2] = 255 - label
    return image


def _cifar_split(per_class: int, num_classes: int, seed: int) -> dict:
    # Labels are interleaved in a seeded order, as in the real files (not grouped by class).
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))
    images = np.stack([cifar_pixels(position, int(label)) for position, label in enumerate(labels)])
    data = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # R, G, B planes, row-major
    return {"filenames": [f"fake_{position}.png" for position in range(len(labels))],
            "batch_label": "fabricated", "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
            "data": np.ascontiguousarray(data)}


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, num_classes: int = 100,
                   seed: int = 0) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}``; returns ``root``."""
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    splits = {"train": _cifar_split(train_per_class, num_classes, seed),
              "test": _cifar_split(test_per_class, num_classes, seed + 1),
              "meta": {"fine_label_names": [f"class_{label:03d}" for label in range(num_classes)],
                       "coarse_label_names": [f"super_{label:02d}" for label in range(20)]}}
    for name, content in splits.items():
        with open(base / name, "wb") as handle:
            pickle.dump(content, handle)
    return Path(root)


def wnid_names(count: int) -> list[str]:
    """``count`` distinct ImageNet-like synset ids (``n0xxxxxxx``), not in sorted order."""
    return [f"n{(1_000_003 * (index + 1)) % 99_999_989:08d}" for index in range(count)]


def write_image_folders(root: Path, folder: str, class_names: list[str], train_per_class: int = 1,
                        test_per_class: int = 1, extension: str = ".jpg", size: int = 4) -> Path:
    """Write ``<root>/<folder>/{train,test}/<class>/img_<k><extension>`` (tiny solid-colour images)."""
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(class_names):
            directory = Path(root) / folder / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                colour = ((label * 37) % 256, (index * 91) % 256, 128)
                Image.new("RGB", (size, size), colour).save(directory / f"img_{index}{extension}")
    return Path(root)


def write_dataset(root: Path, dataset: str, train_per_class: int = 1, test_per_class: int = 1) -> Path:
    """A fake tree for a harness dataset name: ``cifar100``, ``imr``, ``ima`` (wnid folders) or ``vtab``
    (numeric folder names "0".."49", which sort as strings)."""
    if dataset == "cifar100":
        return write_cifar100(root, train_per_class, test_per_class)
    folder, count = FOLDERS[dataset]
    names = [str(index) for index in range(count)] if dataset == "vtab" else wnid_names(count)
    return write_image_folders(root, folder, names, train_per_class, test_per_class)


def corrupt_file(path: Path) -> Path:
    """Overwrite ``path`` with bytes no image decoder accepts."""
    Path(path).write_bytes(b"this is not an image")
    return Path(path)


def write_all_datasets(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """The fake trees of all four downloadable datasets (CIFAR-100, ImageNet-R, ImageNet-A, VTAB) under ``root``."""
    for dataset in ("cifar100", "imr", "ima", "vtab"):
        write_dataset(root, dataset, train_per_class=train_per_class, test_per_class=test_per_class)
    return root
