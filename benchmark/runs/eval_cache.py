"""The evaluation cache: per-image computations that a method declares frozen are computed once and kept.

The protocol evaluates after every task on every test image seen so far, so a T-task run evaluates the first
task's images T times. A method routes a frozen computation through :meth:`benchmark.method.Method.frozen` (or
``frozen_stack`` for several at once, e.g. EASE's adapter sets), naming it and saying from how many learned tasks
on it no longer changes (``since``: 0 for a frozen pretrained pass, 1 for adapters tuned on the first task, k + 1
for EASE's set k). During evaluation the runner attaches an :class:`EvalCache` for each batch
(:meth:`EvalCache.serving`), giving each image its stable identity: its position in the stream's evaluation set
(a prefix of the same order after every task).

- An entry is stored only once its computation is frozen (``tasks learned >= since``) and records the task count
  it was computed at; it is served only while that count is ``>= since`` of the declaration that asks for it, so a
  method that declares a later ``since`` (its path changed) gets fresh values, never stale ones.
- Values live in float32 on the CPU (served back on the batch's device, in the dtype computed); a buffer of the
  whole evaluation set is allocated per computation when it fits ``budget_bytes``, else that computation is
  recomputed every time (never an error).
- Only the images missing an entry are computed, grouped by which computations they miss (EASE: the old images
  need only the newest adapter set, new images all sets), so a batch is one pass when nothing is cached.
- Never persisted: a resumed run starts with an empty cache (``--no-eval-cache`` turns it off).
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator, Sequence

import torch

from benchmark.method import Method

DEFAULT_BUDGET_BYTES = 4 * 2**30
"""What the cache may hold (EASE at imr_t40, ViT-B/16: 40 sets x 6,000 images x 768 floats = 737 MB)."""

StackCompute = Callable[[torch.Tensor, list[int]], torch.Tensor]


class EvalCache:
    """Frozen per-image values of one run's evaluations, keyed by computation name and image identity."""

    def __init__(self, capacity: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        """``capacity``: the size of the last (largest) evaluation set; image ids are ``0 .. capacity - 1``."""
        self.capacity, self.budget_bytes = capacity, budget_bytes
        self.values: dict[str, torch.Tensor] = {}
        self.computed_at: dict[str, torch.Tensor] = {}
        self.refused: set[str] = set()
        self.served = self.computed = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached values."""
        return sum(value.numel() * value.element_size() for value in self.values.values())

    @contextlib.contextmanager
    def serving(self, method: Method, ids: torch.Tensor) -> Iterator[None]:
        """Serve ``method``'s frozen computations for the batch of images ``ids`` (positions in the evaluation
        set) while the block runs."""
        method.frozen_work = functools.partial(self.lookup, ids=ids, tasks_learned=len(method.task_sizes))
        try:
            yield
        finally:
            method.frozen_work = None

    def lookup(self, names: Sequence[str], since: Sequence[int], images: torch.Tensor, compute: StackCompute, *,
               ids: torch.Tensor, tasks_learned: int) -> torch.Tensor:
        """(S, B, ...) values of the computations ``names`` for ``images``: cached where valid, the rest from
        ``compute(images[subset], name_indices)`` (which returns (len(name_indices), len(subset), ...))."""
        valid = torch.zeros(len(names), len(ids), dtype=torch.bool)
        for row, (name, frozen_from) in enumerate(zip(names, since)):
            if name in self.computed_at and tasks_learned >= frozen_from:
                valid[row] = self.computed_at[name][ids] >= frozen_from
        patterns, group = torch.unique(~valid.T, dim=0, return_inverse=True)
        computed = []
        for index, pattern in enumerate(patterns):
            if pattern.any():
                columns = (group == index).nonzero().squeeze(1)
                rows = pattern.nonzero().squeeze(1).tolist()
                computed.append((rows, columns, compute(images[columns.to(images.device)], rows)))
        if computed:
            sample = computed[0][2]
            shape, dtype = sample.shape[2:], sample.dtype
        else:
            shape, dtype = self.values[names[0]].shape[1:], self.values[names[0]].dtype
        result = torch.empty(len(names), len(ids), *shape, dtype=dtype, device=images.device)
        for row, name in enumerate(names):
            if valid[row].any():
                hits = valid[row].nonzero().squeeze(1)
                result[row, hits.to(images.device)] = self.values[name][ids[hits]].to(images.device, dtype)
                self.served += len(hits)
        for rows, columns, values in computed:
            result[torch.tensor(rows, device=images.device)[:, None], columns.to(images.device)[None, :]] = values
            self.computed += len(rows) * len(columns)
            for position, row in enumerate(rows):
                if tasks_learned >= since[row]:
                    self._store(names[row], ids[columns], values[position], tasks_learned)
        return result

    def _store(self, name: str, ids: torch.Tensor, values: torch.Tensor, tasks_learned: int) -> None:
        if name not in self.values:
            if name in self.refused:
                return
            need = self.capacity * math.prod(values.shape[1:]) * 4
            if self.nbytes + need > self.budget_bytes:
                self.refused.add(name)  # does not fit: recomputed every time
                return
            self.values[name] = torch.zeros(self.capacity, *values.shape[1:], dtype=torch.float32)
            self.computed_at[name] = torch.full((self.capacity,), -1, dtype=torch.int64)
        self.values[name][ids] = values.detach().float().cpu()
        self.computed_at[name][ids] = tasks_learned
