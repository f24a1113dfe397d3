"""Datasets declared without code: a ``<name>.clbench.toml`` file in the data root describes class-folder trees.

Format (every path relative to the file's folder, or absolute)::

    name = "flowers"            # letters and digits; benchmarks flowers_t5, flowers_t10, ...
    title = "Oxford flowers"    # optional (default: the name)
    train = "flowers/train"     # train and test class-folder trees (<tree>/<class>/<image>) ...
    test = "flowers/test"
    # images = "flowers/all"    # ... or one tree split per class:
    # test_fraction = 0.2       #     round(fraction * n) test images per class (at least 1, leaving 1 for train)
    # split_seed = 0            #     the split's seed (optional, default 0; independent of the run seed)
    class_order = "shuffle"     # optional: "shuffle" (seed permutation, the default) or "identity"
    transforms = "imagenet"     # "imagenet" (ImageNet-R's) or "cifar" (CIFAR-100's) transforms
    named_tasks = [5, 10]       # optional: the task counts `bench list` names (default: none)

The class count is the number of class folders found when the file is read. The dataset's fingerprint
(SHA-256 of the file's bytes and of the sorted list of its images) is recorded in every run's config. A file
that does not parse or holds a wrong key or value is a :class:`DataError` naming the file and the key.
"""
from __future__ import annotations

import hashlib
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.datasets.folders import class_folders, image_files, read_split_trees
from benchmark.data.datasets.images import FileImages, RawData
from benchmark.data.datasets.spec import DatasetSpec
from benchmark.data.transforms import pilot_transforms
from benchmark.errors import DataError
from benchmark.registry import DATASETS, register_dataset

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SUFFIX = ".clbench.toml"
NAME = re.compile(r"^[A-Za-z0-9]+$")
TRANSFORMS = {"imagenet": partial(pilot_transforms, coda_test="resize_crop"),
              "cifar": partial(pilot_transforms, coda_test="resize")}
CLASS_ORDERS = ("shuffle", "identity")
KEYS = {"name", "title", "train", "test", "images", "test_fraction", "split_seed", "class_order", "transforms",
        "named_tasks"}

_declared: dict[Path, tuple[bytes, DatasetSpec]] = {}


def declaration_files(root: Path) -> list[Path]:
    """The ``*.clbench.toml`` files directly in the data root, sorted."""
    root = Path(root)
    return sorted(root.glob(f"*{SUFFIX}")) if root.is_dir() else []


def declare_datasets(root: Path) -> list[DatasetSpec]:
    """Read every declaration file of the data root and register its dataset (once per unchanged file); a bad
    file, or a name taken by another dataset, is a :class:`DataError`."""
    return [declare(path) for path in declaration_files(root)]


def declare(path: Path) -> DatasetSpec:
    """Register the dataset declared in ``path`` (see the module docstring) and return its spec."""
    path = Path(path).resolve()
    content = path.read_bytes()
    if path in _declared:
        known, spec = _declared[path]
        if known != content:
            raise DataError(f"{path}: changed since it was read in this process; run the command again")
        return spec
    spec = _spec_from(path, content)
    if spec.name in DATASETS:
        raise DataError(f"{path}: dataset name '{spec.name}' is already taken ({DATASETS.origin(spec.name)})")
    register_dataset(spec.name, origin=str(path))(spec)
    _declared[path] = (content, spec)
    return spec


def forget_declared() -> None:
    """Unregister every dataset declared so far in this process (a later read declares them afresh)."""
    for _, spec in _declared.values():
        DATASETS.unregister(spec.name)
    _declared.clear()


