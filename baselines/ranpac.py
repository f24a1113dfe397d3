"""RanPAC (McDonnell et al., NeurIPS 2023), as PILOT runs it: random projections + a ridge-regression readout.

Spec: ``../shared/specs/prompt_baselines.md`` §7 and §0 item 8 (PILOT ``models/ranpac.py``).

- **First task only:** one AdaptFormer adapter set and a cosine head ``CosineLinear(dim, n_0)`` with learnable σ
  are trained with CE (SGD, cosine annealing per epoch); then everything is frozen
  (:mod:`benchmark.learners.first_task_adapter`). The head's σ is kept (PILOT grows the head and copies σ).
- **Random projection:** W_rand ∈ R^{dim×M}, entries N(0, 1), drawn from the run seed; h(x) = ReLU(f(x)·W_rand),
  f the CLS after LN with the adapters on.
- **Every task (the first included):** over the task's training images (test transform), on the CPU:
  G += hᵀh (M×M), Q += hᵀY (M×C, Y one-hot); λ ∈ {10⁻⁸, …, 10⁸} chosen on this task's h alone (fit on the first
  80 % of the rows, smallest MSE on the other 20 %); W_o = ((G + λI)⁻¹Q)ᵀ by a linear solve, rows of the seen
  classes.
- **Inference:** logits_c = σ·cos(h, W_o[c]) (PILOT, default) or σ·h·W_o[c]ᵀ (the original RanPAC,
  ``ranpac_readout=linear``); argmax over the seen classes.

G and Q stay on the CPU (G is M² numbers: 400 MB in float32, 800 MB in float64 at M = 10,000) and are saved in
the checkpoint, since later tasks add to them. W_rand is regenerated from the seed and not saved.

Defaults on the newer benchmarks: PILOT ships no CUB-200, ObjectNet, OmniBenchmark or DomainNet config; the RanPAC
repository's ``args/cub_publish.csv`` line 9 (ID 7: adapter, M 10000) and ``args/domainnet_publish.csv`` line 7
(ID 7) set batch_size 48, tuned_epoch 20, body_lr 0.01, weight_decay 0.0005, min_lr 0, M 10000 (the DomainNet run
is one 345-class session there; the recipe is applied per first task here). Its OmniBenchmark runs tune VPT, not
an adapter (``args/omnibenchmark_publish.csv`` line 9), and it has no ObjectNet config: both take the ImageNet-R
recipe. The readout stays PILOT's cosine on every benchmark (the repository's own code: ``ranpac_readout=linear``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.learners.first_task_adapter import FirstTaskAdapterConfig, FirstTaskAdapterLearner
from benchmark.method import ParameterReport, Task, imagenet_r_recipe
from benchmark.models.classifiers import CosineLinear, extract_features
from benchmark.precision import full_precision
from benchmark.registry import register_method

log = logging.getLogger(__name__)

PILOT_BACKBONE = "vit_base_patch16_224.augreg_in21k_ft_in1k"
RIDGE_GRID: tuple[float, ...] = tuple(10.0 ** exponent for exponent in range(-8, 9))
"""The λ candidates 10⁻⁸ … 10⁸ (17 values)."""
FIT_FRACTION = 0.8
_INR = {"epochs": 10, "batch_size": 16, "lr": 0.05, "weight_decay": 5e-3}


# -- the closed-form pieces --------------------------------------------------------------------------------
def random_features(features: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """h = ReLU(f · W_rand)."""
    return torch.relu(features @ projection)


def ridge_solve(gram: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """(G + λI)⁻¹Q by a linear solve (no explicit inverse), shape (M, C)."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, targets)


def select_ridge(h: torch.Tensor, targets: torch.Tensor, grid: tuple[float, ...] = RIDGE_GRID,
                 fit_fraction: float = FIT_FRACTION) -> float:
    """The λ of ``grid`` whose ridge fit on the first ``fit_fraction`` of the rows has the smallest MSE on the
    remaining rows (ties: the smaller λ)."""
    fit = int(h.shape[0] * fit_fraction)
    fit_h, fit_targets = h[:fit], targets[:fit]
    gram, cross = fit_h.T @ fit_h, fit_h.T @ fit_targets
    losses = torch.stack([F.mse_loss(h[fit:] @ ridge_solve(gram, cross, ridge), targets[fit:]) for ridge in grid])
    return grid[int(torch.argmin(losses))]


