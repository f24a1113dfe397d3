"""Data-path throughput: JPEG decode + train/test transform, in images/s per loader worker.

``python -m benchmark.data.datapath`` fabricates an ImageNet-R-shaped tree of real JPEGs (200 classes in the APER
``imagenet-r/{train,test}/<wnid>/`` layout; image sizes and JPEG quality like ImageNet-R's web images, ~ 400-800 px
on the long side) in a temporary folder, builds the ``imr_t10`` stream on it through the harness's own dataset,
stream and transform code, and times a :class:`torch.utils.data.DataLoader` over the first task's training images
(train transform) and test images (test transform) with 0, 1, 2 ... workers. A GPU step that consumes ``R`` images/s
needs about ``R / (images/s per worker)`` workers to stay fed. Without workers the images per CPU second of the
process are reported too: the rate one free core reaches, whatever the load of a shared machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

CLASSES = 200


def _wnids(count: int) -> list[str]:
    return [f"n{(1_000_003 * (index + 1)) % 99_999_989:08d}" for index in range(count)]


def fabricate_imr_tree(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Write ``<root>/imagenet-r/{train,test}/<wnid>/<k>.jpg`` with natural-image-like JPEGs (smooth colour fields
    plus texture and noise, long side 400-800 px, aspect 3:4 to 4:3, quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for wnid in _wnids(CLASSES):
            folder = Path(root) / "imagenet-r" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                long_side = int(rng.integers(400, 801))
                short_side = int(long_side * rng.uniform(0.75, 1.0))
                width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
                coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
                base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
                texture = rng.normal(0, 18, (height, width, 1))
                pixels = np.clip(base + texture, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return Path(root)


def _throughput(dataset, workers: int, batch_size: int, batches: int) -> tuple[float, float | None]:
    """Images/s (wall clock) and, without workers, images per CPU second of this process."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    began, cpu_began, images = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        try:
            images += len(next(iterator)[0])
        except StopIteration:
            break
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return images / wall, (images / cpu if workers == 0 and cpu > 0 else None)


def datapath_report(root: Path, workers: list[int], batch_size: int = 32, batches: int = 4) -> dict[str, Any]:
    """Images/s (and per worker) of the imr train and test pipelines over the tree under ``root``."""
    from benchmark.data.streams import build_stream

    stream = build_stream("imr_t10", root, image_size=224, seed=1993)
    task = stream.tasks[0]
    rows = []
    for count in workers:
        for split, dataset in (("train", task.train), ("test", task.train_eval)):
            rate, per_cpu_second = _throughput(dataset, count, batch_size, batches)
            rows.append({"split": split, "workers": count, "images_per_s": rate,
                         "images_per_s_per_worker": rate / max(count, 1), "images_per_cpu_s": per_cpu_second})
    return {"images_in_tree": sum(1 for _ in Path(root).rglob("*.jpg")), "batch_size": batch_size,
            "timed_batches": batches, "cpu_count": torch.multiprocessing.cpu_count(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Fabricate the tree, time the loaders, print a table and the JSON path."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.data.datapath", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (default 0,1,2)")
    parser.add_argument("--train-per-class", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per measurement")
    parser.add_argument("--out", default="results/speed/datapath.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        fabricate_imr_tree(Path(folder), args.train_per_class, 1)
        print(f"fabricated {CLASSES * (args.train_per_class + 1)} JPEGs in {time.perf_counter() - began:.0f}s")
        report = datapath_report(Path(folder), [int(w) for w in args.workers.split(",")], args.batch_size,
                                 args.batches)
    print(f"{'split':<6} {'workers':>7} {'images/s':>9} {'per worker':>11} {'per CPU s':>10}")
    for row in report["rows"]:
        per_cpu = f"{row['images_per_cpu_s']:.1f}" if row["images_per_cpu_s"] else "–"
        print(f"{row['split']:<6} {row['workers']:>7} {row['images_per_s']:>9.1f} "
              f"{row['images_per_s_per_worker']:>11.1f} {per_cpu:>10}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
