"""``bench data prepare``: build a dataset's expected tree from the files the user downloaded (never downloading).

- ``cub``: the official CUB-200-2011 release (``CUB_200_2011.tgz`` or its extracted folder): ``images.txt``
  (``<id> <class>/<file>``), ``train_test_split.txt`` (``<id> <1 = train, 0 = test>``) and ``images/``
  become ``<root>/cub/{train,test}/<class>/<file>``: the official split (5,994 / 5,794 images), not APER's.
- ``domainnet``: a folder holding the six domain zips (``clipart.zip`` ... or the extracted ``<domain>/``
  folders) and the lists ``<domain>_train.txt`` / ``<domain>_test.txt``: every listed image and the lists are
  copied to ``<root>/domainnet/`` (the loader's layout, :mod:`benchmark.data.datasets.domainnet`).

The tree is assembled in a hidden sibling folder and renamed into place when complete, with a marker file
recording what it was built from; running again with the same files does nothing. A missing list or image is
a :class:`DataError` naming it, and nothing is left behind.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator

from benchmark.data.datasets.domainnet import DOMAINS, SPLITS, list_name, read_list
from benchmark.data.datasets.images import md5_of
from benchmark.errors import DataError

MARKER = ".clbench-prepared.json"
# CUB_200_2011.tgz as published at https://data.caltech.edu/records/65de6-vp158 (the MD5 torchvision-style loaders
# and avalanche-lib's CUB200 check).
CUB_MD5 = "97eceeb196236b17998738112f37df78"


class Files:
    """A downloaded release: a folder, a tar archive (``.tgz``, ``.tar.gz``, ``.tar``) or a zip; members are
    addressed by their POSIX path inside it (a leading ``./`` dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = "dir"
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self.kind = "zip"
        elif self.path.is_file() and tarfile.is_tarfile(self.path):
            self.kind = "tar"
        else:
            what = "not found" if not self.path.exists() else "neither a folder, a tar archive nor a zip"
            raise DataError(f"--from {self.path}: {what}")

    def scan(self, text_wanted: Callable[[str], bool]) -> tuple[list[str], dict[str, str]]:
        """Every file member's path, and the UTF-8 text of those ``text_wanted`` accepts (one pass)."""
        if self.kind == "dir":
            names = [path.relative_to(self.path).as_posix() for path in self.path.rglob("*") if path.is_file()]
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as archive:
                names = [info.filename for info in archive.infolist() if not info.is_dir()]
        else:
            names, texts = [], {}
            with tarfile.open(self.path) as archive:
                for member in archive:
                    if member.isfile():
                        names.append(_clean(member.name))
                        if text_wanted(names[-1]):
                            texts[names[-1]] = _decode(self.path, names[-1], archive.extractfile(member).read())
            return names, texts
        wanted = {name for name in names if text_wanted(name)}
        return names, {name: _decode(self.path, name, handle.read()) for name, handle in self.members(wanted)}

    def members(self, wanted: set[str]) -> Iterator[tuple[str, IO[bytes]]]:
        """``(name, readable file)`` for the members of ``wanted`` present (a tar is read in one pass)."""
        if self.kind == "dir":
            for name in sorted(wanted):
                if (self.path / name).is_file():
                    with open(self.path / name, "rb") as handle:
                        yield name, handle
        elif self.kind == "zip":
            with zipfile.ZipFile(self.path) as archive:
                present = set(archive.namelist())
                for name in sorted(wanted & present):
                    with archive.open(name) as handle:
                        yield name, handle
        else:
            with tarfile.open(self.path) as archive:
                for member in archive:
                    if member.isfile() and _clean(member.name) in wanted:
                        yield _clean(member.name), archive.extractfile(member)



def _clean(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _decode(path: Path, name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: {name} is not a text file") from None


def _safe(source: Path, relative: str) -> str:
    """``relative`` when it stays inside the tree (no absolute path, no ``..``)."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"--from {source}: listed path {relative!r} leaves the tree")
    return relative


@dataclass
class Plan:
    """What to build: ``copies[(source, member)] = destination`` relative to the dataset folder."""

    dataset: str
    folder: str
    copies: dict[tuple[Files, str], str]
    md5: dict[Path, str] = field(default_factory=dict)
    """The published MD5 of downloaded archives, where known (a mismatch is a warning, as for CIFAR-100)."""

    def digest(self) -> str:
        """SHA-256 of the sorted (member, destination) pairs: what the marker file records."""
        lines = sorted(f"{member}\t{destination}" for (_, member), destination in self.copies.items())
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def prepare(dataset: str, source: Path, root: Path, show_progress: bool = True) -> list[str]:
    """Build ``dataset``'s tree under ``root`` from ``source``; returns what was done (and checksum warnings)."""
    if dataset not in PLANNERS:
        raise DataError(f"bench data prepare knows how to assemble {', '.join(sorted(PLANNERS))}, not "
                        f"'{dataset}' (bench data check --dataset {dataset} says where to get it)")
    plan = PLANNERS[dataset](Path(source))
    target = Path(root) / plan.folder
    marker = target / MARKER
    if target.exists():
        recorded = _read_marker(marker)
        if recorded is None:
            raise DataError(f"{target} exists and was not built by bench data prepare; move it away to rebuild")
        if recorded.get("digest") != plan.digest():
            raise DataError(f"{target} was prepared from other files ({recorded.get('source')}); "
                            "move it away to rebuild")
        absent = [dest for dest in plan.copies.values() if not (target / dest).is_file()]
        if absent:
            raise DataError(f"{target} lacks {len(absent)} prepared file(s) (e.g. {absent[0]}); "
                            "move it away to rebuild")
        return [f"{target} is already prepared from {recorded.get('source')}; nothing to do"]
    warnings = [f"warning: {path} has MD5 {found}, the release's is {expected}"
                for path, expected in plan.md5.items() if (found := md5_of(path)) != expected]
    staging = target.parent / f".{plan.folder}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted prepare
    try:
        _copy(plan, staging, show_progress)
        (staging / MARKER).write_text(json.dumps({"dataset": dataset, "source": Path(source).name,
                                                  "files": len(plan.copies), "digest": plan.digest()}) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return warnings + [f"prepared {target}: {len(plan.copies)} files from {Path(source).name}"]


def _read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _copy(plan: Plan, staging: Path, show_progress: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    by_source: dict[Files, dict[str, str]] = {}
    for (files, member), destination in plan.copies.items():
        by_source.setdefault(files, {})[member] = destination
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress) as progress:
        for files, wanted in by_source.items():
            bar = progress.add_task(f"{plan.dataset}: {files.path.name}", total=len(wanted))
            done = set()
            for member, handle in files.members(set(wanted)):
                destination = staging / wanted[member]
                destination.parent.mkdir(parents=True, exist_ok=True)
                with open(destination, "wb") as out:
                    shutil.copyfileobj(handle, out)
                done.add(member)
                progress.advance(bar)
            missing = sorted(set(wanted) - done)
            if missing:
                raise DataError(f"{files.path}: incomplete, {len(missing)} of {len(wanted)} listed files are "
                                f"missing (e.g. {missing[0]})")


# -- CUB-200-2011 ----------------------------------------------------------------------------------------
def plan_cub(source: Path) -> Plan:
    """The official split of CUB-200-2011 (module docstring) from the archive or its extracted folder."""
    files = Files(source)
    lists = ("images.txt", "train_test_split.txt")
    _, texts = files.scan(lambda name: PurePosixPath(name).name in lists and name.count("/") <= 1)
    found = sorted((name for name in texts if PurePosixPath(name).name == "images.txt"), key=len)
    if not found:
        raise DataError(f"--from {source}: no images.txt; expected the CUB-200-2011 release "
                        "(CUB_200_2011.tgz or its extracted folder, with images.txt, train_test_split.txt "
                        "and images/)")
    base = str(PurePosixPath(found[0]).parent)
    prefix = "" if base == "." else base + "/"
    if f"{prefix}train_test_split.txt" not in texts:
        raise DataError(f"--from {source}: no {prefix}train_test_split.txt beside images.txt")
    images = _id_table(source, texts[f"{prefix}images.txt"], "images.txt")
    is_train = _id_table(source, texts[f"{prefix}train_test_split.txt"], "train_test_split.txt")
    if set(images) != set(is_train) or any(flag not in ("0", "1") for flag in is_train.values()):
        raise DataError(f"--from {source}: images.txt and train_test_split.txt do not list the same image ids "
                        "with a 0/1 flag each")
    copies = {}
    for image_id, relative in images.items():
        parts = PurePosixPath(_safe(source, relative)).parts
        if len(parts) != 2:
            raise DataError(f"--from {source}: images.txt entry {image_id} '{relative}' is not <class>/<file>")
        split = "train" if is_train[image_id] == "1" else "test"
        copies[(files, f"{prefix}images/{relative}")] = f"{split}/{relative}"
    return Plan("cub", "cub", copies, {Path(source): CUB_MD5} if files.kind != "dir" else {})


def _id_table(source: Path, text: str, name: str) -> dict[str, str]:
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"--from {source}: {name} line {number} is not '<id> <value>': {line.strip()!r}")
        table[fields[0]] = fields[1]
    return table


# -- DomainNet --------------------------------------------------------------------------------------------
def plan_domainnet(source: Path) -> Plan:
    """Every image the six domains' lists name, from ``<domain>.zip`` or ``<domain>/``, plus the lists."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"--from {source}: expected a folder with the six domain zips and their lists")
    lists, missing = Files(source), []
    copies: dict[tuple[Files, str], str] = {}
    for domain in DOMAINS:
        zipped = source / f"{domain}.zip"
        images = Files(zipped) if zipped.is_file() else (lists if (source / domain).is_dir() else None)
        if images is None:
            missing.append(f"{domain}.zip")
        for split in SPLITS:
            name = list_name(domain, split)
            if not (source / name).is_file():
                missing.append(name)
                continue
            copies[(lists, name)] = name
            try:
                entries = read_list(source / name)
            except (ValueError, UnicodeDecodeError) as error:
                raise DataError(str(error)) from None
            for relative, _ in entries:
                if images is not None:
                    copies[(images, _safe(source, relative))] = relative
    if missing:
        raise DataError(f"--from {source}: missing {', '.join(missing)} (the DomainNet release's domain zips "
                        "and <domain>_train.txt / <domain>_test.txt lists)")
    return Plan("domainnet", "domainnet", copies)


PLANNERS: dict[str, Callable[[Path], Plan]] = {"cub": plan_cub, "domainnet": plan_domainnet}