class RidgeStatistics(nn.Module):
    """The accumulators G = Σ hᵀh (M×M) and Q = Σ hᵀY (M×C_seen), and the last chosen λ.

    They stay on the CPU in their own dtype whatever ``.to()`` the method gets (G is too large for most GPUs
    beside the ViT, and the solve runs on the CPU as upstream).
    """

    def __init__(self, projection_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("gram", torch.zeros(0, 0, dtype=dtype))
        self.register_buffer("cross", torch.zeros(projection_dim, 0, dtype=dtype))
        self.register_buffer("ridge", torch.zeros((), dtype=torch.float64))
        self.projection_dim = projection_dim

    def _apply(self, fn, recurse=True):
        return self

    def resize(self, num_classes: int) -> None:
        """Uninitialised buffers of the shapes after ``num_classes`` classes (filled by ``load_state_dict``;
        ``empty`` so that ``bench params`` does not touch G's pages)."""
        size = self.projection_dim if num_classes else 0
        self.gram = torch.empty(size, size, dtype=self.gram.dtype)
        self.cross = torch.empty(self.projection_dim, num_classes, dtype=self.cross.dtype)

    def add(self, h: torch.Tensor, one_hot: torch.Tensor) -> None:
        """G += hᵀh; Q gains the new classes' columns hᵀY (``one_hot`` over the new classes only)."""
        if not self.gram.numel():
            self.gram = torch.zeros(self.projection_dim, self.projection_dim, dtype=self.gram.dtype)
        self.gram += h.T @ h
        self.cross = torch.cat([self.cross, h.T @ one_hot], dim=1)


class RidgeReadout(nn.Module):
    """W_o (C_seen × M) and the first head's σ; cosine (PILOT) or linear (original RanPAC) logits."""

    def __init__(self, projection_dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(0, projection_dim))
        self.register_buffer("sigma", torch.ones(1))

    def forward(self, h: torch.Tensor, readout: str) -> torch.Tensor:
        if readout == "cosine":
            return self.sigma * (F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T)
        return self.sigma * (h @ self.weight.T)


@dataclass
class RanPACConfig(FirstTaskAdapterConfig):
    """RanPAC hyper-parameters; class defaults are PILOT ``exps/ranpac.json`` (CIFAR-100)."""

    projection_dim: int = 10_000
    """M, the random projection size. G (M×M) stays on the CPU and is saved in checkpoints: M²·4 bytes in
    float32 (400 MB at M = 10,000), M²·8 in float64 (800 MB); the solves are M×M too."""
    ranpac_readout: Literal["cosine", "linear"] = "cosine"
    """``cosine``: σ·cos(h, W_o[c]) (PILOT); ``linear``: σ·h·W_o[c]ᵀ (the original RanPAC)."""
    accumulator_dtype: Literal["float32", "float64"] = "float32"
    """dtype of h, G, Q and the solves on the CPU (PILOT: float32)."""
    ridge_split: Literal["shuffled", "loader"] = "shuffled"
    """Row order of the 80/20 λ split: ``shuffled`` (seeded; PILOT's prototype loader is shuffled) or
    ``loader`` (the task's train_eval_loader order, class by class)."""

    def validate(self) -> None:
        super().validate()
        if self.projection_dim < 1:
            raise ClbenchError("projection_dim must be >= 1")


@register_method("ranpac")
class RanPAC(FirstTaskAdapterLearner):
    """First-task adapters, then frozen random-projection features with a ridge-regression readout."""

    config_class = RanPACConfig
    default_cfgs = {
        "cifar100": {"defaults_source": "PILOT exps/ranpac.json"},
        "imr": {**_INR, "defaults_source": "PILOT exps/ranpac_inr.json"},
        "ima": {**_INR, "defaults_source": "harness choice: PILOT exps/ranpac_inr.json values (no PILOT "
                                           "ImageNet-A config; UNCONFIRMED)"},
        "vtab": {**_INR, "defaults_source": "harness choice: PILOT exps/ranpac_inr.json values (no PILOT VTAB "
                                            "config; UNCONFIRMED)"},
        **{family: {"epochs": 20, "batch_size": 48, "lr": 0.01, "weight_decay": 5e-4, "projection_dim": 10_000,
                    "defaults_source": f"RanPAC repo args/{csv} (ID 7, adapter)"}
           for family, csv in (("cub", "cub_publish.csv line 9"), ("domainnet", "domainnet_publish.csv line 7"))},
        **imagenet_r_recipe(_INR, "PILOT exps/ranpac_inr.json", ("objnet",)),
        **imagenet_r_recipe(_INR, "PILOT exps/ranpac_inr.json", ("omni",), "the RanPAC repo's run tunes VPT"),
        "digits": {"epochs": 5, "batch_size": 32, "lr": 0.01, "bottleneck": 8, "projection_dim": 512,
                   "defaults_source": "ours, for the tiny digits ViT (not official)"},
    }
    default_backbones = {family: PILOT_BACKBONE
                         for family in ("cifar100", "imr", "ima", "vtab", "cub", "objnet", "omni", "domainnet")}

    def __init__(self, backbone, hparams: RanPACConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        dim, size = self.backbone.num_features, hparams.projection_dim
        self.register_buffer("projection", torch.randn(dim, size, generator=self.make_generator(3)),
                             persistent=False)
        self.statistics = RidgeStatistics(size, getattr(torch, hparams.accumulator_dtype))
        self.readout = RidgeReadout(size)
        self.to(self.device)

    def keep_first_head(self, head: CosineLinear) -> None:
        """Keep the trained σ (PILOT copies it into every grown head); the head's weights are discarded."""
        self.readout.sigma.copy_(head.sigma.detach())

    def projected(self, images: torch.Tensor) -> torch.Tensor:
        """h(x) = ReLU(f_ad(x)·W_rand) on the device (f_ad is frozen after task 1: kept during evaluation)."""
        return random_features(self.frozen("adapted", 1, images, self.adapted_features), self.projection)

    def absorb_task(self, task: Task) -> None:
        """Accumulate G and Q, choose λ on this task's h, solve for W_o (on the CPU)."""
        features, labels = extract_features(self.adapted_features, task.train_eval_loader, self.device)
        with full_precision():  # G, Q and the solves in the accumulator dtype under --precision bf16/fp16
            self._absorb(task, features, labels)

    def _absorb(self, task: Task, features: torch.Tensor, labels: torch.Tensor) -> None:
        stats = self.statistics
        dtype = stats.gram.dtype
        h = random_features(features.cpu().to(dtype), self.projection.cpu().to(dtype))
        one_hot = F.one_hot(labels.cpu() - task.known_classes, task.num_classes).to(dtype)
        stats.add(h, one_hot)
        if self.hparams.ridge_split == "shuffled":
            order = torch.randperm(h.shape[0], generator=self.make_generator(100 + task.index))
            h, one_hot = h[order], one_hot[order]
        ridge = select_ridge(h, one_hot)
        stats.ridge.fill_(ridge)
        log.info("ranpac task %d: selected lambda = %g", task.index + 1, ridge)
        self.readout.weight = ridge_solve(stats.gram, stats.cross, ridge).T.to(self.device, torch.float32)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.readout(self.projected(images), self.hparams.ranpac_readout)

    def restore_structure(self, task_sizes: list[int]) -> None:
        super().restore_structure(task_sizes)
        self.statistics.resize(sum(task_sizes))
        self.readout.weight = self.readout.weight.new_zeros(sum(task_sizes), self.hparams.projection_dim)

    def parameter_report(self) -> ParameterReport:
        adapters, head = self.trained_counts()
        stats = self.statistics
        gram_mb = stats.gram.numel() * stats.gram.element_size() / 1e6
        stored = (adapters + self.readout.sigma.numel() + self.readout.weight.numel() + stats.gram.numel()
                  + stats.cross.numel())
        return ParameterReport(
            backbone=self.backbone_parameters, trainable_task=adapters, head=head, trainable_total=adapters + head,
            stored=stored,
            notes=f"everything is trained in the first task (adapters + cosine head dim*n_0+1; sigma kept); "
                  f"stored = adapters + sigma + W_o ({self.readout.weight.numel():,}) + G "
                  f"({stats.gram.numel():,}: {gram_mb:,.0f} MB in {str(stats.gram.dtype)[6:]}, on the CPU) + Q "
                  f"({stats.cross.numel():,}); W_rand ({self.projection.numel():,}) is regenerated from the seed, "
                  f"not stored")
