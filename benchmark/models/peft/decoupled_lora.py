"""Decoupled LoRA: per-task low-rank *directions* with learnable *magnitudes* shared across layers (SD-LoRA).

Spec: ``../shared/specs/more_baselines.md`` §1 and §4.2. Every wrapped projection holds one
:class:`~benchmark.models.peft.lora.LoRABranch` per component (task) i, with down A_i (r_i x dim) and up B_i (dim x r_i)
per targeted slot m, and adds to slot m

    sum_{i < K-1} (alpha_i + o_i^m) * B_i^m A_i^m x / n_i^m  +  (alpha_{K-1} + o_{K-1}^m) * B_{K-1}^m A_{K-1}^m x

- ``alpha`` is one learnable scalar per component, held by a single :class:`Magnitudes` module that every wrapper
  reads (so one alpha_i receives the gradient of every block and slot);
- ``n_i^m`` normalises the frozen (older) components: ``factors`` = ||B_i^m||_F * ||A_i^m||_F (the official code),
  ``product`` = ||B_i^m A_i^m||_F; the newest component (the task being trained) is not normalised;
- ``o_i^m`` are fixed magnitude offsets per wrapper and slot (zero unless :meth:`DecoupledLoRAQKV.absorb_newest`
  folded a new direction into older ones, SD-LoRA-KD); a component whose norm is zero contributes nothing.

All components of a wrapper are evaluated in one low-rank product (downs stacked by rows, ups by columns, one
factor per rank column), so a forward costs one pass whatever the number of tasks.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from benchmark.models.peft.lora import SLOTS, LoRABranch, LoRAQKV

DirectionNorm = Literal["factors", "product"]


class Magnitudes(nn.Module):
    """One learnable magnitude per component, shared by every :class:`DecoupledLoRAQKV` that reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.zeros(0))

    def __len__(self) -> int:
        return self.values.numel()

    @torch.no_grad()
    def reset(self, count: int, value: float, carry: bool = False) -> None:
        """A new trainable vector of ``count`` magnitudes, all ``value``; with ``carry`` the existing ones keep
        their values (only the new entries start at ``value``)."""
        values = torch.full((count,), float(value), device=self.values.device, dtype=self.values.dtype)
        if carry:
            kept = min(count, len(self))
            values[:kept] = self.values[:kept]
        self.values = nn.Parameter(values)


