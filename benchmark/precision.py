"""Numeric precision of training and evaluation: ``fp32`` (default), ``bf16`` or ``fp16`` autocast.

Weights, optimiser state and gradients stay float32 ("master weights"); under ``bf16``/``fp16`` the forward
passes and losses run inside :func:`torch.autocast`, which lowers matrix products to the half type. Where the
precision is applied, so that a method never needs to know it:

- :meth:`benchmark.method.Method.learn` runs the whole ``train_task`` under :func:`training_precision` (the
  epochs, and every feature, prototype or statistics pass a method makes before or after them);
- the runner evaluates ``predict`` under :func:`autocast`;
- :func:`benchmark.training.optimizer_step` backpropagates and steps through :func:`backward` and :func:`step`,
  which apply the gradient scaler that ``fp16`` needs (bf16 has float32's range and needs none).

Numerically sensitive pieces opt out with :func:`full_precision` and cast their operands to float32: prototype
means, second-moment (Gram) accumulators, SVD/QR, distillation softmaxes, orthogonality terms.
A method with its own update (CL-LoRA's two steps) calls :func:`backward`, :func:`step` and :func:`loss_scale`.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

from benchmark.errors import ClbenchError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PRECISION = "fp32"

_SCALER: ContextVar[torch.amp.GradScaler | None] = ContextVar("clbench_grad_scaler", default=None)


def check_precision(name: str) -> str:
    """``name`` if it is a known precision, else a :class:`ClbenchError`."""
    if name not in PRECISIONS:
        raise ClbenchError(f"unknown precision '{name}' (valid: {', '.join(PRECISIONS)})")
    return name


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


@contextmanager
def autocast(precision: str, device: torch.device | str, cache_weights: bool = True) -> Iterator[None]:
    """Forward passes under ``precision`` on ``device`` (no-op for ``fp32``).

    ``cache_weights``: keep autocast's half-precision copies of the parameters until the region ends. Only
    correct while no parameter changes inside the region (evaluation); a region spanning optimiser steps must
    pass False, or every forward after the first step would run on the stale copies of the old weights.
    """
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(_device_type(device), dtype=DTYPES[precision], cache_enabled=cache_weights):
        yield


@contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off on every device type where it is on: the enclosed code runs in its operands' dtype.

    Operands that may come out of an autocast region (features, activations) must be cast with ``.float()``.
    """
    with ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


@contextmanager
def training_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """:func:`autocast` over a whole task's training, plus a fresh gradient scaler for ``fp16`` used by
    :func:`backward` and :func:`step`.

    The region spans every optimiser step of the task, so autocast's weight cache is off: each forward casts
    the current parameters (with the cache on, all forwards would reuse the casts made before the first step).
    """
    scaler = torch.amp.GradScaler(_device_type(device)) if precision == "fp16" else None
    token = _SCALER.set(scaler)
    try:
        with autocast(precision, device, cache_weights=False):
            yield
    finally:
        _SCALER.reset(token)


def loss_scale() -> float:
    """The current fp16 loss scale (1.0 without a scaler): gradients are ``loss_scale()`` times the true ones."""
    scaler = _SCALER.get()
    return float(scaler.get_scale()) if scaler is not None else 1.0


def backward(loss: torch.Tensor, retain_graph: bool = False) -> None:
    """``loss.backward()``, scaled by the fp16 loss scale when one is active; run with autocast off."""
    scaler = _SCALER.get()
    with full_precision():
        (scaler.scale(loss) if scaler is not None else loss).backward(retain_graph=retain_graph)


def step(optimizer: torch.optim.Optimizer, grad_clip: float | None = None) -> None:
    """One optimiser step on the gradients of :func:`backward` (unscaled first, and skipped on inf/NaN, in fp16),
    with optional grad-norm clipping of the true gradients."""
    scaler = _SCALER.get()
    if scaler is not None and grad_clip:
        scaler.unscale_(optimizer)
    if grad_clip:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
