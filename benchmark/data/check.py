"""``bench data check``: is a dataset's tree in place and complete, and if not, what is missing and how to get it.

Reported: the dataset folder; the loader's verdict (layout, class folders, lists: the first problem it finds);
the class count; each split's image count against the reference release's (confirmed from logs, or not); the
checksums the format has (CIFAR-100's MD5s, DomainNet's list files); where to download it, and the
``bench data prepare`` command where the tree is assembled from a published archive. Images are not decoded
here (``bench run``'s preflight decodes every one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmark.data.datasets import DatasetSpec
from benchmark.data.prepare import PLANNERS
from benchmark.errors import DataError


@dataclass
class CheckReport:
    """``ready``: the dataset loads; ``lines``: the report, one finding per line."""

    ready: bool
    lines: list[str] = field(default_factory=list)


def check_dataset_files(spec: DatasetSpec, root: Path | None) -> CheckReport:
    """The report of :func:`benchmark.data.check` for ``spec`` under ``root``."""
    lines = [f"{spec.title} ({spec.name}): {spec.num_classes} classes"]
    if spec.needs_data_root:
        folder = Path(root) / spec.folder
        lines.append(f"folder {folder}: {'present' if folder.is_dir() else 'MISSING'}")
    try:
        raw = spec.load(root)
    except DataError as error:
        lines.append(f"problem: {error}")
        lines += _how_to_get(spec, str(error))
        return CheckReport(False, lines)
    lines.append(f"classes: {len(raw.class_names)} of {spec.num_classes}")
    counts = spec.reference_counts
    for split, source in (("train", raw.train), ("test", raw.test)):
        if counts is None:
            lines.append(f"{split}: {len(source)} images (no reference count)")
            continue
        expected = getattr(counts, split)
        confirmed = "confirmed" if getattr(counts, f"{split}_confirmed") else "unconfirmed"
        verdict = "as expected" if len(source) == expected else "DIFFERS"
        lines.append(f"{split}: {len(source)} images, reference {expected} ({confirmed}): {verdict}")
    for name, record in raw.checksums.items():
        if record.get("expected") is None:
            lines.append(f"checksum {name}: MD5 {record['md5']} (no reference checksum known)")
        else:
            lines.append(f"checksum {name}: MD5 {record['md5']} "
                         f"{'matches' if record['ok'] else 'DIFFERS from ' + record['expected']}")
    if raw.fingerprint:
        lines.append(f"fingerprint (declaration file and image list): {raw.fingerprint}")
    lines.append("ready: yes" + (" (with warnings above)" if "DIFFERS" in "\n".join(lines) else ""))
    return CheckReport(True, lines)


def _how_to_get(spec: DatasetSpec, problem: str) -> list[str]:
    lines = ["ready: no"]
    if spec.download and spec.download not in problem:
        lines.append(f"how to get it: {spec.download}")
    if spec.name in PLANNERS and "bench data prepare" not in problem:
        lines.append(f"assemble it from the downloaded files: bench data prepare --dataset {spec.name} "
                     "--from ARCHIVE_OR_FOLDER [--data-root ROOT]")
    return lines
