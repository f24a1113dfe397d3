"""Backbones: any timm ViT by name and tag, plus small registered ViTs for the built-in benchmark and tests.

Pretrained weights are never downloaded at run time: they come from the Hugging Face cache (put there by
``huggingface-cli download`` on a machine with internet) or from a local file given with ``--weights``.
A missing file is one :class:`WeightsError` saying what to get and where to put it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from benchmark.errors import WeightsError
from benchmark.registry import BACKBONES, register_backbone

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


# -- small registered ViTs ---------------------------------------------------------------------------
def tiny_vit(img_size: int = 32, patch_size: int = 4, embed_dim: int = 64, depth: int = 4,
             num_heads: int = 4, mlp_ratio: float = 4.0) -> VisionTransformer:
    """A small timm ViT with ViT-B/16's layout (pre-norm blocks, CLS token, final LN, eps 1e-6)."""
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0, qkv_bias=True,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6))


@register_backbone("vit_tiny_random")
def vit_tiny_random(pretrained: bool = True) -> VisionTransformer:
    """Tiny random-init ViT (32 px, patch 4, embed 64, depth 4) for tests: shapes only, no weights."""
    return tiny_vit()


DIGITS_WEIGHTS = WEIGHTS_DIR / "vit_tiny_shapes.safetensors"


@register_backbone("vit_tiny_shapes")
def vit_tiny_shapes(pretrained: bool = True) -> VisionTransformer:
    """Tiny ViT pretrained by ``benchmark/models/pretrain_shapes.py`` on procedurally drawn shapes (no digits)."""
    model = tiny_vit()
    if pretrained:
        if not DIGITS_WEIGHTS.exists():
            raise WeightsError(
                f"weights of vit_tiny_shapes not found at {DIGITS_WEIGHTS}; create them with "
                "`python -m benchmark.models.pretrain_shapes` (deterministic, about 2-3 minutes on CPU)")
        load_weights_file(model, DIGITS_WEIGHTS)
    return model


# -- timm models ---------------------------------------------------------------------------------------
def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a .pth/.pt/.bin/.safetensors state dict into ``model``, ignoring classifier-head keys."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign file
        raise WeightsError(f"cannot read weights file {path}: {error}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {key: value for key, value in state.items() if not key.startswith(("head.", "fc."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"weights file {path} does not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


@contextmanager
def _offline_hub() -> Iterator[None]:
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _cached_hub_file(hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def build_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True) -> nn.Module:
    """A headless ViT (``num_classes=0``) by registered name or timm ``name.tag``, in eval mode.

    ``weights`` loads a local file instead of the pretrained tag; ``pretrained=False`` builds shapes only
    (parameter reports). Offline without cached weights: a :class:`WeightsError` with instructions.
    """
    if name in BACKBONES:
        model = BACKBONES.get(name)(pretrained=pretrained and weights is None)
    else:
        architecture = name.split(".")[0]
        if not timm.is_model(architecture):
            raise WeightsError(
                f"unknown backbone '{name}': neither a registered backbone ({', '.join(BACKBONES.names())}) "
                "nor a timm model")
        if pretrained and weights is None:
            model = _create_pretrained_timm(name)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights is not None:
        load_weights_file(model, Path(weights))
    model.eval()
    return model


def _create_pretrained_timm(name: str) -> nn.Module:
    probe = timm.create_model(name, pretrained=False, num_classes=0)
    hub_id = (probe.pretrained_cfg or {}).get("hf_hub_id")
    if not hub_id:
        raise WeightsError(f"timm has no pretrained weights for '{name}'; pass a file with --weights")
    if _cached_hub_file(hub_id) is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsError(
            f"pretrained weights for '{name}' are not available offline. Either download them where there is "
            f"internet (`huggingface-cli download {hub_id}`) and copy the cache to {HF_HUB_CACHE} "
            f"(or set HF_HOME), or pass a local .safetensors/.pth file with --weights FILE.")
    with _offline_hub():
        return timm.create_model(name, pretrained=True, num_classes=0)


def input_size(backbone: nn.Module) -> int:
    """The square input resolution the backbone expects (224 for ViT-B/16)."""
    size = backbone.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# -- pieces of a ViT forward pass, for methods that run blocks themselves -------------------------------
def embed_tokens(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding, CLS and position embedding: the input of ``blocks[0]``."""
    tokens = vit.patch_embed(images)
    tokens = vit._pos_embed(tokens)
    tokens = vit.patch_drop(tokens)
    return vit.norm_pre(tokens)


def run_blocks(vit: VisionTransformer, tokens: torch.Tensor, start: int = 0, stop: int | None = None
               ) -> torch.Tensor:
    """Run ``blocks[start:stop]`` on a token sequence."""
    for block in vit.blocks[start:stop]:
        tokens = block(tokens)
    return tokens


def cls_feature(vit: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The CLS token after the final LayerNorm: "the feature" of every method here."""
    return vit.norm(tokens)[:, 0]
