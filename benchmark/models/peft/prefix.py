"""Prefix-tuning attention on timm's ``blocks[i].attn`` (DualPrompt, CODA-Prompt).

In a prompted block every head's keys and values get a prefix: K' = [P_k ; K], V' = [P_v ; V]. Queries, the
output length, the residual path and the MLP are unchanged, and the prefix gets no position embedding
(``prompt_baselines.md`` §1.6). :func:`attach_prefix` wraps ``blocks[i].attn`` in a :class:`PrefixAttention`
that keeps timm's fused qkv projection; which prefix a wrapper uses is set for one forward pass with
:func:`prefixes_set`, so the ViT itself is never forked and any depth works.

A prefix is a tensor of shape (B or 1, 2, Lp, heads, head_dim): index 0 of dim 1 holds the Lp key tokens,
index 1 the Lp value tokens (PILOT / JH-DP layout). :func:`split_prompt_tokens` converts CODA-P's layout (one
prompt of L tokens, the first L/2 are keys, the last L/2 values) and :func:`official_prefix_order` reproduces
the DualPrompt reshape quirk.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PrefixAttention(nn.Module):
    """A timm ``Attention`` whose keys and values get ``self.prefix`` prepended when it is set.

    Without a prefix (``None``) the wrapped module runs unchanged, so the same ViT gives the unprompted
    forward pass (e.g. the frozen query of §1.3).
    """

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.prefix: torch.Tensor | None = None

    @property
    def num_heads(self) -> int:
        """Heads of the wrapped attention."""
        return self.attn.num_heads

    @property
    def head_dim(self) -> int:
        """Width of one head (the last dim of a prefix)."""
        return self.attn.head_dim

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
                ) -> torch.Tensor:
        if self.prefix is None:
            return self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError("prefix attention does not support attention masks")
        attn = self.attn
        batch, length, _ = x.shape
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        qkv = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        # (B, 2, Lp, H, D) -> key and value prefixes of shape (B, H, Lp, D)
        prefix = self.prefix.to(dtype=k.dtype).expand(batch, -1, -1, -1, -1)
        prefix_k, prefix_v = prefix.permute(1, 0, 3, 2, 4).unbind(0)
        k = torch.cat([prefix_k, k], dim=2)
        v = torch.cat([prefix_v, v], dim=2)
        if attn.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        else:
            weights = (q * attn.scale) @ k.transpose(-2, -1)
            out = attn.attn_drop(weights.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(batch, length, attn.num_heads * attn.head_dim)
        out = attn.norm(out)
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))


def attach_prefix(vit: nn.Module, block_indices: Sequence[int]) -> list[PrefixAttention]:
    """Wrap ``vit.blocks[i].attn`` for each index in :class:`PrefixAttention`; wrapping twice reuses it."""
    wrappers = []
    for index in block_indices:
        block = vit.blocks[index]
        if not isinstance(block.attn, PrefixAttention):
            block.attn = PrefixAttention(block.attn)
        wrappers.append(block.attn)
    return wrappers


@contextmanager
def prefixes_set(wrappers: Sequence[PrefixAttention], prefixes: Sequence[torch.Tensor]) -> Iterator[None]:
    """Give ``wrappers[i]`` the prefix ``prefixes[i]`` inside the block; they are cleared on exit."""
    if len(wrappers) != len(prefixes):
        raise ValueError(f"{len(wrappers)} prefix wrappers but {len(prefixes)} prefixes")
    for wrapper, prefix in zip(wrappers, prefixes):
        wrapper.prefix = prefix
    try:
        yield
    finally:
        for wrapper in wrappers:
            wrapper.prefix = None


def official_prefix_order(prefix: torch.Tensor) -> torch.Tensor:
    """The DualPrompt reshape quirk (PILOT ``backbone/prompt.py:L320-325``, JH-DP issue #8).

    The official code holds a layer's selected prompts as (2, B, Lp, H, D) and reshapes them to
    (B, 2, Lp, H, D) without a permute. Sample b therefore gets as key prefix half ``(2b) // B`` of the
    prompt of sample ``(2b) % B`` and as value prefix half ``(2b+1) // B`` of the prompt of sample
    ``(2b+1) % B``. ``prefix`` is the correctly ordered (B, 2, Lp, H, D) tensor; the result is what the
    official code feeds to attention.
    """
    return prefix.transpose(0, 1).reshape(prefix.shape)


def split_prompt_tokens(prompt: torch.Tensor, num_heads: int) -> torch.Tensor:
    """CODA-P layout: (B, L, dim) prompt tokens -> (B, 2, L/2, heads, dim/heads); first half keys."""
    batch, length, dim = prompt.shape
    if length % 2:
        raise ValueError(f"a prompt split into keys and values needs an even length, got {length}")
    return prompt.reshape(batch, 2, length // 2, num_heads, dim // num_heads)
