"""Class-incremental streams ``<dataset>_t<N>``: class order, per-task data (built with Avalanche) and the
evaluation sets, following the data protocol (PILOT's class order, transforms and test order).

Steps (data protocol, checklist): load and validate the raw splits; draw the class order (numpy's legacy
global RNG seeded with the seed, then restored; identity for unshuffled datasets); remap raw labels to new
labels (position in the order); split with avalanche-lib's ``class_incremental_benchmark`` given the identity
order over new labels and ``num_classes_per_exp`` (never ``seed``, never ``num_experiences``), and check every
experience. Task datasets come from the Avalanche experiences (train / eval transform groups) and yield plain
``(image, label)`` pairs. The evaluation set after task t is built here, ordered by (new label, original
position), as PILOT's test loader sees it; Avalanche's per-experience order is not that order.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from benchmark.data.datasets import DatasetSpec, LabelledImages, RawData
from benchmark.data.datasets.declared import declare_datasets
from benchmark.data.transforms import TransformPair, check_options
from benchmark.errors import ClbenchError
from benchmark.registry import DATASETS, unknown_name_message

DEFAULT_DATA_ROOT = "./data"
DATA_ROOT_ENV = "CLBENCH_DATA_ROOT"
DEFAULT_SEED = 1993
CLASS_ORDERS = ("protocol", "identity")
_NAME = re.compile(r"^(?P<dataset>[A-Za-z0-9]+)_t(?P<tasks>\d+)$")


def default_data_root() -> Path:
    """``$CLBENCH_DATA_ROOT`` when set (non-empty), else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def named_benchmarks() -> list[str]:
    """The named settings of every registered dataset (the spec's nine, plus ``digits_t5``)."""
    return [f"{name}_t{tasks}" for name in DATASETS.names() for tasks in DATASETS.get(name).named_tasks]


def parse_benchmark(name: str, data_root: str | Path | None = None) -> tuple[DatasetSpec, int]:
    """``"imr_t40"`` -> (ImageNet-R's spec, 40); a bad name, unknown dataset or N that does not divide the
    class count is a :class:`ClbenchError` listing what is valid. A dataset no code registered is looked up
    among the declaration files of ``data_root`` (default: :func:`default_data_root`)."""
    match = _NAME.match(name)
    if match is None:
        hint = (f" (e.g. {name}_t{DATASETS.get(name).named_tasks[0]})" if name in DATASETS else "")
        raise ClbenchError(f"bad benchmark name '{name}': expected <dataset>_t<N>{hint}. "
                           f"Named benchmarks: {', '.join(named_benchmarks())}")
    dataset, tasks = match["dataset"], int(match["tasks"])
    if dataset not in DATASETS:
        declare_datasets(Path(data_root) if data_root is not None else default_data_root())
    if dataset not in DATASETS:
        raise ClbenchError(unknown_name_message("dataset", dataset, DATASETS.names())
                           + f" (benchmarks are <dataset>_t<N>, e.g. {', '.join(named_benchmarks()[:3])})")
    spec = DATASETS.get(dataset)
    if tasks not in spec.valid_task_counts():
        raise ClbenchError(f"'{name}': {tasks} tasks do not split the {spec.num_classes} classes of {spec.title} "
                           f"evenly; valid N: {', '.join(map(str, spec.valid_task_counts()))}")
    return spec, tasks


def benchmark_family(name: str, data_root: str | Path | None = None) -> str:
    """The dataset (hyper-parameter family) of a benchmark: ``"imr_t40"`` -> ``"imr"``."""
    return parse_benchmark(name, data_root)[0].name


def class_order(num_classes: int, shuffle: bool, seed: int) -> list[int]:
    """PILOT's order: ``permutation(n)`` of numpy's legacy global RNG seeded with ``seed``, or the identity.

    The global RNG state is restored afterwards, so the draw leaves no trace.
    """
    if not shuffle:
        return list(range(num_classes))
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.permutation(num_classes).tolist()
    finally:
        np.random.set_state(state)


