"""Prompt pools with key matching, the frozen query, and input-prompt insertion (L2P, DualPrompt, CODA-P).

``prompt_baselines.md`` §1.3-1.5, §5:

- the query q(x) is the CLS feature of the unprompted, frozen ViT (:func:`frozen_query`); the backbone of
  the prompt methods is frozen, so running the same module without prompts gives the official second copy's
  queries;
- a :class:`KeyedPool` holds M prompts and M keys; it has two modes:
  - :class:`PromptPool` (hard selection, L2P and DualPrompt): prompts and keys U(-1, 1);
    :meth:`PromptPool.select` matches queries to keys by cosine and chooses per-sample top-k, the batch-wise
    majority of those, or forced ids, and returns a :class:`Selection` whose :meth:`Selection.pull` is the
    pull-constraint term;
  - :class:`ComponentPool` (soft weighting, CODA-P): M components with keys and attention vectors, task slots of
    rows refilled by Gram-Schmidt (:func:`gram_schmidt_refill`), and every query's prompt a weighted sum of the
    components, weight cos(q ⊙ A_m, K_m);
- :func:`embed_with_prompts` builds L2P's input sequence [CLS ; prompts ; patches] with every prompt token
  sharing the CLS position embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.backbones import cls_feature, embed_tokens, run_blocks


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


class KeyedPool(nn.Module):
    """M prompts (``prompts``: (M, *prompt_shape)) and M keys (``keys``: (M, dim)) matched against a query.

    The base of both pool modes: :class:`PromptPool` (hard top-k) and :class:`ComponentPool` (soft weights).
    """

    def __init__(self, prompts: torch.Tensor, keys: torch.Tensor) -> None:
        super().__init__()
        if prompts.shape[0] != keys.shape[0]:
            raise ValueError(f"{prompts.shape[0]} prompts but {keys.shape[0]} keys")
        self.prompts = nn.Parameter(prompts)
        self.keys = nn.Parameter(keys)

    @property
    def pool_size(self) -> int:
        """M, the number of prompts (and keys)."""
        return self.keys.shape[0]


class PromptPool(KeyedPool):
    """Hard selection (L2P, DualPrompt): prompts and keys initialised U(-1, 1) from ``generator``.

    Gradient reaches the keys only through :meth:`Selection.pull`, and a prompt only when it is selected.
    """

    def __init__(self, pool_size: int, prompt_shape: Sequence[int], key_dim: int, top_k: int,
                 generator: torch.Generator | None = None) -> None:
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be in [1, pool_size={pool_size}], got {top_k}")
        prompts = torch.empty(pool_size, *prompt_shape).uniform_(-1, 1, generator=generator)
        super().__init__(prompts, torch.empty(pool_size, key_dim).uniform_(-1, 1, generator=generator))
        self.top_k = top_k

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


def gram_schmidt_refill(rows: torch.Tensor, start: int, stop: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """CODA-P's refill of rows [start, stop) of an (M, D) matrix (PILOT ``backbone/prompt.py:L45-125``).

    Rows [0, start) are kept as they are; each row k in [start, stop) is a fresh N(0, 1) vector v_k made orthogonal
    to every row before it by classical Gram-Schmidt, u_k = v_k - sum_{j<k} <v_k, u_j> / <u_j, u_j> u_j (against
    the kept rows as they stand, trained or not, and the new rows before normalisation); the new rows are then
    normalised to unit length, and rows [stop, M) are zero. The draws come from ``generator`` (CPU).
    """
    count, dim = rows.shape
    if not 0 <= start <= stop <= count:
        raise ValueError(f"rows [{start}, {stop}) outside a pool of {count}")
    out = torch.zeros_like(rows)
    out[:start] = rows[:start]
    for k in range(start, stop):
        earlier = out[:k]
        squared_norms = earlier.pow(2).sum(dim=1)
        if bool((squared_norms < 1e-8).any()):
            # The official code retries forever here; a zero row cannot be projected out.
            raise ValueError("Gram-Schmidt refill: an earlier row has (near) zero norm")
        fresh = torch.randn(dim, generator=generator).to(rows)
        out[k] = fresh - ((earlier @ fresh) / squared_norms) @ earlier
    out[start:stop] = out[start:stop] / out[start:stop].norm(dim=1, keepdim=True)
    return out


def orthogonality_penalty(rows: torch.Tensor) -> torch.Tensor:
    """CODA-P's mean((R R^T - I)^2) over the rows R (M, D) (PILOT ``backbone/prompt.py`` ``ortho_penalty``)."""
    gram = rows @ rows.T
    return (gram - torch.eye(rows.shape[0], device=rows.device, dtype=rows.dtype)).pow(2).mean()


