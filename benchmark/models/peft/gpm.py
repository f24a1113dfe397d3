"""Input second moments of LoRA-wrapped qkv projections, and the DualGPM memory of the old tasks' input space.

Used by InfLoRA (``inflora_olora.md`` §2.2-2.3): before a task, the new down-projection is designed from the
second-moment matrix C of the qkv inputs projected against the memory; after it, the memory grows from C.

Energy convention, copied from the official InfLoRA code: the memory update takes the singular values S of the
second-moment matrix C (not of the raw inputs) and compares ratios of S², i.e. σ⁴ of the inputs. It therefore
keeps fewer directions for a threshold than GPM/DualGPM on raw representations.

Each layer's memory is one of
- "remove": an orthonormal basis M (dim x k) of the old tasks' input space;
- "retain": an orthonormal basis M⊥ of the space left free (used once the old space exceeds dim / 2).
All linear algebra runs in float32 on the CPU (as the official code does), whatever device the model is on and
whatever the autocast precision of the surrounding passes (autocast is switched off around it).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from benchmark.models.peft.lora import LoRAQKV
from benchmark.precision import full_precision

EMPTY, REMOVE, RETAIN = 0, 1, 2


@torch.inference_mode()
def input_moments(layers: Sequence[LoRAQKV], forward: Callable[[torch.Tensor], object], loader: Iterable,
                  device: torch.device) -> list[torch.Tensor]:
    """Per layer, C = mean of x xᵀ over every token of every image of ``loader``, x the qkv input (float32).

    One pass of ``forward`` over the loader; forward pre-hooks on the wrappers accumulate xᵀx per batch.
    """
    dim = layers[0].dim
    sums = [torch.zeros(dim, dim, device=device, dtype=torch.float32) for _ in layers]
    tokens = [0]

    def hook_for(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, dim).float()
            with full_precision():
                sums[index].addmm_(x.T, x)
            if index == 0:
                tokens[0] += x.shape[0]
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(index)) for index, layer in enumerate(layers)]
    try:
        for images, _ in loader:
            forward(images.to(device, non_blocking=True))
    finally:
        for handle in handles:
            handle.remove()
    return [total / max(tokens[0], 1) for total in sums]


def gpm_threshold(task_index: int, num_tasks: int, lamb: float, lame: float = 1.0) -> float:
    """The energy threshold after task t (0-based) of T: ε_t = λ_b + (λ_e − λ_b)·t/T."""
    return lamb + (lame - lamb) * task_index / num_tasks


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run small dense CPU factorizations on one thread (multi-threaded LAPACK stalls on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _energy(matrix: torch.Tensor) -> torch.Tensor:
    """E(X) = Σ S(X)² = ‖X‖_F²."""
    return matrix.pow(2).sum()


def _first_basis(moment: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    u, s, _ = torch.linalg.svd(moment)
    energy = s.pow(2)
    k = max(int((energy.cumsum(0) / energy.sum() < threshold).sum()), 1)
    if k < moment.shape[0] / 2:
        return u[:, :k], REMOVE
    # The official code would store U[:, :k] here and then fail its final assertion (never reached with the
    # published thresholds); we store what a "retain" memory means: the free space.
    return u[:, k:], RETAIN


def _grow_removed(basis: torch.Tensor, moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """Add the leading directions of C − MMᵀC until the covered energy fraction reaches the threshold."""
    total = _energy(moment)
    residual = moment - basis @ (basis.T @ moment)
    u, s, _ = torch.linalg.svd(residual)
    covered = (total - s.pow(2).sum()) / total
    ratios = s.pow(2) / total
    before = ratios.cumsum(0) - ratios  # energy added before direction i
    r = int((covered + before < threshold).sum())
    if r == 0:
        return basis
    return torch.cat([basis, u[:, :r]], dim=1)[:, : moment.shape[0]]


def _shrink_free(free: torch.Tensor, moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """Remove from M⊥ the leading directions of M⊥M⊥ᵀC while the free energy stays >= 1 − threshold."""
    total = _energy(moment)
    inside = free @ (free.T @ moment)
    u, s, _ = torch.linalg.svd(inside)
    remaining = _energy(inside) / total
    ratios = s.pow(2) / total
    before = ratios.cumsum(0) - ratios
    r = int((remaining - before >= 1 - threshold).sum())
    if r == 0:
        return free
    leading = u[:, :r]
    u_free, _, _ = torch.linalg.svd(free - leading @ (leading.T @ free))
    return u_free[:, : free.shape[1] - r]


class DualGPM(nn.Module):
    """Per-layer DualGPM memory (InfLoRA's ``update_DualGPM``), with bases stored as shape-free buffers.

    The bases are data-dependent: a fresh memory loads bases of any shape from a state dict.
    """

    def __init__(self, num_layers: int, dim: int) -> None:
        super().__init__()
        self.num_layers, self.dim = num_layers, dim
        for layer in range(num_layers):
            self.register_buffer(f"basis_{layer}", torch.zeros(dim, 0))
        self.register_buffer("kind", torch.full((num_layers,), EMPTY, dtype=torch.int8))

    def basis(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s orthonormal basis (dim x k): the old space ("remove") or the free space ("retain")."""
        return getattr(self, f"basis_{layer}")

    def memory_dims(self) -> list[int]:
        """Dimension of the old tasks' input space per layer."""
        dims = []
        for layer in range(self.num_layers):
            width = self.basis(layer).shape[1]
            dims.append(self.dim - width if int(self.kind[layer]) == RETAIN else width)
        return dims

    def project(self, layer: int, moment: torch.Tensor) -> torch.Tensor:
        """Ĉ: C before any memory, C − MMᵀC for a "remove" layer, M⊥M⊥ᵀC for a "retain" layer (float32, CPU)."""
        moment = moment.detach().float().cpu()
        kind = int(self.kind[layer])
        if kind == EMPTY:
            return moment
        basis = self.basis(layer).cpu().float()
        with full_precision():
            projected = basis @ (basis.T @ moment)
        return moment - projected if kind == REMOVE else projected

    @torch.no_grad()
    def update(self, moments: Sequence[torch.Tensor], threshold: float) -> None:
        """DualGPM update of every layer from its second-moment matrix C with energy threshold ``threshold``."""
        for layer, moment in enumerate(moments):
            moment = moment.detach().float().cpu()
            basis, kind = self.basis(layer).cpu(), int(self.kind[layer])
            with single_threaded(), full_precision():
                if kind == EMPTY:
                    basis, kind = _first_basis(moment, threshold)
                elif kind == REMOVE:
                    basis = _grow_removed(basis, moment, threshold)
                else:
                    basis = _shrink_free(basis, moment, threshold)
                if kind == REMOVE and basis.shape[1] > self.dim / 2:
                    u, _, _ = torch.linalg.svd(basis, full_matrices=True)
                    basis, kind = u[:, basis.shape[1]:], RETAIN
            setattr(self, f"basis_{layer}", basis.contiguous().to(self.kind.device))
            self.kind[layer] = kind

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for layer in range(self.num_layers):
            key = f"{prefix}basis_{layer}"
            if key in state_dict:
                setattr(self, f"basis_{layer}", torch.zeros_like(state_dict[key], device=self.kind.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
