"""CIFAR-100 from torchvision's on-disk python pickles, read directly (torchvision refuses files whose MD5
differs, fabricated test files included); the MD5s are checked separately and a mismatch is only a warning."""
from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np

from benchmark.data.datasets.images import ArrayImages, RawData, md5_of
from benchmark.data.datasets.spec import DatasetSpec, ReferenceCounts
from benchmark.data.transforms import pilot_transforms
from benchmark.registry import register_dataset

FOLDER = "cifar-100-python"
# torchvision 0.29 ``CIFAR100.train_list`` / ``test_list`` / ``meta``.
MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
       "meta": "7973b15100ade9c7d40fb424638fde48"}


def _unpickle(spec: DatasetSpec, root: Path, path: Path, keys: tuple[str, ...]) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            raise ValueError(f"missing {', '.join(keys)}")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as error:
        raise spec.data_error(root, f"{path} is not a CIFAR-100 python pickle ({error})") from None
    return entry


def _split(spec: DatasetSpec, root: Path, path: Path) -> ArrayImages:
    entry = _unpickle(spec, root, path, ("data", "fine_labels"))
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise spec.data_error(root, f"{path}: 'data' has shape {data.shape}, expected N x 3072")
    # Rows are R, G, B planes of 32 x 32 in row-major order; channels go last (torchvision's layout).
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ArrayImages(images, entry["fine_labels"])


def load_cifar100(spec: DatasetSpec, root: Path) -> RawData:
    """Both splits as N x 32 x 32 x 3 uint8 arrays (torchvision's order), fine labels, MD5 status."""
    base = root / FOLDER
    missing = [name for name in MD5 if not (base / name).is_file()]
    if missing:
        paths = ", ".join(str(base / name) for name in missing)
        raise spec.data_error(root, f"not found under {root} (missing {paths})")
    meta = _unpickle(spec, root, base / "meta", ("fine_label_names",))
    raw = RawData(train=_split(spec, root, base / "train"), test=_split(spec, root, base / "test"),
                  class_names=list(meta["fine_label_names"]))
    for name, expected in MD5.items():
        found = md5_of(base / name)
        raw.checksums[name] = {"md5": found, "expected": expected, "ok": found == expected}
        if found != expected:
            raw.warnings.append(f"{base / name}: MD5 {found} differs from torchvision's {expected}")
    return raw


CIFAR100 = register_dataset("cifar100")(DatasetSpec(
    name="cifar100", title="CIFAR-100", num_classes=100, shuffle=True, loader=load_cifar100,
    transforms=partial(pilot_transforms, coda_test="resize"), named_tasks=(10, 20),
    reference_counts=ReferenceCounts(50_000, 10_000, True, True), folder=FOLDER,
    expected_tree="<root>/cifar-100-python/train, test and meta",
    download=("Download torchvision's CIFAR-100 python archive cifar-100-python.tar.gz "
              "(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, MD5 eb9058c3a382ffc7106e4002c42a8d85) "
              "and extract it in the data root."),
))
