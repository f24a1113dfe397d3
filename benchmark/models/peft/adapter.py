"""AdaptFormer adapters parallel to the MLP of timm ViT blocks (APER, RanPAC, EASE).

Spec: ``../shared/specs/prompt_baselines.md`` §1.9, ``../shared/specs/more_baselines.md`` §2.2. With u the residual
stream after the attention sub-block (not layer-normed), an adapted block outputs

    u + MLP(LN2(u)) + s * (W_up @ drop_p(ReLU(W_down @ u + b_d)) + b_u),    s = 0.1, p = 0.1,

W_down kaiming-uniform (a = sqrt(5)), W_up, b_d, b_u zero, so a fresh adapter adds exactly nothing.

timm's ``Block.forward`` computes ``x + drop_path2(ls2(mlp(norm2(x))))``. :func:`attach_adapters` moves the
block's ``norm2`` into an :class:`AdaptedMLP` wrapper that replaces ``mlp`` (``norm2`` becomes ``nn.Identity``),
and the wrapper returns ``mlp(norm(u)) + adapter(u)``; timm's forward is not forked. Blocks with LayerScale or
drop path are refused: those would scale the adapter's output too.

A wrapper holds several adapter sets (``adapters[j]`` is set j of that block). Which set acts is chosen on
the wrappers, so any timm ViT depth works:
- ``active = None``: no adapter, exactly the pretrained block (APER's "pretrained branch");
- ``active = j``: adapter set j;
- ``per_chunk = [j0, j1, ...]``: the batch is K equal chunks and chunk k uses set ``per_chunk[k]`` (``None``:
  no adapter), to evaluate several sets (or adapters off and on) in one batched pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.models.peft.lora import kaiming_uniform_init


class Adapter(nn.Module):
    """One AdaptFormer bottleneck: ``scale * up(dropout(relu(down(u))))`` (``down``: dim -> r, ``up``: r -> dim).

    ``down.weight`` is kaiming-uniform (a = sqrt(5), bound 1/sqrt(dim)), drawn from ``generator`` when given;
    ``down.bias``, ``up.weight`` and ``up.bias`` start at zero, so a fresh adapter outputs zeros.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1, dropout: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if bottleneck < 1:
            raise ClbenchError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        # skip_init: nn.Linear's own init would draw from the global RNG
        self.down = nn.utils.skip_init(nn.Linear, dim, bottleneck)
        self.up = nn.utils.skip_init(nn.Linear, bottleneck, dim)
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            self.down.weight.copy_(kaiming_uniform_init(bottleneck, dim, generator))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(u)))) * self.scale


class AdaptedMLP(nn.Module):
    """A block's ``norm2`` + ``mlp`` plus adapter sets in parallel: ``mlp(norm(u)) + adapters[j](u)``.

    ``active`` (``int | None``) picks the set for the whole batch (``None``: adapters off, the pretrained
    block exactly); ``per_chunk`` (``list[int | None] | None``), when set, overrides it: the batch is split into
    ``len(per_chunk)`` equal chunks and chunk k uses set ``per_chunk[k]``.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, dim: int) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.dim = dim
        self.adapters = nn.ModuleList()
        self.active: int | None = None
        self.per_chunk: list[int | None] | None = None

    def add_adapter(self, bottleneck: int, scale: float = 0.1, dropout: float = 0.1,
                    generator: torch.Generator | None = None) -> Adapter:
        """Append a new adapter (on the MLP's device and dtype, in the wrapper's train/eval mode); return it."""
        adapter = Adapter(self.dim, bottleneck, scale, dropout, generator)
        reference = next(self.mlp.parameters())
        adapter.to(device=reference.device, dtype=reference.dtype)
        adapter.train(self.training)
        self.adapters.append(adapter)
        return adapter

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.norm(u))
        if self.per_chunk is not None:
            chunks = len(self.per_chunk)
            if u.shape[0] % chunks:
                raise ClbenchError(f"batch of {u.shape[0]} does not split into {chunks} equal adapter chunks")
            return torch.cat([o if index is None else o + self.adapters[index](x)
                              for index, x, o in zip(self.per_chunk, u.chunk(chunks), out.chunk(chunks))])
        if self.active is None:
            return out
        return out + self.adapters[self.active](u)


def attach_adapters(vit: nn.Module) -> list[AdaptedMLP]:
    """Wrap ``norm2`` + ``mlp`` of every block of a timm ViT in :class:`AdaptedMLP`; returns the wrappers.

    Idempotent: wrapping twice returns the existing wrappers. Refuses blocks with LayerScale or drop path on
    the MLP branch (they would scale the adapter) with a :class:`ClbenchError`.
    """
    wrappers = []
    for index, block in enumerate(vit.blocks):
        if not isinstance(block.mlp, AdaptedMLP):
            for name in ("ls2", "drop_path2"):
                if not isinstance(getattr(block, name, nn.Identity()), nn.Identity):
                    raise ClbenchError(f"block {index} has {name} on its MLP branch; AdaptFormer adapters "
                                       "need a ViT without LayerScale and drop path")
            if not hasattr(block, "norm2") or isinstance(block.norm2, nn.Identity):
                raise ClbenchError(f"block {index} has no norm2 to move into an adapter wrapper")
            block.mlp = AdaptedMLP(block.norm2, block.mlp, dim=block.norm2.normalized_shape[0]).train(block.training)
            block.norm2 = nn.Identity()
        wrappers.append(block.mlp)
    return wrappers


def add_adapter_set(wrappers: Sequence[AdaptedMLP], bottleneck: int, scale: float = 0.1, dropout: float = 0.1,
                    generator: torch.Generator | None = None) -> int:
    """Add one new adapter to every wrapper (one adapter set); returns the set's index.

    With ``generator`` the down-projections are drawn from it block by block, in block order.
    """
    sizes = {len(wrapper.adapters) for wrapper in wrappers}
    if len(sizes) != 1:
        raise ClbenchError(f"wrappers hold different numbers of adapter sets: {sorted(sizes)}")
    for wrapper in wrappers:
        wrapper.add_adapter(bottleneck, scale, dropout, generator)
    return sizes.pop()


def adapter_set_parameters(wrappers: Sequence[AdaptedMLP], index: int) -> list[nn.Parameter]:
    """The parameters of adapter set ``index`` over all wrappers (what a task's optimiser trains)."""
    return [parameter for wrapper in wrappers for parameter in wrapper.adapters[index].parameters()]


@contextmanager
def use_adapter_set(wrappers: Sequence[AdaptedMLP], index: int | None) -> Iterator[None]:
    """Within the block, every wrapper uses adapter set ``index`` (``None``: adapters off); restores after."""
    saved = [(wrapper.active, wrapper.per_chunk) for wrapper in wrappers]
    for wrapper in wrappers:
        wrapper.active, wrapper.per_chunk = index, None
    try:
        yield
    finally:
        for wrapper, (active, per_chunk) in zip(wrappers, saved):
            wrapper.active, wrapper.per_chunk = active, per_chunk


@contextmanager
def use_adapter_chunks(wrappers: Sequence[AdaptedMLP], indices: Sequence[int | None]) -> Iterator[None]:
    """Within the block, batch chunk k uses adapter set ``indices[k]`` (``None``: off); restores after."""
    saved = [(wrapper.active, wrapper.per_chunk) for wrapper in wrappers]
    for wrapper in wrappers:
        wrapper.per_chunk = list(indices)
    try:
        yield
    finally:
        for wrapper, (active, per_chunk) in zip(wrappers, saved):
            wrapper.active, wrapper.per_chunk = active, per_chunk
