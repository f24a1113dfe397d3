"""LoRA branches attached to timm's fused ``attn.qkv`` projection.

timm's ``Attention`` computes ``qkv = attn.qkv(x)`` with output ``[q | k | v]`` (each ``dim`` wide).
:func:`attach_lora` replaces ``blocks[i].attn.qkv`` by a :class:`LoRAQKV` that adds, for each active
:class:`LoRABranch`, ``scale[m] * up_m @ down_m @ x`` to slot ``m`` in {q, k, v}. This is the same function as
separate q/k/v linears with LoRA (what the official CL-LoRA, InfLoRA and O-LoRA code builds).

Naming follows the CL-LoRA paper: ``down`` (r x dim, "B") and ``up`` (dim x r, "A"); delta = up @ down @ x.

Which branches act is set on the wrapper (not on the ViT), so any timm ViT depth works:
- ``active = None``: every branch is summed (InfLoRA, O-LoRA);
- ``active = [i, ...]``: only those branches (CL-LoRA: the current task-specific adapter);
- ``per_chunk = [i0, i1, ...]``: the batch is K equal chunks and chunk k uses branch ``per_chunk[k]``
  (evaluating several task adapters in one pass).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from timm.utils import ModelEmaV2
from torch import nn

from benchmark.precision import full_precision

SLOTS = ("q", "k", "v")


# -- initialisations of the down-projection --------------------------------------------------------------
def qr_uniform_init(rank: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official CL-LoRA init: reduced QR of a U[0,1) (dim x rank) matrix, down = Q^T (orthonormal rows)."""
    matrix = torch.rand(dim, rank, generator=generator)
    q, _ = torch.linalg.qr(matrix, mode="reduced")
    return q.T.contiguous()


def gaussian_svd_init(rank: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The CL-LoRA paper's Eq. 7: M ~ N(0,1)^{r x dim}, SVD M = U S V^T, down = U V_r^T."""
    matrix = torch.randn(rank, dim, generator=generator)
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u @ vh).contiguous()


