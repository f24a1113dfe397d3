"""CL-LoRA's hyper-parameter defaults per benchmark family (``CLLoRA.default_cfgs``), each with its source.

The official code (JiangpengHe/CL-LoRA @ df4e74e, spec ``../shared/specs/cl_lora.md`` §3) ships four configs;
each sets init/later_epochs (lines 15, 17), init/later_lr (lines 16, 18), batch_size (line 19), weight_decay
(line 20) and the LoRA rank as ``ffn_num`` (line 27): ``exps/cifar.json`` (30, 0.03, 64, 1e-4, 8),
``exps/inr.json`` (20, 0.05, 32, 5e-4, 10), ``exps/ina.json`` (25, 0.05, 32, 5e-3, 10) and ``exps/vtab.json``
(45, 0.03, 32, 1e-4, 10). There is none for CUB-200, ObjectNet, OmniBenchmark or DomainNet: they take the
ImageNet-R recipe.
"""
from __future__ import annotations

from typing import Any

from benchmark.method import imagenet_r_recipe

_INR = {"epochs": 20, "lr": 0.05, "batch_size": 32, "weight_decay": 5e-4, "rank": 10}

DEFAULT_CFGS: dict[str, dict[str, Any]] = {
    "cifar100": {"epochs": 30, "lr": 0.03, "batch_size": 64, "weight_decay": 1e-4, "rank": 8,
                 "defaults_source": "official exps/cifar.json"},
    "imr": {**_INR, "defaults_source": "official exps/inr.json"},
    "ima": {"epochs": 25, "lr": 0.05, "batch_size": 32, "weight_decay": 5e-3, "rank": 10,
            "defaults_source": "official exps/ina.json"},
    "vtab": {"epochs": 45, "lr": 0.03, "batch_size": 32, "weight_decay": 1e-4, "rank": 10,
             "defaults_source": "official exps/vtab.json"},
    **imagenet_r_recipe(_INR, "official exps/inr.json", ("cub", "objnet", "omni", "domainnet")),
    # Ours, not official: the tiny 4-block ViT of digits_t5 (l = 2 of 4 blocks). A light touch: with more
    # training each task's features drift apart and raw cosines to prototypes of different tasks stop being
    # comparable, so task-agnostic accuracy drops (A_T 81.0 here; 73.4 with 4 epochs, 53.3 at lr 0.2).
    "digits": {"epochs": 2, "lr": 0.05, "batch_size": 32, "weight_decay": 5e-4, "rank": 4, "shared_blocks": 2,
               "defaults_source": "ours, for the tiny 4-block digits ViT (not official)"},
}
