"""The evaluation cache: exact (identical predictions, equal logits) for every method, never a stale value, within
its memory budget, per process only (a resumed run recomputes and gives identical metrics)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from benchmark.cli import main
from benchmark.method import Method
from benchmark.registry import METHODS
from benchmark.runs.eval_cache import EvalCache
from benchmark.runs.evaluation import evaluate
from benchmark.testing.contract import build, learn
from benchmark.testing.data import make_tasks
from fabricate import write_dataset

CACHED = {"simplecil": 1, "aper": 1, "ranpac": 1, "l2p": 1, "dualprompt": 1, "coda_prompt": 1, "ease": 3}
"""Computations each method routes through the cache after three tasks (EASE: one per adapter set)."""


def bench(*args) -> int:
    return main([str(arg) for arg in args])


# -- the mechanism, by hand ---------------------------------------------------------------------------------
class Counting(torch.nn.Module):
    """A stand-in method: ``predict`` = 2 * frozen('double', since) + 1, counting the images computed."""

    frozen, frozen_stack = Method.frozen, Method.frozen_stack
    scale = 1.0

    def __init__(self, since: int) -> None:
        super().__init__()
        self.since, self.task_sizes, self.frozen_work, self.computed = since, [2], None, 0

    def compute(self, images: torch.Tensor) -> torch.Tensor:
        self.computed += len(images)
        return images * self.scale

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.frozen("double", self.since, images, self.compute) * 2 + 1


def serve(cache: EvalCache, method: Counting, ids: list[int]) -> torch.Tensor:
    images = torch.tensor(ids, dtype=torch.float32)[:, None]
    with cache.serving(method, torch.tensor(ids)):
        return method.predict(images)


def test_kept_values_are_served_and_only_missing_images_computed():
    cache, method = EvalCache(capacity=6), Counting(since=0)
    assert serve(cache, method, [0, 1, 2]).squeeze(1).tolist() == [1.0, 3.0, 5.0]
    assert method.computed == 3
    assert serve(cache, method, [1, 2, 3, 4]).squeeze(1).tolist() == [3.0, 5.0, 7.0, 9.0]
    assert method.computed == 5  # only images 3 and 4 were new
    assert (cache.served, cache.computed, cache.nbytes) == (2, 5, 6 * 4)


def test_a_stale_entry_cannot_be_served():
    """Values computed before a computation's declared ``since`` are never returned: after the method declares
    that its path changed (a later ``since``), the old entries are recomputed."""
    cache, method = EvalCache(capacity=4), Counting(since=1)
    method.task_sizes = [2]                      # one task learned: frozen from 1 on, stored
    serve(cache, method, [0, 1])
    method.scale, method.since, method.task_sizes = 10.0, 2, [2, 2]  # the path changed in task 2
    assert serve(cache, method, [0, 1]).squeeze(1).tolist() == [1.0, 21.0]
    assert method.computed == 4 and cache.served == 0


def test_nothing_is_kept_before_the_computation_is_frozen():
    cache, method = EvalCache(capacity=4), Counting(since=2)
    serve(cache, method, [0, 1])                 # one task learned, frozen only from two on
    serve(cache, method, [0, 1])
    assert method.computed == 4 and cache.nbytes == 0


def test_over_budget_recomputes_instead_of_failing():
    cache, method = EvalCache(capacity=1000, budget_bytes=100), Counting(since=0)
    first = serve(cache, method, [0, 1])
    assert torch.equal(serve(cache, method, [0, 1]), first)
    assert cache.nbytes == 0 and method.computed == 4 and cache.refused == {"double"}


# -- every method: identical predictions, equal logits -----------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_cached_evaluation_is_exact(name):
    method = build(METHODS.get(name), {})
    tasks, tests = make_tasks(3, 2, per_class=8, batch_size=8)
    cache = EvalCache(sum(len(test) for test in tests))
    for index, task in enumerate(tasks):
        learn(method, task)
        loader = DataLoader(ConcatDataset(tests[: index + 1]), batch_size=5)  # batches straddle the tasks
        plain = evaluate(method, loader, torch.device("cpu"))
        with torch.inference_mode():
            logits = {}
            for mode in (None, cache):
                batches, offset = [], 0
                for images, labels in loader:
                    ids = torch.arange(offset, offset + len(labels))
                    offset += len(labels)
                    if mode is None:
                        batches.append(method.predict(images))
                    else:
                        with mode.serving(method, ids):
                            batches.append(method.predict(images))
                logits[mode is None] = torch.cat(batches)
        assert torch.allclose(logits[True], logits[False], atol=1e-5, rtol=0)
        cached = evaluate(method, loader, torch.device("cpu"), cache=cache)
        assert np.array_equal(cached.top5, plain.top5) and np.array_equal(cached.labels, plain.labels)
    assert len(cache.values) == CACHED.get(name, 0)
    assert (cache.served > 0) == (name in CACHED)


# -- through the runner ---------------------------------------------------------------------------------------
def predictions(results, bench_name: str, method: str) -> list[np.ndarray]:
    folder = results / bench_name / method / "seed1993" / "predictions"
    return [np.load(path)["top5"] for path in sorted(folder.glob("task*.npz"))]


def test_runs_with_and_without_the_cache_agree_on_a_fabricated_tree_at_t10(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, "imr", train_per_class=2, test_per_class=1)
    common = ["--bench", "imr_t10", "--backbone", "vit_tiny_random", "--data-root", data, "--quiet", "--workers", "0",
              "--set", "l2p.epochs=1", "--set", "l2p.batch_size=8"]
    assert bench("run", "--methods", "simplecil,l2p", "--results-dir", tmp_path / "on", *common) == 0
    assert bench("run", "--methods", "simplecil,l2p", "--results-dir", tmp_path / "off", "--no-eval-cache",
                 *common) == 0
    for method in ("simplecil", "l2p"):
        on, off = predictions(tmp_path / "on", "imr_t10", method), predictions(tmp_path / "off", "imr_t10", method)
        assert len(on) == 10 and all(np.array_equal(a, b) for a, b in zip(on, off))
    timing = json.loads((tmp_path / "on" / "imr_t10" / "simplecil" / "seed1993" / "timing.json").read_text())
    assert timing[-1]["eval_cache_mb"] > 0
    config = json.loads((tmp_path / "off" / "imr_t10" / "simplecil" / "seed1993" / "config.json").read_text())
    assert config["eval_cache"] is False


def test_resumed_cached_run_gives_identical_metrics(tmp_path):
    common = ["--methods", "ease", "--bench", "digits_t5", "--quiet", "--workers", "0", "--set", "ease.epochs=1"]
    assert bench("run", "--results-dir", tmp_path / "whole", *common) == 0
    assert bench("run", "--results-dir", tmp_path / "resumed", "--max-tasks", "2", *common) == 0
    assert bench("run", "--results-dir", tmp_path / "resumed", *common) == 0  # a new process-level cache
    read = [json.loads((tmp_path / kind / "digits_t5" / "ease" / "seed1993" / "metrics.json").read_text())
            for kind in ("whole", "resumed")]
    assert read[0]["acc_matrix"] == read[1]["acc_matrix"] and read[0]["avg_acc"] == read[1]["avg_acc"]