def kaiming_uniform_init(rank: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """nn.Linear's default init (kaiming uniform, a = sqrt(5)): bound 1/sqrt(dim), as HF PEFT's lora_A."""
    bound = 1.0 / math.sqrt(dim)
    return (torch.rand(rank, dim, generator=generator) * 2 - 1) * bound


def zeros_init(rank: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """All zeros (a down-projection that a method designs itself before training)."""
    return torch.zeros(rank, dim)


DOWN_INITS: dict[str, Callable[..., torch.Tensor]] = {
    "qr_uniform": qr_uniform_init,
    "gaussian_svd": gaussian_svd_init,
    "kaiming_uniform": kaiming_uniform_init,
    "zeros": zeros_init,
}


class LoRABranch(nn.Module):
    """One low-rank update per targeted slot: ``down`` (M, r, dim), ``up`` (M, dim, r), M = len(targets).

    ``scale`` (a learnable parameter when given; ``None`` means 1) multiplies each slot's delta. Its shape says
    how it is read:
    - (M,): one factor per target, in slot order (LAE's learnable k and v scalars: 2 per block, no q entry);
    - (3,): indexed by slot (q, k, v) whatever the targets (CL-LoRA's block weights, untargeted entries inert);
    - (1,): one factor shared by every slot (the CL-LoRA paper's one weight per block).
    For M = 1 or M = 3 the readings coincide. Untargeted slots get no delta.
    """

    def __init__(self, dim: int, rank: int, targets: Sequence[str] = ("q", "v"), down_init: str = "qr_uniform",
                 generator: torch.Generator | None = None, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        unknown = [t for t in targets if t not in SLOTS]
        if unknown or not targets or len(set(targets)) != len(targets):
            raise ValueError(f"LoRA targets must be distinct slots from {SLOTS}, got {targets}")
        self.dim, self.rank = dim, rank
        self.targets = tuple(sorted(targets, key=SLOTS.index))
        init = DOWN_INITS[down_init]
        with full_precision():  # QR/SVD inits in float32 even when a task trains under autocast
            self.down = nn.Parameter(torch.stack([init(rank, dim, generator) for _ in self.targets]))
        self.up = nn.Parameter(torch.zeros(len(self.targets), dim, rank))
        if scale is not None and (scale.ndim != 1 or scale.numel() not in (1, 3, len(self.targets))):
            raise ValueError(f"LoRA scale must have shape (1,), (3,) or ({len(self.targets)},) for targets "
                             f"{self.targets}, got {tuple(scale.shape)}")
        self.scale = nn.Parameter(scale) if isinstance(scale, torch.Tensor) else scale

    def target_scales(self) -> torch.Tensor | None:
        """The factor of each target, shape (M,) (or (1,) when shared by every slot); ``None`` without scale."""
        if self.scale is None or self.scale.numel() in (1, len(self.targets)):
            return self.scale
        return self.scale[[SLOTS.index(t) for t in self.targets]]

    def slot_deltas(self, x: torch.Tensor, per_slot: bool = False) -> torch.Tensor:
        """Per-target deltas, shape (..., M, dim), scales applied.

        ``per_slot``: ``x`` holds one input per qkv slot, shape (..., 3, dim) (e.g. independently dropped out);
        each target reads its own slot's input.
        """
        if per_slot:
            x = x[..., [SLOTS.index(t) for t in self.targets], :]
            hidden = torch.einsum("...md,mrd->...mr", x, self.down)
        else:
            hidden = torch.einsum("...d,mrd->...mr", x, self.down)
        delta = torch.einsum("...mr,mdr->...md", hidden, self.up)
        scale = self.target_scales()
        if scale is not None:
            delta = delta * scale.unsqueeze(-1)
        return delta

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The full qkv-shaped delta, shape (..., 3 * dim)."""
        deltas = self.slot_deltas(x)
        parts = []
        for slot in SLOTS:
            if slot in self.targets:
                parts.append(deltas[..., self.targets.index(slot), :])
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.dim))
        return torch.cat(parts, dim=-1)

    def add_delta_(self, out: torch.Tensor, x: torch.Tensor, per_slot: bool = False) -> None:
        """Add this branch's delta to ``out`` (..., 3 * dim) in place, only into the targeted slots.

        The same numbers as ``out + self.delta(x)`` without building and adding the zero slots; ``per_slot`` as
        in :meth:`slot_deltas`.
        """
        deltas = self.slot_deltas(x, per_slot)
        for m, slot in enumerate(self.targets):
            start = SLOTS.index(slot) * self.dim
            out[..., start:start + self.dim] += deltas[..., m, :]

    def weight_delta(self) -> torch.Tensor:
        """The (3*dim, dim) matrix this branch adds to the qkv weight (for merging frozen branches)."""
        full = self.down.new_zeros(3 * self.dim, self.dim)
        scale = self.target_scales()
        for m, slot in enumerate(self.targets):
            matrix = self.up[m] @ self.down[m]
            if scale is not None:
                matrix = matrix * scale[m if scale.numel() > 1 else 0]
            row = SLOTS.index(slot) * self.dim
            full[row:row + self.dim] = matrix
        return full


class LoRAQKV(nn.Module):
    """timm's fused qkv ``nn.Linear`` plus a list of :class:`LoRABranch` (see the module docstring)."""

    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        self.qkv = qkv
        self.branches = nn.ModuleList()
        self.active: list[int] | None = None
        self.per_chunk: list[int] | None = None
        self.dropout = 0.0
        """Dropout on the branches' input in training mode (O-LoRA): one mask per qkv slot, as the official code
        has one dropout module per adapted linear (q and v draw independent masks), shared by every branch of
        that slot (old and new branches see the same dropped-out input)."""

    @property
    def dim(self) -> int:
        """Model width (input size of the projection)."""
        return self.qkv.in_features

    def add_branch(self, rank: int, targets: Sequence[str] = ("q", "v"), down_init: str = "qr_uniform",
                   generator: torch.Generator | None = None, scale: torch.Tensor | None = None) -> LoRABranch:
        """Append a new branch (on the projection's device and dtype) and return it."""
        branch = LoRABranch(self.dim, rank, targets, down_init, generator, scale)
        branch.to(device=self.qkv.weight.device, dtype=self.qkv.weight.dtype)
        self.branches.append(branch)
        return branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        per_slot = bool(self.dropout) and self.training
        if per_slot:
            x = nn.functional.dropout(x.unsqueeze(-2).expand(*x.shape[:-1], len(SLOTS), x.shape[-1]),
                                      self.dropout, training=True)
        if self.per_chunk is not None:
            chunks = zip(self.per_chunk, x.chunk(len(self.per_chunk), dim=0), out.chunk(len(self.per_chunk), dim=0))
            for index, x_chunk, out_chunk in chunks:
                self.branches[index].add_delta_(out_chunk, x_chunk, per_slot)
            return out
        indices = range(len(self.branches)) if self.active is None else self.active
        for index in indices:
            self.branches[index].add_delta_(out, x, per_slot)
        return out

    @torch.no_grad()
    def merge_branch(self, index: int) -> None:
        """Fold branch ``index`` into the frozen qkv weight and remove it (outputs unchanged up to rounding).

        Only for frozen branches of methods that sum all branches (``active is None``).
        """
        branch = self.branches[index]
        self.qkv.weight += branch.weight_delta().to(self.qkv.weight.dtype)
        del self.branches[index]

    @torch.no_grad()
    def stack_branches(self, indices: Sequence[int]) -> LoRABranch:
        """Replace branches ``indices`` (same targets and scale) by one frozen branch computing their sum.

        Downs are stacked by rows and ups by columns (rank = sum of ranks), so outputs are unchanged while
        every down-projection stays available (O-LoRA's saver keeps old adapters this way). The stacked branch
        takes the place of the lowest index. Only for methods that sum all branches (``active is None``).
        """
        parts = [self.branches[index] for index in indices]
        first = parts[0]
        if any(p.targets != first.targets or (p.scale is None) != (first.scale is None) or
               (p.scale is not None and not torch.equal(p.scale, first.scale)) for p in parts):
            raise ValueError("only branches with the same targets and scale can be stacked")
        scale = None if first.scale is None else first.scale.detach().clone()
        stacked = LoRABranch(self.dim, sum(p.rank for p in parts), first.targets, "zeros", scale=scale)
        stacked.to(device=first.down.device, dtype=first.down.dtype)
        stacked.down.copy_(torch.cat([p.down for p in parts], dim=1))
        stacked.up.copy_(torch.cat([p.up for p in parts], dim=2))
        stacked.requires_grad_(False)
        position = min(indices)
        for index in sorted(indices, reverse=True):
            del self.branches[index]
        self.branches.insert(position, stacked)
        return stacked


def attach_lora(vit: nn.Module, block_indices: Sequence[int] | None = None) -> list[LoRAQKV]:
    """Wrap ``vit.blocks[i].attn.qkv`` (all blocks by default) in :class:`LoRAQKV`; returns the wrappers.

    Wrapping twice returns the existing wrappers.
    """
    indices = range(len(vit.blocks)) if block_indices is None else block_indices
    wrappers = []
    for index in indices:
        attn = vit.blocks[index].attn
        if not isinstance(attn.qkv, LoRAQKV):
            attn.qkv = LoRAQKV(attn.qkv)
        wrappers.append(attn.qkv)
    return wrappers


class BranchEMA:
    """Offline copies of one branch per wrapper, kept as an exponential moving average of the online ones.

    LAE's offline PET: at creation, each wrapper gets a frozen exact copy of its branch ``source`` appended (so it
    can be selected with ``active``/``per_chunk`` like any branch, and is saved with the wrapper); :meth:`update`,
    called after every optimiser step, sets every copied tensor (down, up, scale) to
    ``decay * offline + (1 - decay) * online`` in place. The rule and its rounding are timm's ``ModelEmaV2``,
    which the official LAE code uses; this object only holds references (nothing of it is saved).
    """

    def __init__(self, wrappers: Sequence[LoRAQKV], source: int, decay: float) -> None:
        self.online = nn.ModuleList(wrapper.branches[source] for wrapper in wrappers)
        self._ema = ModelEmaV2(self.online, decay=decay)
        self._ema.module.requires_grad_(False)
        for wrapper, copy in zip(wrappers, self._ema.module):
            wrapper.branches.append(copy)
        self.index = len(wrappers[0].branches) - 1 if wrappers else 0
        """Position of the offline copies in every wrapper's ``branches``."""

    @property
    def decay(self) -> float:
        """The EMA decay."""
        return self._ema.decay

    @property
    def offline(self) -> list[LoRABranch]:
        """The offline copies, one per wrapper."""
        return list(self._ema.module)

    def update(self) -> None:
        """One EMA step of every offline tensor towards its online tensor."""
        self._ema.update(self.online)
