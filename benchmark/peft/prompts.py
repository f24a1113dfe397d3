"""Prompt pools with key matching, the frozen query, and input-prompt insertion (L2P, DualPrompt).

``prompt_baselines.md`` §1.3-1.5:

- the query q(x) is the CLS feature of the unprompted, frozen ViT (:func:`frozen_query`); the backbone of
  the prompt methods is frozen, so running the same module without prompts gives the official second copy's
  queries;
- a :class:`PromptPool` holds M prompts and M keys, both U(-1, 1); :meth:`PromptPool.select` matches queries
  to keys by cosine and chooses per-sample top-k, the batch-wise majority of those, or forced ids, and returns
  a :class:`Selection` whose :meth:`Selection.pull` is the pull-constraint term;
- :func:`embed_with_prompts` builds L2P's input sequence [CLS ; prompts ; patches] with every prompt token
  sharing the CLS position embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.backbones import cls_feature, embed_tokens, run_blocks


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last dim, as the official code: x * rsqrt(max(sum x^2, 1e-12))."""
    return x * torch.rsqrt(torch.clamp(x.pow(2).sum(dim=-1, keepdim=True), min=1e-12))


@torch.no_grad()
def frozen_query(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """q(x): CLS after the final LayerNorm of the unprompted ViT, without gradient (B, dim)."""
    return cls_feature(vit, run_blocks(vit, embed_tokens(vit, images)))


def batch_majority(ids: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The k pool ids occurring most often in the per-sample top-k sets ``ids`` (B, k); shape (k,).

    Ties are broken towards the lower id (the official torch.topk leaves tie order unspecified).
    """
    counts = F.one_hot(ids, pool_size).sum(dim=(0, 1))
    return torch.sort(counts, descending=True, stable=True).indices[: ids.shape[1]]


@dataclass
class Selection:
    """The pool ids each sample uses, ``ids`` (B, k), and the cosines ``similarity`` (B, M) they came from."""

    ids: torch.Tensor
    similarity: torch.Tensor

    def pull(self) -> torch.Tensor:
        """Pull-constraint term S = (1/B) sum_b sum_{i in ids_b} cos(K_i, q_b) (a sum over k, mean over B)."""
        return self.similarity.gather(1, self.ids).sum(dim=1).mean()


class PromptPool(nn.Module):
    """M prompts of shape ``prompt_shape`` (``prompts``: (M, *prompt_shape)) and M keys (``keys``: (M, dim)).

    Both are initialised U(-1, 1) from ``generator``. Gradient reaches the keys only through
    :meth:`Selection.pull`, and a prompt only when it is selected.
    """

    def __init__(self, pool_size: int, prompt_shape: Sequence[int], key_dim: int, top_k: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be in [1, pool_size={pool_size}], got {top_k}")
        self.pool_size, self.top_k = pool_size, top_k
        self.prompts = nn.Parameter(torch.empty(pool_size, *prompt_shape).uniform_(-1, 1, generator=generator))
        self.keys = nn.Parameter(torch.empty(pool_size, key_dim).uniform_(-1, 1, generator=generator))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """cos(q_b, K_i) for every sample and key, shape (B, M); differentiable w.r.t. the keys."""
        return l2_normalize(query) @ l2_normalize(self.keys).T

    def select(self, query: torch.Tensor, batchwise: bool, forced: Sequence[int] | None = None) -> Selection:
        """Choose k pool ids per sample.

        ``forced``: these ids for every sample (DualPrompt's prompt mask in training). Otherwise the
        per-sample top-k by cosine, replaced, when ``batchwise``, by their batch-wise majority for every
        sample (the official default in training and test, which makes test predictions depend on the
        composition of the test batch).
        """
        similarity = self.similarity(query)
        batch = similarity.shape[0]
        if forced is not None:
            ids = torch.as_tensor(forced, dtype=torch.long, device=similarity.device).expand(batch, -1)
        else:
            ids = similarity.detach().topk(self.top_k, dim=1).indices
            if batchwise:
                ids = batch_majority(ids, self.pool_size).expand(batch, -1)
        return Selection(ids=ids, similarity=similarity)

    def gather(self, selection: Selection) -> torch.Tensor:
        """The selected prompts of every sample, shape (B, k, *prompt_shape)."""
        return self.prompts[selection.ids]


def embed_with_prompts(vit: nn.Module, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """L2P's input: [CLS ; prompts (B, P, dim) ; patches] + position embedding, the input of ``blocks[0]``.

    The position table is extended as the official code does: the CLS row is repeated for every prompt
    token (all prompt tokens share it), then the grid rows follow.
    """
    if (getattr(vit, "cls_token", None) is None or getattr(vit, "num_reg_tokens", 0)
            or getattr(vit, "no_embed_class", False) or getattr(vit, "dynamic_img_size", False)):
        raise ValueError("input prompts need a ViT with a CLS token, no register tokens and a fixed "
                         "position table that includes the CLS row")
    patches = vit.patch_embed(images)
    pos_cls, pos_grid = vit.pos_embed[:, :1], vit.pos_embed[:, 1:]
    batch = patches.shape[0]
    tokens = torch.cat([(vit.cls_token + pos_cls).expand(batch, -1, -1), prompts + pos_cls,
                        patches + pos_grid], dim=1)
    return vit.norm_pre(vit.pos_drop(tokens))
