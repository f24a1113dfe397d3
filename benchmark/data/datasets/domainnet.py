"""DomainNet (cleaned release, 345 classes in six domains) as a class-incremental dataset: every domain's images
of a class are pooled into that class.

Layout: ``<root>/domainnet/<domain>/<class>/<file>.jpg`` (the per-domain zips, extracted) and the release's split
lists ``<domain>_train.txt`` / ``<domain>_test.txt`` beside them, one ``<domain>/<class>/<file> <label>`` per
line. Train (test) = the lines of the six train (test) lists, domains in the order of :data:`DOMAINS`, lines in
file order; raw label = the list's label (0..344), class name = the ``<class>`` folder of its paths.

InfLoRA's DomainNet split (``dataloaders/splits/domainnet_{train,test}.yaml`` in liangyanshuo/InfLoRA) is not
reachable here (the files are absent from the stored repository), so the split is the release's own lists: a
documented choice. Other lists in the same format replace them: put ``<domain>_train.txt`` / ``<domain>_test.txt``
in a folder and set ``CLBENCH_DOMAINNET_LISTS`` to it; the MD5 of every list read is recorded in the stream.

Transforms: InfLoRA's ``iDomainNet`` (``utils/data.py``): train RandomResizedCrop(224) (torchvision's default
scale) -> flip, test Resize(256) -> CenterCrop(224) (bilinear), ToTensor; its Normalize(0, 1) is the identity.
Reference counts (cleaned release: 409,832 train / 176,743 test) are from the release's list files as other
projects report them, not checked here, hence unconfirmed. Class order: seed permutation (the same rule as
ImageNet-R); InfLoRA's own config keeps the identity order (``shuffle: false``).
"""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.data.datasets.images import FileImages, RawData, md5_of
from benchmark.data.datasets.spec import DatasetSpec, ReferenceCounts, preview_names
from benchmark.data.transforms import TransformPair, pilot_transforms
from benchmark.registry import register_dataset

FOLDER = "domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
SPLITS = ("train", "test")
NUM_CLASSES = 345
LISTS_ENV = "CLBENCH_DOMAINNET_LISTS"


def lists_folder(root: Path) -> Path:
    """Where the split lists are read: ``$CLBENCH_DOMAINNET_LISTS`` when set, else ``<root>/domainnet``."""
    return Path(os.environ.get(LISTS_ENV) or Path(root) / FOLDER)


def list_name(domain: str, split: str) -> str:
    """``clipart_train.txt``."""
    return f"{domain}_{split}.txt"


def read_list(path: Path) -> list[tuple[str, int]]:
    """``(relative path, label)`` per non-empty line; a malformed line is a ``ValueError`` naming it."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit() or len(Path(fields[0]).parts) < 3:
                raise ValueError(f"{path}:{number}: expected '<domain>/<class>/<file> <label>', got {line.strip()!r}")
            entries.append((fields[0], int(fields[1])))
    return entries


def load_domainnet(spec: DatasetSpec, root: Path) -> RawData:
    """Both splits pooled over the six domains; class names from the paths, checked against the labels."""
    base, lists = Path(root) / FOLDER, lists_folder(root)
    missing = [str(lists / list_name(domain, split)) for domain in DOMAINS for split in SPLITS
               if not (lists / list_name(domain, split)).is_file()]
    missing += [str(base / domain) for domain in DOMAINS if not (base / domain).is_dir()]
    if missing:
        raise spec.data_error(root, f"not found under {root} (missing {preview_names(missing, 4)})")
    names: dict[int, str] = {}
    sources, checksums = {}, {}
    for split in SPLITS:
        paths, labels = [], []
        for domain in DOMAINS:
            path = lists / list_name(domain, split)
            try:
                entries = read_list(path)
            except (ValueError, UnicodeDecodeError) as error:
                raise spec.data_error(root, str(error)) from None
            for relative, label in entries:
                class_name = Path(relative).parts[1]
                if names.setdefault(label, class_name) != class_name:
                    raise spec.data_error(root, f"{path}: label {label} is class '{names[label]}' elsewhere but "
                                                f"'{class_name}' in {relative}")
                paths.append(str(base / relative))
                labels.append(label)
            checksums[path.name] = {"md5": md5_of(path), "expected": None, "ok": None, "folder": str(lists)}
        sources[split] = FileImages(paths, labels)
    if sorted(names) != list(range(len(names))):
        raise spec.data_error(root, f"the lists' labels are not 0..{len(names) - 1} without gaps")
    return RawData(train=sources["train"], test=sources["test"], class_names=[names[i] for i in range(len(names))],
                   checksums=checksums)


def domainnet_transforms(profile: str, image_size: int, normalize: str) -> TransformPair:
    """InfLoRA's DomainNet transforms (module docstring) for every profile, recorded as ``domainnet``; the steps
    are those of the CODA-P profile with the resize-and-crop test pipeline."""
    pair = pilot_transforms("coda", image_size, normalize, coda_test="resize_crop")
    return TransformPair(pair.train, pair.test, "domainnet")


DOMAINNET = register_dataset("domainnet")(DatasetSpec(
    name="domainnet", title="DomainNet", num_classes=NUM_CLASSES, shuffle=True, loader=load_domainnet,
    transforms=domainnet_transforms, named_tasks=(5, 15),
    reference_counts=ReferenceCounts(409_832, 176_743, False, False), folder=FOLDER,
    expected_tree="<root>/domainnet/<domain>/<class>/*.jpg for the six domains (" + ", ".join(DOMAINS)
                  + ") and the lists <root>/domainnet/<domain>_train.txt and <domain>_test.txt",
    download=("Download the six domain zips and their train/test lists (cleaned release) from the DomainNet page "
              "http://ai.bu.edu/M3SDA/ into one folder, then: bench data prepare --dataset domainnet --from FOLDER. "
              "InfLoRA's own split files are not reachable here; the release's lists are used instead"),
    note=("train/test split: the release's <domain>_train.txt / <domain>_test.txt lists (InfLoRA's own split "
          f"files are not reachable here); other lists: set {LISTS_ENV} to their folder"),
))