class ComponentPool(KeyedPool):
    """Soft weighting (CODA-P, ``prompt_baselines.md`` §5), one per prompted layer.

    M components ``prompts`` (M, L, dim) with keys ``keys`` (M, dim) and attention vectors ``attention`` (M, dim).
    Task t owns rows [t*pt, (t+1)*pt), pt = ``rows_per_task``; :meth:`refill` gives a task its rows (Gram-Schmidt,
    components flattened to L*dim). A forward pass uses rows [0, stop); rows [0, detach_below) are used but get
    no gradient (the previous tasks' rows while training), later rows are unused. Query q_b weights component m by
    alpha[b, m] = cos(q_b ⊙ A_m, K_m) (may be negative); its prompt is sum_m alpha[b, m] P_m.
    """

    def __init__(self, pool_size: int, prompt_length: int, dim: int, rows_per_task: int,
                 generator: torch.Generator | None = None) -> None:
        if not 1 <= rows_per_task <= pool_size:
            raise ValueError(f"rows_per_task must be in [1, pool_size={pool_size}], got {rows_per_task}")
        super().__init__(torch.zeros(pool_size, prompt_length, dim), torch.zeros(pool_size, dim))
        self.attention = nn.Parameter(torch.zeros(pool_size, dim))
        self.rows_per_task = rows_per_task
        self.refill(0, generator)

    @torch.no_grad()
    def refill(self, task_index: int, generator: torch.Generator | None = None) -> None:
        """Gram-Schmidt refill of task ``task_index``'s rows of the components, keys and attention vectors."""
        start, stop = task_index * self.rows_per_task, (task_index + 1) * self.rows_per_task
        for tensor in (self.prompts, self.keys, self.attention):
            flat = tensor.view(self.pool_size, -1)
            flat.copy_(gram_schmidt_refill(flat, start, stop, generator))

    @staticmethod
    def _rows(tensor: torch.Tensor, stop: int, detach_below: int) -> torch.Tensor:
        if detach_below <= 0:
            return tensor[:stop]
        return torch.cat([tensor[:detach_below].detach(), tensor[detach_below:stop]])

    def weights(self, query: torch.Tensor, stop: int, detach_below: int = 0) -> torch.Tensor:
        """alpha (B, stop): cos(q_b ⊙ A_m, K_m) over rows [0, stop).

        Computed without the (B, M, dim) product: <q ⊙ A_m, K_m / |K_m|> = q · (A_m ⊙ K_m / |K_m|) and
        |q ⊙ A_m|^2 = q^2 · A_m^2 (each norm floored at 1e-12, as ``F.normalize``).
        """
        keys = F.normalize(self._rows(self.keys, stop, detach_below), dim=1)
        attention = self._rows(self.attention, stop, detach_below)
        numerator = query @ (attention * keys).T
        norms = (query.pow(2) @ attention.pow(2).T).clamp_min(1e-24).sqrt()
        return numerator / norms

    def combine(self, weights: torch.Tensor, detach_below: int = 0) -> torch.Tensor:
        """The prompts sum_m weights[b, m] P_m, shape (B, L, dim), over the rows [0, weights.shape[1])."""
        components = self._rows(self.prompts, weights.shape[1], detach_below)
        return (weights @ components.flatten(1)).view(weights.shape[0], *components.shape[1:])

    def orthogonality_penalty(self, stop: int, detach_below: int = 0) -> torch.Tensor:
        """Sum of :func:`orthogonality_penalty` over the used rows of keys, attention vectors and components."""
        return sum(orthogonality_penalty(self._rows(tensor, stop, detach_below).flatten(1))
                   for tensor in (self.keys, self.attention, self.prompts))


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
