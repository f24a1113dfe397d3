"""Lean checkpoints: what a method changed or added, plus a fingerprint of the pretrained weights it was built on.

A method records its backbone's pretrained tensors when it is built (:class:`PretrainedWeights`, in
:class:`benchmark.method.Method`'s constructor, before any adapter wraps a module). When a checkpoint is written,
every state entry whose contents equal a recorded pretrained tensor (same dtype, shape and bytes) is left out
and replaced by a reference to that tensor's pretrained name. Matching by contents, not by key, keeps the rule
generic: adapters that wrap timm modules rename keys (``attn.qkv.weight`` becomes ``attn.qkv.qkv.weight``), and a
method may keep a copy of the pretrained network; a pretrained tensor the method changed is kept in full.
Methods that train the backbone (``trains_backbone``, e.g. ``finetune``) keep their full state.

On resume the method is built again from the pretrained weights; their fingerprint must equal the stored one
(else a :class:`ClbenchError`), and the referenced entries are filled from the freshly built tensors.
"""
from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import nn

from benchmark.errors import ClbenchError


def tensor_digest(tensor: torch.Tensor) -> str:
    """A 128-bit BLAKE2b digest of a tensor's dtype, shape and bytes (any device, any dtype)."""
    data = tensor.detach().contiguous().cpu()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class PretrainedWeights:
    """Digests of a backbone's tensors as built (by state-dict name), and a fingerprint of all of them."""

    def __init__(self, backbone: nn.Module) -> None:
        self.tensors: dict[str, torch.Tensor] = {
            name: value for name, value in backbone.state_dict(keep_vars=True).items() if torch.is_tensor(value)}
        """The backbone's tensors by name (the module's own objects: unchanged on a freshly built method)."""
        self.digests = {name: tensor_digest(value) for name, value in self.tensors.items()}
        self._by_digest: dict[str, str] = {}
        for name, digest in self.digests.items():
            self._by_digest.setdefault(digest, name)
        self._signatures = {(value.dtype, tuple(value.shape)) for value in self.tensors.values()}
        whole = hashlib.blake2b(digest_size=16)
        for name in sorted(self.digests):
            whole.update(f"{name}={self.digests[name]};".encode())
        self.fingerprint = whole.hexdigest()

    def match(self, tensor: torch.Tensor) -> str | None:
        """The pretrained name of a tensor with exactly these contents, or None."""
        if (tensor.dtype, tuple(tensor.shape)) not in self._signatures:
            return None
        return self._by_digest.get(tensor_digest(tensor))


def checkpoint_state(method: nn.Module) -> dict[str, Any]:
    """``method_state`` (lean), ``pretrained_refs`` ({state key: pretrained name}) and ``pretrained_fingerprint``."""
    record: PretrainedWeights = method.pretrained_weights
    state = method.state_dict()
    refs: dict[str, str] = {}
    if not method.trains_backbone:
        for key, value in state.items():
            if torch.is_tensor(value) and (name := record.match(value)) is not None:
                refs[key] = name
    lean = {key: value for key, value in state.items() if key not in refs}
    return {"method_state": lean, "pretrained_refs": refs, "pretrained_fingerprint": record.fingerprint}


def restore_checkpoint(method: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Load a checkpoint of :func:`checkpoint_state` (or an older full one) into a freshly built method."""
    if "pretrained_fingerprint" not in checkpoint:  # a full checkpoint (written before lean checkpoints)
        method.load_state_dict(checkpoint["method_state"])
        return
    record: PretrainedWeights = method.pretrained_weights
    if checkpoint["pretrained_fingerprint"] != record.fingerprint:
        raise ClbenchError(f"the checkpoint was built on other pretrained weights (fingerprint "
                           f"{checkpoint['pretrained_fingerprint'][:12]}, these are {record.fingerprint[:12]}); "
                           "resume with the same --backbone/--weights, or pass --fresh")
    state = dict(checkpoint["method_state"])
    for key, name in checkpoint["pretrained_refs"].items():
        state[key] = record.tensors[name].detach().clone()
    method.load_state_dict(state)


def serialized_size(state: dict[str, Any]) -> int:
    """Bytes of ``torch.save(state)``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()
