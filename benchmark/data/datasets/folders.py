"""ImageNet-R, ImageNet-A, VTAB, CUB-200, ObjectNet and OmniBenchmark: the APER releases, pre-split ``train/`` and
``test/`` class-folder trees read with torchvision ``ImageFolder`` semantics (re-implemented here so that every
problem is one clear error).

CUB-200, ObjectNet and OmniBenchmark follow LAMDA-PILOT's ``utils/data.py`` (``CUB``, ``objectnet``,
``omnibenchmark``): ImageFolder trees ``./data/cub``, ``./data/objectnet``, ``./data/omnibenchmark``, PILOT's
``build_transform`` (our ``default`` profile, no CODA-P variant) and the class order of ``data_manager.py``
(seed permutation when ``shuffle``, as for ImageNet-R/A). Their reference counts are the APER paper's dataset
table (Zhou et al., "Revisiting class-incremental learning with pre-trained models", IJCV 2024), not checked
against the files here, hence unconfirmed (a mismatch is a warning).

Raw label = position of the folder name in the string-sorted list (never numeric: "10" < "9"); within a
class, sub-folders are walked and files taken in sorted order; only image extensions count (any case).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from benchmark.data.datasets.images import FileImages, RawData
from benchmark.data.datasets.spec import DatasetSpec, ReferenceCounts, preview_names
from benchmark.data.transforms import pilot_transforms
from benchmark.registry import register_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")


def class_folders(directory: Path) -> list[str]:
    """Names of the sub-folders of ``directory``, string-sorted (ImageFolder's ``find_classes``)."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


def image_files(class_dir: Path) -> list[str]:
    """Image files under ``class_dir``, sub-folders walked in sorted order, names sorted within each."""
    return [os.path.join(folder, name)
            for folder, _, names in sorted(os.walk(class_dir, followlinks=True))
            for name in sorted(names) if name.lower().endswith(IMAGE_EXTENSIONS)]


def load_image_folders(spec: DatasetSpec, root: Path) -> RawData:
    """Scan ``<root>/<spec.folder>/{train,test}/<class>/``; validate class names and non-empty folders."""
    base = root / spec.folder
    return read_split_trees(spec, root, {split: base / split for split in SPLITS})


def read_split_trees(spec: DatasetSpec, root: Path | None, trees: dict[str, Path]) -> RawData:
    """Read the ``train`` and ``test`` class-folder trees of ``trees``: the same class folders in both, the
    spec's class count, no empty class folder (raw label = position in the sorted folder names)."""
    missing = [str(tree) for tree in trees.values() if not tree.is_dir()]
    if missing:
        raise spec.data_error(root, f"not found under {root} (missing {', '.join(missing)})")
    classes = {split: class_folders(tree) for split, tree in trees.items()}
    only_train = sorted(set(classes["train"]) - set(classes["test"]))
    only_test = sorted(set(classes["test"]) - set(classes["train"]))
    if only_train or only_test:
        problems = [f"only in {split}/: {preview_names(names)}"
                    for split, names in (("train", only_train), ("test", only_test)) if names]
        raise spec.data_error(root, f"train/ and test/ class folders differ ({'; '.join(problems)})")
    names = classes["train"]
    if len(names) != spec.num_classes:
        train, test = trees["train"], trees["test"]
        raise spec.data_error(root, f"{train.parent} has {len(names)} class folders in {train.name}/ and "
                                    f"{test.name}/, expected {spec.num_classes}")
    sources = {}
    for split, tree in trees.items():
        files = [image_files(tree / name) for name in names]
        empty = [f"{split}/{name}" for name, found in zip(names, files) if not found]
        if empty:
            raise spec.data_error(root, f"class folder(s) without images: {preview_names(empty)}")
        sources[split] = FileImages([path for found in files for path in found],
                                    [label for label, found in enumerate(files) for _ in found])
    return RawData(train=sources["train"], test=sources["test"], class_names=names)


def _aper_download(archive: str, md5: str | None, drive_id: str | None, extra: str = "") -> str:
    checksum = f" (MD5 {md5})" if md5 else ""
    drive = f"Google Drive https://drive.google.com/file/d/{drive_id}/view, or OneDrive" if drive_id else "OneDrive"
    return (f"Download the APER release {archive}{checksum} linked from the LAMDA-PILOT and RevisitingCIL "
            f"READMEs ({drive}) and unpack it in the data root{extra}.")


_FOLDER_SPEC = dict(loader=load_image_folders, shuffle=True, num_classes=200)

IMAGENET_R = register_dataset("imr")(DatasetSpec(
    name="imr", title="ImageNet-R", **_FOLDER_SPEC, transforms=partial(pilot_transforms, coda_test="resize_crop"),
    named_tasks=(10, 20, 40), reference_counts=ReferenceCounts(24_000, 6_000, False, True), folder="imagenet-r",
    expected_tree="<root>/imagenet-r/train/<wnid>/*.jpg and <root>/imagenet-r/test/<wnid>/*.jpg "
                  "(200 class folders each)",
    download=_aper_download("imagenet-r.zip", "730aa3fb9c7d2ec0b6381c6b23040681",
                            "1SG4TbiL8_DooekztyCVK8mPmfhMo8fkR",
                            " (not the raw imagenet-r.tar, which has no train/test split)"),
))

IMAGENET_A = register_dataset("ima")(DatasetSpec(
    name="ima", title="ImageNet-A", **_FOLDER_SPEC, transforms=pilot_transforms,
    named_tasks=(10, 20), reference_counts=ReferenceCounts(5_981, 1_519, False, True), folder="imagenet-a",
    expected_tree="<root>/imagenet-a/train/<wnid>/* and <root>/imagenet-a/test/<wnid>/* (200 class folders each)",
    download=_aper_download("ina.zip", "7f4aaf0b1532b7a0bd670822c152d3c5", "19l52ua_vvTtttgVRziCZJjal0TPE9f2p",
                            " so that the tree reads as shown"),
))

VTAB = register_dataset("vtab")(DatasetSpec(
    name="vtab", title="VTAB", num_classes=50, shuffle=False, loader=load_image_folders,
    transforms=pilot_transforms, named_tasks=(5, 10),
    reference_counts=ReferenceCounts(1_796, 8_619, False, True), folder="vtab",
    expected_tree="<root>/vtab/train/<class>/* and <root>/vtab/test/<class>/* (50 class folders each)",
    download=_aper_download("vtab.zip", "a9c37bde6105a2516c900b0c33a437c1", "1xUiwlnx4k0oDhYi26KL5KwrCAya-mvJ_",
                            " (PILOT's layout nests it as vtab-cil/vtab/: move the inner vtab/ up)"),
))

CUB = register_dataset("cub")(DatasetSpec(
    name="cub", title="CUB-200", **_FOLDER_SPEC, transforms=pilot_transforms, named_tasks=(10, 20),
    reference_counts=ReferenceCounts(9_430, 2_358, False, False), folder="cub",
    expected_tree="<root>/cub/train/<class>/*.jpg and <root>/cub/test/<class>/*.jpg (200 class folders each)",
    download=_aper_download("cub.zip", None, "1XbUpnWpJPnItt5zQ6sHJnsjPncnNLvWb")
    + " Or build the official CUB-200-2011 split (5,994 train / 5,794 test images, not APER's) from "
      "CUB_200_2011.tgz (https://data.caltech.edu/records/65de6-vp158, MD5 97eceeb196236b17998738112f37df78): "
      "bench data prepare --dataset cub --from CUB_200_2011.tgz",
))

OBJECTNET = register_dataset("objnet")(DatasetSpec(
    name="objnet", title="ObjectNet", **_FOLDER_SPEC, transforms=pilot_transforms, named_tasks=(10, 20),
    reference_counts=ReferenceCounts(26_509, 6_628, False, False), folder="objectnet",
    expected_tree="<root>/objectnet/train/<class>/* and <root>/objectnet/test/<class>/* (200 class folders each)",
    download=_aper_download("objectnet.zip", None, None, " (its README also links a file list, for when the "
                            "archive is too large)"),
))

OMNIBENCHMARK = register_dataset("omni")(DatasetSpec(
    name="omni", title="OmniBenchmark", loader=load_image_folders, shuffle=True, num_classes=300,
    transforms=pilot_transforms, named_tasks=(10, 20),
    reference_counts=ReferenceCounts(89_668, 5_983, False, False), folder="omnibenchmark",
    expected_tree="<root>/omnibenchmark/train/<class>/* and <root>/omnibenchmark/test/<class>/* "
                  "(300 class folders each)",
    download=_aper_download("omnibenchmark.zip", None, "1AbCP3zBMtv_TDXJypOCnOgX8hJmvJm3u"),
))
