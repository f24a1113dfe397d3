"""What the harness knows about a dataset: class count, class-order rule, loader, transforms, reference counts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmark.data.datasets.images import RawData
from benchmark.data.transforms import TransformPair
from benchmark.errors import DataError


@dataclass(frozen=True)
class ReferenceCounts:
    """Image counts of the reference release; a mismatch is only a warning (``*_confirmed``: from logs)."""

    train: int
    test: int
    train_confirmed: bool
    test_confirmed: bool


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the streams can be built from; registered with :func:`benchmark.registry.register_dataset`.

    - ``shuffle``: class order = seed permutation (numpy legacy global RNG), else identity;
    - ``loader(spec, root)`` reads and validates the raw splits (``root`` is None when ``needs_data_root`` is
      false), raising :class:`DataError` for a missing or broken tree;
    - ``transforms(profile, image_size, normalize)`` gives the stream's train/test transforms;
    - ``named_tasks``: task counts of the named settings (e.g. ``(20, 40)`` -> ``imr_t20``, ``imr_t40``);
    - ``folder``: the dataset's directory under the data root; ``expected_tree``/``download``: what the
      error says when it is missing (``<root>`` is replaced by the data root);
    - ``reference_counts``: the reference release's image counts (None: there is no reference, e.g. a declared
      dataset);
    - ``note``: what ``bench describe`` says about a choice the harness made for this dataset (e.g. a split).
    """

    name: str
    title: str
    num_classes: int
    shuffle: bool
    loader: Callable[["DatasetSpec", Path | None], RawData]
    transforms: Callable[[str, int, str], TransformPair]
    named_tasks: tuple[int, ...]
    reference_counts: ReferenceCounts | None
    folder: str = ""
    expected_tree: str = ""
    download: str = ""
    needs_data_root: bool = True
    note: str = ""

    def valid_task_counts(self) -> list[int]:
        """Every N that divides the class count."""
        return [count for count in range(1, self.num_classes + 1) if self.num_classes % count == 0]

    def data_error(self, root: Path | None, problem: str) -> DataError:
        """A :class:`DataError` stating ``problem``, the expected tree and what to download."""
        tree = self.expected_tree.replace("<root>", str(root))
        return DataError(f"{self.title}: {problem}. Expected {tree}. {self.download}".strip())

    def load(self, root: Path | None) -> RawData:
        """Read and validate the raw data; counts that differ from the reference become warnings."""
        raw = self.loader(self, root if self.needs_data_root else None)
        self._check_classes(raw, root)
        for split, source in (("train", raw.train), ("test", raw.test)):
            if self.reference_counts is None:
                break
            expected = getattr(self.reference_counts, split)
            confirmed = getattr(self.reference_counts, f"{split}_confirmed")
            if len(source) != expected:
                raw.warnings.append(
                    f"{self.title} {split} split has {len(source)} images; the reference release has "
                    f"{expected}{'' if confirmed else ' (unconfirmed)'}")
        return raw

    def _check_classes(self, raw: RawData, root: Path | None) -> None:
        if len(raw.class_names) != self.num_classes:
            raise self.data_error(root, f"found {len(raw.class_names)} classes, expected {self.num_classes}")
        for split, source in (("train", raw.train), ("test", raw.test)):
            counts = np.bincount(source.targets, minlength=self.num_classes)
            if len(counts) > self.num_classes or source.targets.min(initial=0) < 0:
                raise self.data_error(root, f"{split} labels outside [0, {self.num_classes})")
            empty = [raw.class_names[label] for label in np.flatnonzero(counts == 0)]
            if empty:
                raise self.data_error(root, f"{split} split has no image of class(es) {preview_names(empty)}")


def preview_names(names: list[str], limit: int = 10) -> str:
    """Up to ``limit`` names, comma-separated, with the total when some are left out."""
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")
