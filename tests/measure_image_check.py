"""Measure the preflight image check on a fabricated tree of real JPEGs (not a test; run by hand).

    python tests/measure_image_check.py [--count 10000] [--dir DIR]

Times are scaled to 10,000 images when ``--count`` differs.
Wall-clock and CPU seconds are printed (CPU time is what a busy machine does not distort). Writes ``count`` JPEGs of 500 x 375 px (ImageNet-R's most common size) with smooth content and noise, then
times, per 10,000 images: a header check (``Image.open`` + ``verify``), the chosen check (1/8-scale JPEG decode,
:func:`benchmark.data.image_check.decode_image`), a full decode, and :func:`benchmark.data.image_check.check_images` on the
first run (no cache; worker processes) and cached (stat only).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def fabricate(directory: Path, count: int) -> list[str]:
    """``count`` JPEGs in 100 class folders (kept from an earlier call where present); returns their paths."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    paths = []
    for index in range(count):
        folder = directory / f"class{index % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.random(3) * 6.28
        image = 127 + 80 * np.sin(x[..., None] / (20 + index % 30) + y[..., None] / 37 + phase)
        image += rng.normal(0, 12, size=image.shape)
        path = folder / f"img_{index:05d}.jpg"
        if path.exists():  # a tree fabricated by an earlier call is reused
            paths.append(str(path))
            continue
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def header_check(path: str) -> str | None:
    """Header and structure only, no pixel decode (what ``Image.verify`` does)."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:
        return str(error)
    return None


def full_decode(path: str) -> str | None:
    """Every pixel at full resolution."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:
        return str(error)
    return None


def main() -> None:
    from benchmark.data.image_check import CACHE_ENV, available_workers, check_images, decode_image

    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="clbench-images-"))
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="clbench-cache-")  # empty: the first run decodes all
    began = time.perf_counter()
    paths = fabricate(directory / "tree", args.count)
    size = sum(os.path.getsize(path) for path in paths)
    print(f"{len(paths)} JPEGs, {size / len(paths) / 1024:.1f} KiB each, written in {time.perf_counter() - began:.1f}s")
    scale = 10_000 / len(paths)
    for name, check in (("header check (open + verify)", header_check),
                        ("1/8-scale JPEG decode, 1 process", decode_image),
                        ("full decode, 1 process", full_decode)):
        began, cpu = time.perf_counter(), time.process_time()
        bad = [path for path in paths if check(path) is not None]
        print(f"{name:<40} {(time.perf_counter() - began) * scale:7.1f} s per 10,000 "
              f"({(time.process_time() - cpu) * scale:.1f} s CPU; {len(bad)} bad)")
    for label in (f"check_images first run, {available_workers()} workers", "check_images cached"):
        began = time.perf_counter()
        bad = check_images(paths, directory / "tree")
        print(f"{label:<40} {(time.perf_counter() - began) * scale:7.1f} s per 10,000 ({len(bad)} bad)")


if __name__ == "__main__":
    main()
