"""Do an image tree's files decode? Verdicts per file, cached across commands, decoded in parallel when many.

The verdict cache is one JSON file per image tree under ``$CLBENCH_CACHE_DIR`` (default
``$XDG_CACHE_HOME/clbench``, else ``~/.cache/clbench``), keyed by each file's path, size and mtime, so
re-checking an unchanged tree only stats its files. It is the only thing a preflight writes, never inside a run
folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

CACHE_ENV = "CLBENCH_CACHE_DIR"


CACHE_VERSION = 1


# Below this many unchecked files the check runs in-process (starting worker processes costs more).
PARALLEL_THRESHOLD = 512


# -- images ----------------------------------------------------------------------------------------------
def decode_image(path: str) -> str | None:
    """None when the image at ``path`` decodes completely, else the reason.

    JPEGs are decoded at 1/8 scale (libjpeg's DCT scaling: every entropy-coded byte is still read, so a
    truncated or corrupt file fails as in a full decode, at a fraction of the cost); other formats in full.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return None


def _decode_many(paths: list[str]) -> list[str | None]:
    return [decode_image(path) for path in paths]


def image_cache_dir() -> Path:
    """Where image verdicts are cached (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clbench"


def image_cache_path(tree: Path) -> Path:
    """The verdict cache of one image tree."""
    key = hashlib.sha256(str(Path(tree).resolve()).encode()).hexdigest()[:20]
    return image_cache_dir() / f"images-{key}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        payload = json.loads(path.read_text())
        if payload.get("version") == CACHE_VERSION and isinstance(payload.get("files"), dict):
            return payload["files"]
    except (OSError, ValueError, AttributeError):
        pass  # no cache yet, or an unreadable one: check everything again
    return {}


def _save_cache(path: Path, files: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "w") as file:
            json.dump({"version": CACHE_VERSION, "files": files}, file, separators=(",", ":"))
        os.replace(temporary, path)
    except OSError:
        pass  # an unwritable cache only costs time at the next check


def check_images(paths: Sequence[str], tree: Path, workers: int | None = None) -> dict[str, str]:
    """Decode every image of ``paths`` (under the image tree ``tree``) whose (size, mtime) is not in the
    verdict cache; returns ``{path: reason}`` for those that do not decode. Unchecked files are decoded in
    ``workers`` processes (default min(8, available CPUs)) when there are many."""
    cache_path = image_cache_path(tree)
    cached = _load_cache(cache_path)
    verdicts: dict[str, list] = {}
    todo: list[tuple[str, int, int]] = []
    bad: dict[str, str] = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            bad[path] = error.strerror or str(error)
            continue
        entry = cached.get(path)
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            verdicts[path] = entry
        else:
            todo.append((path, stat.st_size, stat.st_mtime_ns))
    if todo:
        names = [path for path, _, _ in todo]
        workers = workers or available_workers()
        if len(names) >= PARALLEL_THRESHOLD and workers > 1:
            import multiprocessing

            chunks = [names[start:start + 256] for start in range(0, len(names), 256)]
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                reasons = [reason for chunk in pool.map(_decode_many, chunks) for reason in chunk]
        else:
            reasons = _decode_many(names)
        for (path, size, mtime), reason in zip(todo, reasons):
            verdicts[path] = [size, mtime, reason]
        _save_cache(cache_path, {**cached, **verdicts})
    bad.update({path: entry[2] for path, entry in verdicts.items() if entry[2] is not None})
    return bad


def available_workers() -> int:
    """min(8, CPUs available to this process)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))
