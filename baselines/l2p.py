"""L2P, Learning to Prompt (Wang et al., CVPR 2022), as PILOT runs it (``prompt_baselines.md`` §2).

- A pool of M prompts (Lp tokens each) with M keys; the query is the frozen, unprompted ViT's CLS feature.
- The N keys closest (cosine) to the query are chosen per sample, and then, by default, the batch-wise
  majority of those ids is used by every sample of the batch (in training and at test time).
- The N·Lp selected prompt tokens are inserted after CLS (all sharing the CLS position embedding); the head
  reads the mean of the final-LN outputs at the prompt positions.
- Loss: CE over the current task's classes (others masked) minus 0.1 x the pull-constraint term of the selected
  keys. All prompts, the keys and the head are trained in every task (no prompt mask, no transfer); Adam,
  constant lr, re-initialised per task. The backbone is frozen.

Neither PILOT nor the official L2P code ships a CUB-200, ObjectNet, OmniBenchmark or DomainNet config (CODA-Prompt's
``experiments/domainnet.sh`` runs its own L2P++ variant): those take PILOT's ImageNet-R recipe.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.learners.prompt import KeyMatchingConfig, KeyMatchingLearner
from benchmark.method import ParameterReport, count_parameters, imagenet_r_recipe
from benchmark.models.backbones import run_blocks
from benchmark.models.peft.prompts import PromptPool, Selection, embed_with_prompts
from benchmark.registry import register_method

PILOT_BACKBONE = "vit_base_patch16_224.augreg_in21k_ft_in1k"
_INR = {"epochs": 10, "batch_size": 32, "lr": 0.001875}


@dataclass
class L2PConfig(KeyMatchingConfig):
    """L2P hyper-parameters; class defaults are PILOT ``exps/l2p.json`` (CIFAR-100)."""

    batch_size: int = 16
    epochs: int = 5
    lr: float = 0.001875
    pool_size: int = 10
    """M, prompts (and keys) in the pool."""
    prompt_length: int = 5
    """Lp, tokens per prompt."""
    top_k: int = 5
    """N, prompts selected per input."""
    defaults_source: str = "PILOT exps/l2p.json"


@register_method("l2p")
class L2P(KeyMatchingLearner):
    """Prompt pool + key matching + input prompts + task-masked head on a frozen ViT."""

    config_class = L2PConfig
    default_cfgs = {
        "cifar100": {"epochs": 5, "batch_size": 16, "lr": 0.001875, "defaults_source": "PILOT exps/l2p.json"},
        "imr": {**_INR, "defaults_source": "PILOT exps/l2p_inr.json"},
        "ima": {**_INR, "defaults_source": "harness choice: PILOT exps/l2p_inr.json values (no official "
                                           "ImageNet-A config; what CL-LoRA ran is UNCONFIRMED)"},
        "vtab": {**_INR, "defaults_source": "harness choice: PILOT exps/l2p_inr.json values (no official "
                                            "VTAB config; what CL-LoRA ran is UNCONFIRMED)"},
        **imagenet_r_recipe(_INR, "PILOT exps/l2p_inr.json", ("cub", "objnet", "omni", "domainnet")),
        "digits": {"epochs": 5, "batch_size": 32, "lr": 0.01, "prompt_length": 2, "top_k": 3,
                   "defaults_source": "ours, for the tiny digits ViT (not official)"},
    }
    default_backbones = {family: PILOT_BACKBONE
                         for family in ("cifar100", "imr", "ima", "vtab", "cub", "objnet", "omni", "domainnet")}

    def __init__(self, backbone, hparams: L2PConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        self.pool = PromptPool(hparams.pool_size, (hparams.prompt_length, self.backbone.embed_dim),
                               self.backbone.embed_dim, hparams.top_k, self.make_generator(1))
        self.to(self.device)

    def prompted_forward(self, images: torch.Tensor, task_index: int | None) -> tuple[torch.Tensor, Selection]:
        """Select prompts, prepend them to the input tokens, classify the mean of their outputs."""
        vit = self.backbone
        selection = self.pool.select(self.query(images), self.hparams.batchwise_prompt)
        prompts = self.pool.gather(selection).flatten(1, 2)
        hidden = vit.norm(run_blocks(vit, embed_with_prompts(vit, images, prompts)))
        features = hidden[:, 1: 1 + prompts.shape[1]].mean(dim=1)
        return self.head(features), selection

    def parameter_report(self) -> ParameterReport:
        return self.report(count_parameters(self.pool.parameters()),
                           notes="every prompt and key can be trained in every task; trainable (total) counts "
                                 "the whole C_total-class head, as the official count")