def _segment_sum(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """Sum the last axis of ``values`` (..., R) into ``count`` groups given per column by ``segments`` (R,)."""
    out = values.new_zeros(*values.shape[:-1], count)
    return out.index_add_(-1, segments, values)


class DecoupledLoRAQKV(LoRAQKV):
    """timm's fused qkv plus a sum of decoupled LoRA components (see the module docstring).

    Every component is summed (``active``/``per_chunk`` of :class:`LoRAQKV` are not supported, nor are
    ``merge_branch``/``stack_branches``); all components target the same slots.
    """

    def __init__(self, qkv: nn.Linear, magnitudes: Magnitudes, direction_norm: DirectionNorm = "factors") -> None:
        super().__init__(qkv)
        if direction_norm not in ("factors", "product"):
            raise ValueError(f"unknown direction_norm '{direction_norm}' (factors, product)")
        self._shared = (magnitudes,)  # a tuple: the method owns and registers the magnitudes once
        self.direction_norm = direction_norm
        self._segments: tuple[tuple[int, ...], torch.Tensor] | None = None
        self.register_buffer("offsets", torch.zeros(0, 0))
        """(K, M) fixed magnitude offsets of this wrapper per component and targeted slot (SD-LoRA-KD)."""

    @property
    def magnitudes(self) -> Magnitudes:
        """The shared magnitudes (component i reads ``magnitudes.values[i]``)."""
        return self._shared[0]

    @property
    def targets(self) -> tuple[str, ...]:
        """The slots every component targets."""
        return self.branches[0].targets if len(self.branches) else ()

    def add_branch(self, rank: int, targets: Sequence[str] = ("q", "v"), down_init: str = "kaiming_uniform",
                   generator: torch.Generator | None = None, scale: torch.Tensor | None = None) -> LoRABranch:
        """Append a new (newest) component; its magnitude offsets start at zero."""
        if scale is not None:
            raise ValueError("decoupled components take their scale from the shared magnitudes")
        branch = super().add_branch(rank, targets, down_init, generator)
        if len(self.branches) > 1 and branch.targets != self.branches[0].targets:
            del self.branches[-1]
            raise ValueError("every decoupled component must target the same slots")
        row = self.offsets.new_zeros(1, len(branch.targets))
        self.offsets = torch.cat([self.offsets.reshape(-1, len(branch.targets)), row])
        return branch

    # -- the stacked low-rank form -------------------------------------------------------------------
    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Downs (M, R, dim), ups (M, dim, R) of all components, and the component of each rank column (R,)."""
        downs = torch.cat([b.down for b in self.branches], dim=1)
        ups = torch.cat([b.up for b in self.branches], dim=2)
        ranks = tuple(b.rank for b in self.branches)
        if self._segments is None or self._segments[0] != ranks or self._segments[1].device != downs.device:
            # cached: building it on the device every forward would synchronise with the host
            segments = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))
            self._segments = (ranks, segments.to(downs.device))
        return downs, ups, self._segments[1]

    @torch.no_grad()
    def direction_norms(self, stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """n_i^m for every component, shape (K, M) (constants: no gradient flows through them); ``stacked`` is
        :meth:`_stacked`'s result when the caller has it."""
        downs, ups, segments = self._stacked() if stacked is None else stacked
        count = len(self.branches)
        if self.direction_norm == "factors":
            down_sq = _segment_sum(downs.pow(2).sum(-1), segments, count)        # (M, K)
            up_sq = _segment_sum(ups.pow(2).sum(-2), segments, count)            # (M, K)
            return (down_sq.sqrt() * up_sq.sqrt()).T
        return self.direction_grams(downs, ups, segments, count).diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().T

    @staticmethod
    def direction_grams(downs: torch.Tensor, ups: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
        """Frobenius inner products <B_i A_i, B_j A_j> per slot, shape (M, K, K), from the low-rank factors:
        tr(A_i^T B_i^T B_j A_j) = sum((B_i^T B_j) * (A_i A_j^T))."""
        products = torch.einsum("mdr,mds->mrs", ups, ups) * torch.einsum("mrd,msd->mrs", downs, downs)
        rows = _segment_sum(products.transpose(-1, -2), segments, count)         # (M, R, K): summed over s
        return _segment_sum(rows.transpose(-1, -2), segments, count)            # (M, K, K)

    def component_factors(self, stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                          ) -> torch.Tensor:
        """The factor of each component and slot, shape (K, M): (alpha_i + o_i) / n_i for older components
        (0 where n_i = 0), alpha + o for the newest one. Differentiable in the magnitudes."""
        count = len(self.branches)
        if len(self.magnitudes) < count:
            raise ValueError(f"{count} components but only {len(self.magnitudes)} magnitudes")
        scales = self.magnitudes.values[:count, None] + self.offsets                # (K, M)
        norms = self.direction_norms(stacked)
        norms[-1] = 1.0                                                             # the newest: not normalised
        valid = norms > 0
        # where() on a safe denominator: no inf/NaN gradient from components whose norm is zero
        return torch.where(valid, scales / torch.where(valid, norms, torch.ones_like(norms)),
                           torch.zeros_like(scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        if not len(self.branches):
            return out
        if self.active is not None or self.per_chunk is not None:
            raise ValueError("a decoupled LoRA wrapper always sums every component")
        if self.dropout:
            raise ValueError("a decoupled LoRA wrapper has no dropout (SD-LoRA uses none)")
        downs, ups, segments = stacked = self._stacked()
        columns = self.component_factors(stacked).T[:, segments]                           # (M, R)
        hidden = torch.einsum("...d,mrd->...mr", x, downs) * columns
        delta = torch.einsum("...mr,mdr->...md", hidden, ups)
        for m, slot in enumerate(self.targets):
            start = SLOTS.index(slot) * self.dim
            out[..., start:start + self.dim] += delta[..., m, :]
        return out

    # -- SD-LoRA-KD ------------------------------------------------------------------------------------
    @torch.no_grad()
    def absorb_newest(self, threshold: float) -> list[bool]:
        """Per slot: fit the newest normalised direction D_K by the older ones, D_K ~ sum_i c_i D_i (least squares
        over the flattened matrices, D_i = B_i A_i / n_i, zero components left out); when the residual sum of
        squares is below ``threshold``, add c_i to the offsets o_i of this slot and zero the newest component's
        matrices of this slot. Returns, per targeted slot, whether it was absorbed.
        """
        if len(self.branches) < 2:
            return [False] * len(self.targets)
        downs, ups, segments = self._stacked()
        grams = self.direction_grams(downs.double(), ups.double(), segments, len(self.branches))    # (M, K, K)
        norms = grams.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt() if self.direction_norm == "product" \
            else self.direction_norms().T.double()                                # (M, K)
        newest = self.branches[-1]
        absorbed = []
        for m in range(len(self.targets)):
            valid = norms[m] > 0
            old = valid[:-1].nonzero().flatten()
            if not bool(valid[-1]) or old.numel() == 0:
                absorbed.append(False)
                continue
            unit = grams[m] / torch.outer(torch.where(valid, norms[m], 1.0), torch.where(valid, norms[m], 1.0))
            gram_old = unit[old][:, old]
            cross = unit[old, -1]
            coefficients = torch.linalg.pinv(gram_old, hermitian=True) @ cross
            residual = float(unit[-1, -1] - 2 * coefficients @ cross + coefficients @ gram_old @ coefficients)
            if residual < threshold:
                self.offsets[old, m] += coefficients.to(self.offsets.dtype)
                newest.down[m].zero_()
                newest.up[m].zero_()
                absorbed.append(True)
            else:
                absorbed.append(False)
        return absorbed


def attach_decoupled_lora(vit: nn.Module, magnitudes: Magnitudes, direction_norm: DirectionNorm = "factors",
                          block_indices: Sequence[int] | None = None) -> list[DecoupledLoRAQKV]:
    """Wrap ``vit.blocks[i].attn.qkv`` (all blocks by default) in :class:`DecoupledLoRAQKV` sharing
    ``magnitudes``; returns the wrappers."""
    indices = range(len(vit.blocks)) if block_indices is None else block_indices
    wrappers = []
    for index in indices:
        attn = vit.blocks[index].attn
        if not isinstance(attn.qkv, DecoupledLoRAQKV):
            if isinstance(attn.qkv, LoRAQKV):
                raise ValueError(f"block {index} already has a (non-decoupled) LoRA wrapper")
            attn.qkv = DecoupledLoRAQKV(attn.qkv, magnitudes, direction_norm)
        wrappers.append(attn.qkv)
    return wrappers
