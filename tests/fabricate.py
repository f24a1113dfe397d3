"""Small fake datasets in the real on-disk layouts, for stream, dataset and CLI tests (fast: tiny images).

- :func:`write_cifar100`: torchvision's ``cifar-100-python/{train,test,meta}`` pickles (MD5s differ from the
  real files, so loading them records MD5 warnings);
- :func:`write_image_folders`: an APER-style ``<root>/<folder>/{train,test}/<class>/<file>`` tree;
- :func:`write_dataset`: any of them by harness dataset name (``cifar100``, ``imr``, ``ima``, ``vtab``, ``cub``,
  ``objnet``, ``omni``, ``domainnet``);
- :func:`write_domainnet`: the DomainNet release's ``<domain>/<class>/<file>`` folders and split lists;
- :func:`write_domainnet_release` / :func:`write_cub_release`: the downloads ``bench data prepare`` reads (the six
  domain zips plus lists; ``CUB_200_2011.tgz`` or its extracted folder).
"""
from __future__ import annotations

import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

FOLDERS = {"imr": ("imagenet-r", 200), "ima": ("imagenet-a", 200), "vtab": ("vtab", 50), "cub": ("cub", 200),
           "objnet": ("objectnet", 200), "omni": ("omnibenchmark", 300)}
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


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


def cub_names(count: int = 200) -> list[str]:
    """CUB-style class folders ``001.bird_000`` ... (already in sorted order, as in the release)."""
    return [f"{index + 1:03d}.bird_{index:03d}" for index in range(count)]


def write_dataset(root: Path, dataset: str, train_per_class: int = 1, test_per_class: int = 1) -> Path:
    """A fake tree for a harness dataset name: ``cifar100``, ``domainnet`` (:func:`write_domainnet`), ``imr``,
    ``ima``, ``objnet``, ``omni`` (wnid folders), ``cub`` (``001.bird_000`` folders) or ``vtab`` (numeric folder
    names "0".."49", which sort as strings)."""
    if dataset == "cifar100":
        return write_cifar100(root, train_per_class, test_per_class)
    if dataset == "domainnet":
        return write_domainnet(root)
    folder, count = FOLDERS[dataset]
    names = ([str(index) for index in range(count)] if dataset == "vtab" else
             cub_names(count) if dataset == "cub" else wnid_names(count))
    return write_image_folders(root, folder, names, train_per_class, test_per_class)


def domainnet_class(label: int) -> str:
    """The fabricated DomainNet class name of ``label`` (names sort in label order, as in the release)."""
    return f"c{label:03d}_thing"


def write_domainnet(root: Path, num_classes: int = 345, folder: str = "domainnet") -> Path:
    """``<root>/<folder>/<domain>/<class>/<file>.jpg`` and ``<domain>_{train,test}.txt`` lists in the release's
    format. Class c has train images in domains c % 6 and (c + 1) % 6 and one test image in domain c % 6, so
    pooling over domains gives 2 train and 1 test image per class."""
    base = Path(root) / folder
    lines = {(domain, split): [] for domain in DOMAINS for split in ("train", "test")}
    for label in range(num_classes):
        name = domainnet_class(label)
        placed = [(DOMAINS[label % 6], "train"), (DOMAINS[(label + 1) % 6], "train"), (DOMAINS[label % 6], "test")]
        for index, (domain, split) in enumerate(placed):
            relative = f"{domain}/{name}/{domain}_{label:03d}_{index:06d}.jpg"
            (base / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), ((label * 37) % 256, index * 80, 128)).save(base / relative)
            lines[(domain, split)].append(f"{relative} {label}")
    for (domain, split), entries in lines.items():
        (base / f"{domain}_{split}.txt").write_text("".join(f"{line}\n" for line in entries))
    return Path(root)


def write_domainnet_release(folder: Path, num_classes: int = 345) -> Path:
    """The DomainNet downloads in ``folder``: ``<domain>.zip`` (members ``<domain>/<class>/<file>``) and the
    lists, as the release ships them."""
    folder = Path(folder)
    staging = folder / "_unzipped"
    write_domainnet(staging, num_classes, folder="")
    for domain in DOMAINS:
        with zipfile.ZipFile(folder / f"{domain}.zip", "w") as archive:
            for path in sorted((staging / domain).rglob("*.jpg")):
                archive.write(path, path.relative_to(staging).as_posix())
        for split in ("train", "test"):
            shutil.move(staging / f"{domain}_{split}.txt", folder / f"{domain}_{split}.txt")
    shutil.rmtree(staging)
    return folder


def write_cub_release(folder: Path, archive: bool = True, train_per_class: int = 2, test_per_class: int = 1,
                      num_classes: int = 200) -> Path:
    """CUB-200-2011 as released: ``CUB_200_2011/{images.txt, train_test_split.txt, classes.txt,
    image_class_labels.txt, images/<class>/<file>.jpg}``; image ids run class by class, each class's first
    ``train_per_class`` images flagged 1 (train). Returns ``CUB_200_2011.tgz`` or the extracted folder."""
    base = Path(folder) / "CUB_200_2011"
    images, split, labels = [], [], []
    for label, name in enumerate(cub_names(num_classes)):
        (base / "images" / name).mkdir(parents=True, exist_ok=True)
        for index in range(train_per_class + test_per_class):
            image_id = len(images) + 1
            relative = f"{name}/{name.split('.')[1]}_{image_id:04d}.jpg"
            Image.new("RGB", (4, 4), ((label * 37) % 256, index * 60, 200)).save(base / "images" / relative)
            images.append(f"{image_id} {relative}")
            split.append(f"{image_id} {int(index < train_per_class)}")
            labels.append(f"{image_id} {label + 1}")
    for name, lines in (("images.txt", images), ("train_test_split.txt", split), ("image_class_labels.txt", labels),
                        ("classes.txt", [f"{i + 1} {n}" for i, n in enumerate(cub_names(num_classes))])):
        (base / name).write_text("".join(f"{line}\n" for line in lines))
    if not archive:
        return base
    path = Path(folder) / "CUB_200_2011.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(base, arcname="CUB_200_2011")
    shutil.rmtree(base)
    return path


def corrupt_file(path: Path) -> Path:
    """Overwrite ``path`` with bytes no image decoder accepts."""
    Path(path).write_bytes(b"this is not an image")
    return Path(path)


def write_all_datasets(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """The fake trees of all eight downloadable datasets (CIFAR-100, ImageNet-R, ImageNet-A, VTAB, CUB-200,
    ObjectNet, OmniBenchmark, DomainNet) under ``root``."""
    for dataset in ("cifar100", "imr", "ima", "vtab", "cub", "objnet", "omni", "domainnet"):
        write_dataset(root, dataset, train_per_class=train_per_class, test_per_class=test_per_class)
    return root