class PairView(Dataset):
    """A dataset yielding ``(image, int label)`` tuples from an Avalanche dataset (whose items are lists)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int):
        image, label = self.dataset[item][:2]
        return image, int(label)


@dataclass
class TaskData:
    """One task: its new labels (contiguous), training images with train transforms (``train``) and the same
    images with test transforms (``train_eval``), both ordered by (label, original position)."""

    index: int
    classes: list[int]
    raw_classes: list[int]
    train: Dataset
    train_eval: Dataset
    test_count: int


@dataclass
class Stream:
    """A built class-incremental stream (see the module docstring); ``describe()`` is its JSON record."""

    name: str
    spec: DatasetSpec
    seed: int
    class_order: list[int]
    increments: list[int]
    tasks: list[TaskData]
    transforms: TransformPair
    requested_profile: str
    normalize: str
    image_size: int
    data_root: Path | None
    raw: RawData
    test_labels: np.ndarray
    warnings: list[str] = field(default_factory=list)
    requested_order: str = "protocol"
    """``protocol`` (the dataset's rule) or ``identity`` (asked for by the method)."""

    def __post_init__(self) -> None:
        self._eval_order = np.argsort(self.test_labels, kind="stable")
        self._sorted_labels = self.test_labels[self._eval_order]

    @property
    def family(self) -> str:
        """The dataset name (hyper-parameter family)."""
        return self.spec.name

    @property
    def num_classes(self) -> int:
        """Classes in the whole stream."""
        return self.spec.num_classes

    @property
    def num_tasks(self) -> int:
        """Number of tasks T."""
        return len(self.increments)

    def eval_dataset(self, task_index: int) -> Dataset:
        """Test images of new labels [0, seen after task ``task_index``), ordered by (new label, original
        position), yielding ``(image_tensor, label)`` with the test transform."""
        if not 0 <= task_index < self.num_tasks:
            raise IndexError(f"task {task_index} outside 0..{self.num_tasks - 1}")
        seen = sum(self.increments[: task_index + 1])
        count = int(np.searchsorted(self._sorted_labels, seen))
        return LabelledImages(self.raw.test, self.test_labels, self._eval_order[:count], self.transforms.test)

    def eval_labels(self, task_index: int) -> np.ndarray:
        """The labels of :meth:`eval_dataset` ``(task_index)`` in its order (no image is read)."""
        if not 0 <= task_index < self.num_tasks:
            raise IndexError(f"task {task_index} outside 0..{self.num_tasks - 1}")
        seen = sum(self.increments[: task_index + 1])
        return self._sorted_labels[: int(np.searchsorted(self._sorted_labels, seen))]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly record of how the stream was built (saved next to every result)."""
        return {
            "benchmark": self.name,
            "dataset": self.spec.name,
            "dataset_title": self.spec.title,
            "num_classes": self.num_classes,
            "num_tasks": self.num_tasks,
            "seed": self.seed,
            "shuffle": self.spec.shuffle and self.requested_order == "protocol",
            "requested_order": self.requested_order,
            "class_order": list(self.class_order),
            "increments": list(self.increments),
            "transform_profile": self.transforms.profile,
            "requested_profile": self.requested_profile,
            "normalize": self.normalize,
            "image_size": self.image_size,
            "transforms": {"train": repr(self.transforms.train), "test": repr(self.transforms.test)},
            "data_root": None if self.data_root is None else str(self.data_root.resolve()),
            "train_count": len(self.raw.train),
            "test_count": len(self.raw.test),
            "tasks": [{"index": task.index, "classes": task.classes, "raw_classes": task.raw_classes,
                       "train_count": len(task.train), "test_count": task.test_count} for task in self.tasks],
            "class_names": list(self.raw.class_names),
            "checksums": self.raw.checksums,
            "dataset_fingerprint": self.raw.fingerprint,
            "warnings": list(self.warnings),
        }


def build_stream(name: str, data_root: str | Path | None = None, image_size: int = 224, seed: int = DEFAULT_SEED,
                 normalize: str = "none", profile: str = "default", order: str = "protocol") -> Stream:
    """Load, validate and split benchmark ``name`` (e.g. ``imr_t40``) under ``data_root`` (default:
    :func:`default_data_root`; unused by ``digits``). ``profile``: ``default`` or ``coda``; ``normalize``:
    ``none``, ``half`` or ``imagenet``; ``image_size``: the backbone's input size (224 = the spec); ``order``:
    ``protocol`` (the dataset's class-order rule) or ``identity`` (a method's request, e.g. CODA-P's)."""
    root = Path(data_root) if data_root is not None else default_data_root()
    spec, num_tasks = parse_benchmark(name, root)
    check_options(profile, normalize)
    if order not in CLASS_ORDERS:
        raise ClbenchError(f"unknown class order '{order}'; valid: {', '.join(CLASS_ORDERS)}")
    transforms = spec.transforms(profile, image_size, normalize)
    raw = spec.load(root)
    order_list = class_order(spec.num_classes, spec.shuffle and order == "protocol", seed)
    new_label = np.empty(spec.num_classes, dtype=np.int64)
    new_label[order_list] = np.arange(spec.num_classes)
    train_labels, test_labels = new_label[raw.train.targets], new_label[raw.test.targets]
    increments = [spec.num_classes // num_tasks] * num_tasks
    tasks = _avalanche_tasks(raw, train_labels, test_labels, increments, transforms, order_list)
    return Stream(name=name, spec=spec, seed=seed, class_order=order_list, increments=increments, tasks=tasks,
                  transforms=transforms, requested_profile=profile, normalize=normalize, image_size=image_size,
                  data_root=root if spec.needs_data_root else None, raw=raw, test_labels=test_labels,
                  warnings=list(raw.warnings), requested_order=order)


def _import_avalanche():
    # avalanche-lib's import may warn "No QP solver found" (and, through jaxopt, that JAXopt is unmaintained);
    # exactly those messages are silenced, nothing else.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*no QP solver.*")
        warnings.filterwarnings("ignore", message=r"JAXopt is no longer maintained", category=DeprecationWarning)
        from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
        from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
        from avalanche.benchmarks.utils.data_attribute import DataAttribute
        from avalanche.benchmarks.utils.transform_groups import TransformGroups
    return class_incremental_benchmark, ClassificationDataset, DataAttribute, TransformGroups


def _avalanche_tasks(raw: RawData, train_labels: np.ndarray, test_labels: np.ndarray, increments: list[int],
                     transforms: TransformPair, order: list[int]) -> list[TaskData]:
    class_incremental_benchmark, ClassificationDataset, DataAttribute, TransformGroups = _import_avalanche()

    def dataset(source, labels):
        return ClassificationDataset(
            [LabelledImages(source, labels)],
            data_attributes=[DataAttribute(labels.tolist(), "targets"),
                             DataAttribute(list(range(len(labels))), "position")],
            transform_groups=TransformGroups({"train": transforms.train, "eval": transforms.test}))

    num_classes = sum(increments)
    benchmark = class_incremental_benchmark(
        {"train": dataset(raw.train, train_labels), "test": dataset(raw.test, test_labels)},
        class_order=list(range(num_classes)), num_classes_per_exp=increments)
    train_stream, test_stream = list(benchmark.train_stream), list(benchmark.test_stream)
    _check(len(train_stream) == len(increments) == len(test_stream),
           f"Avalanche built {len(train_stream)}/{len(test_stream)} experiences, expected {len(increments)}")
    tasks, start = [], 0
    for index, (train_exp, test_exp) in enumerate(zip(train_stream, test_stream)):
        classes = list(range(start, start + increments[index]))
        for split, experience, labels in (("train", train_exp, train_labels), ("test", test_exp, test_labels)):
            _check(sorted(experience.classes_in_this_experience) == classes,
                   f"{split} experience {index} holds classes {sorted(experience.classes_in_this_experience)}, "
                   f"expected {classes}")
            expected = np.flatnonzero((labels >= classes[0]) & (labels <= classes[-1]))
            positions = np.sort(np.asarray(list(experience.dataset.position), dtype=np.int64))
            _check(np.array_equal(positions, expected),
                   f"{split} experience {index} holds {len(positions)} samples, expected {len(expected)}")
        ordered = _in_label_order(train_exp.dataset)
        tasks.append(TaskData(index=index, classes=classes, raw_classes=[order[label] for label in classes],
                              train=PairView(ordered.train()), train_eval=PairView(ordered.eval()),
                              test_count=len(test_exp.dataset)))
        start += increments[index]
    _check(sum(len(task.train) for task in tasks) == len(train_labels), "train experiences do not cover the data")
    return tasks


def _in_label_order(dataset):
    """The Avalanche dataset reordered by (label, original position) (Avalanche prepends class by class)."""
    labels = np.asarray(list(dataset.targets), dtype=np.int64)
    positions = np.asarray(list(dataset.position), dtype=np.int64)
    return dataset.subset(np.lexsort((positions, labels)).tolist())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"stream construction failed: {message}")