def _spec_from(path: Path, content: bytes) -> DatasetSpec:
    try:
        table = tomllib.loads(content.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid TOML ({error})") from None
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(KEYS))}")
    name = _value(path, table, "name", str)
    if not NAME.match(name):
        raise DataError(f"{path}: name '{name}' must be letters and digits only (benchmarks are <name>_t<N>)")
    order = _value(path, table, "class_order", str, "shuffle")
    transforms = _value(path, table, "transforms", str)
    for key, value, valid in (("class_order", order, CLASS_ORDERS), ("transforms", transforms, TRANSFORMS)):
        if value not in valid:
            raise DataError(f"{path}: {key} = '{value}'; valid: {', '.join(valid)}")
    trees = _trees(path, table)
    first = trees.get("train", trees.get("images"))
    if not first.is_dir():
        raise DataError(f"{path}: folder {first} not found")
    num_classes = len(class_folders(first))
    if num_classes < 2:
        raise DataError(f"{path}: {first} has {num_classes} class folder(s); a stream needs at least 2")
    named = _value(path, table, "named_tasks", list, [])
    if any(not isinstance(count, int) or count < 1 or num_classes % count for count in named):
        raise DataError(f"{path}: named_tasks {named} must divide the {num_classes} classes")
    split = {key: _value(path, table, key, kind, default) for key, kind, default in
             (("test_fraction", float, None), ("split_seed", int, 0))}
    if "images" in trees and not (split["test_fraction"] is not None and 0 < split["test_fraction"] < 1):
        raise DataError(f"{path}: 'images' needs test_fraction between 0 and 1 (exclusive)")
    return DatasetSpec(
        name=name, title=_value(path, table, "title", str, name), num_classes=num_classes,
        shuffle=order == "shuffle", loader=partial(_load_declared, path=path, trees=trees, **split),
        transforms=TRANSFORMS[transforms], named_tasks=tuple(named),
        reference_counts=None, folder=str(first.parent),
        expected_tree=" and ".join(f"{tree}/<class>/<image>" for tree in trees.values()),
        download=f"(declared in {path})")


def _value(path: Path, table: dict, key: str, kind: type, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise DataError(f"{path}: missing key '{key}'")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{path}: {key} = {value!r} must be a {kind.__name__}")
    return value


def _trees(path: Path, table: dict) -> dict[str, Path]:
    if "images" in table and ("train" in table or "test" in table):
        raise DataError(f"{path}: give either train and test, or images with test_fraction, not both")
    keys = ("images",) if "images" in table else ("train", "test")
    if "test_fraction" in table and "images" not in table:
        raise DataError(f"{path}: test_fraction needs images (one tree to split), not train/test")
    return {key: path.parent / _value(path, table, key, str) for key in keys}


def _load_declared(spec: DatasetSpec, root: Path | None, path: Path, trees: dict[str, Path],
                   test_fraction: float | None, split_seed: int) -> RawData:
    if "images" in trees:
        raw = _split_tree(spec, trees["images"], test_fraction, split_seed)
    else:
        raw = read_split_trees(spec, root, trees)
    digest = hashlib.sha256(path.read_bytes())
    for source in (raw.train, raw.test):
        for file in source.paths:
            digest.update(b"\0" + str(Path(file).relative_to(path.parent)
                                      if Path(file).is_relative_to(path.parent) else file).encode())
        digest.update(b"\1")
    raw.fingerprint = digest.hexdigest()
    return raw


def _split_tree(spec: DatasetSpec, tree: Path, fraction: float, seed: int) -> RawData:
    """Per class (sorted folders), a ``default_rng(seed)`` permutation of its files picks the
    ``max(1, round(fraction * n))`` test files; both splits keep file order."""
    if not tree.is_dir():
        raise spec.data_error(None, f"{tree} not found")
    names = class_folders(tree)
    if len(names) != spec.num_classes:
        raise spec.data_error(None, f"{tree} has {len(names)} class folders, expected {spec.num_classes}")
    rng = np.random.default_rng(seed)
    train, test = ([], []), ([], [])
    for label, name in enumerate(names):
        files = image_files(tree / name)
        if len(files) < 2:
            raise spec.data_error(None, f"{tree / name} has {len(files)} image(s); a train/test split needs 2")
        count = min(max(1, round(fraction * len(files))), len(files) - 1)
        is_test = np.zeros(len(files), dtype=bool)
        is_test[rng.permutation(len(files))[:count]] = True
        for file, goes_to_test in zip(files, is_test):
            target = test if goes_to_test else train
            target[0].append(file)
            target[1].append(label)
    return RawData(train=FileImages(*train), test=FileImages(*test), class_names=names)
