"""Linear classification heads shared by methods: per-task heads and a task-masked single head."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class TaskLinearHeads(nn.Module):
    """One ``Linear(dim, C_t)`` head per task (InfLoRA, O-LoRA); test logits concatenate all heads.

    Training uses only the newest head (``current``), with labels local to the task.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.heads = nn.ModuleList()

    def add_head(self, num_classes: int, generator: torch.Generator | None = None,
                 weight_std: float | None = None) -> nn.Linear:
        """Append a head for a new task (on the device of existing heads) and return it.

        With ``generator``, nn.Linear's default init (weight and bias U(+-1/sqrt(dim))) is drawn from it instead
        of the global RNG. With ``weight_std``, weights are N(0, weight_std²) and the bias 0 (LAE: 0.001).
        """
        if weight_std is not None:
            head = torch.nn.utils.skip_init(nn.Linear, self.feature_dim, num_classes)
            with torch.no_grad():
                nn.init.normal_(head.weight, 0.0, weight_std, generator=generator)
                head.bias.zero_()
        else:
            head = default_linear(self.feature_dim, num_classes, generator)
        return self.append(head)

    def append(self, head: nn.Linear) -> nn.Linear:
        """Append a head built elsewhere (e.g. :func:`kaiming_linear_head`), on the device of existing heads."""
        if len(self.heads):
            head.to(self.heads[0].weight.device)
        self.heads.append(head)
        return head

    def current(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the newest head only (local labels)."""
        return self.heads[-1](features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Concatenated logits of all heads: global class ids over every class seen so far."""
        return torch.cat([head(features) for head in self.heads], dim=1)


def mask_to_current_task(logits: torch.Tensor, known_classes: int, seen_classes: int) -> torch.Tensor:
    """Training logits of a single head: columns [0, seen) with old classes [0, known) set to -inf.

    (L2P, DualPrompt, CODA-P: the softmax runs over the current task's classes only.)
    """
    logits = logits[:, :seen_classes]
    if known_classes:
        mask = torch.zeros(seen_classes, dtype=torch.bool, device=logits.device)
        mask[:known_classes] = True
        logits = logits.masked_fill(mask, float("-inf"))
    return logits


def default_linear(in_features: int, out_features: int, generator: torch.Generator | None = None) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default init (weight and bias U(+-1/sqrt(in_features))), drawn from
    ``generator`` when given instead of the global RNG."""
    if generator is None:
        return nn.Linear(in_features, out_features)
    layer = torch.nn.utils.skip_init(nn.Linear, in_features, out_features)
    bound = 1.0 / in_features ** 0.5
    with torch.no_grad():
        layer.weight.copy_((torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(out_features, generator=generator) * 2 - 1) * bound)
    return layer


def linear_head(in_features: int, num_classes: int, generator: torch.Generator | None = None,
                init: Literal["trunc_normal", "pytorch"] = "trunc_normal") -> nn.Linear:
    """The single ``Linear(dim, C_total)`` head of L2P, DualPrompt and CODA-P; training masks it with
    :func:`mask_to_current_task`.

    ``trunc_normal``: PILOT's ViT head of L2P and DualPrompt, weights trunc-normal with std 0.02, bias zero;
    ``pytorch``: ``nn.Linear``'s default init (CODA-P's ``fc``, PILOT ``utils/inc_net.py:L616-641``).
    """
    if init == "pytorch":
        return default_linear(in_features, num_classes, generator)
    if init != "trunc_normal":
        raise ValueError(f"unknown head init '{init}' (trunc_normal, pytorch)")
    head = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=0.02, generator=generator)
        head.bias.zero_()
    return head


def kaiming_linear_head(in_features: int, num_classes: int, generator: torch.Generator | None = None) -> nn.Linear:
    """PILOT's ``SimpleLinear`` init: SD-LoRA's single ``Linear(dim, C_total)`` head, LAE's per-task heads under
    ``lae_impl=pilot``.

    Weights Kaiming-uniform with the linear gain, U(+-sqrt(3 / dim)) (U(+-0.0625) at dim 768), bias zero.
    """
    head = torch.nn.utils.skip_init(nn.Linear, in_features, num_classes)
    bound = (3.0 / in_features) ** 0.5
    with torch.no_grad():
        head.weight.copy_((torch.rand(num_classes, in_features, generator=generator) * 2 - 1) * bound)
        head.bias.zero_()
    return head
