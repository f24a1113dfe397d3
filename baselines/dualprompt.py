"""DualPrompt (Wang et al., ECCV 2022), as PILOT runs it (``prompt_baselines.md`` §3).

- G-prompt: one prompt per block in ``g_prompt_blocks`` (0-1), shared by all tasks.
- E-prompts: a pool of M prompts, each spanning the blocks in ``e_prompt_blocks`` (2-4), with one key per
  prompt shared by those blocks. Both kinds enter by prefix tuning: Lp key and Lp value tokens per head.
- Training task t < M uses E-prompt t (the prompt mask); at test time (and for t >= M) the top-1 key by
  cosine to the frozen query is chosen, by default as the batch-wise majority over the batch.
- Before task t >= 1 (t < M) E-prompt t starts as a copy of E-prompt t-1; keys are not copied.
- Loss: CE over the current task's classes (others masked) minus 0.1 x cos(selected key, query); the head reads
  the CLS token. Adam, constant lr, re-initialised per task; the backbone is frozen.

Two official behaviours are the defaults, each with a switch:
- ``e_pool_size=10`` (PILOT's shipped pool): tasks past the tenth share prompts (a warning says so);
  ``auto`` gives max(10, T) prompts, one per task.
- the key/value reshape quirk (:func:`benchmark.models.peft.prefix.official_prefix_order`);
  ``dualprompt_permute_fix=true`` gives every sample its own correct key/value pair.

Neither PILOT nor the official DualPrompt code ships a CUB-200, ObjectNet, OmniBenchmark or DomainNet config
(CODA-Prompt's ``experiments/domainnet.sh`` runs its own DualPrompt variant): those take PILOT's ImageNet-R recipe.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.errors import ClbenchError
from benchmark.learners.prompt import KeyMatchingConfig, KeyMatchingLearner
from benchmark.method import ParameterReport, Task, count_parameters, imagenet_r_recipe
from benchmark.models.backbones import cls_feature, embed_tokens, run_blocks
from benchmark.models.peft.prefix import attach_prefix, official_prefix_order, prefixes_set
from benchmark.models.peft.prompts import PromptPool, Selection
from benchmark.registry import register_method

logger = logging.getLogger(__name__)

PILOT_BACKBONE = "vit_base_patch16_224.augreg_in21k_ft_in1k"
PILOT_POOL_SIZE = 10
_INR = {"epochs": 10, "batch_size": 24, "lr": 0.001}


@dataclass
class DualPromptConfig(KeyMatchingConfig):
    """DualPrompt hyper-parameters; class defaults are PILOT ``exps/dualprompt.json`` (CIFAR-100)."""

    batch_size: int = 24
    epochs: int = 5
    lr: float = 0.001
    g_prompt_length: int = 5
    """Lg: key tokens (and as many value tokens) per head that the G-prompt adds in each of its blocks."""
    e_prompt_length: int = 5
    """Le: the same for an E-prompt."""
    g_prompt_blocks: tuple[int, ...] = (0, 1)
    """Blocks with the G-prompt prefix (``--set g_prompt_blocks=0;1``)."""
    e_prompt_blocks: tuple[int, ...] = (2, 3, 4)
    """Blocks with the selected E-prompt's prefix."""
    e_pool_size: str = str(PILOT_POOL_SIZE)
    """Number of E-prompts: an integer, or ``auto`` = max(10, number of tasks)."""
    dualprompt_permute_fix: bool = False
    """False reproduces the official key/value reshape quirk; true orders key and value prefixes correctly."""
    defaults_source: str = "PILOT exps/dualprompt.json"

    def validate(self) -> None:
        super().validate()
        if self.e_pool_size != "auto" and not (self.e_pool_size.isdigit() and int(self.e_pool_size) > 0):
            raise ClbenchError(f"e_pool_size must be a positive integer or 'auto', got '{self.e_pool_size}'")
        if set(self.g_prompt_blocks) & set(self.e_prompt_blocks):
            raise ClbenchError("g_prompt_blocks and e_prompt_blocks must not share a block")

    def resolved_pool_size(self, num_tasks: int) -> int:
        """M for a stream of ``num_tasks`` tasks."""
        if self.e_pool_size == "auto":
            return max(PILOT_POOL_SIZE, num_tasks)
        return int(self.e_pool_size)


@register_method("dualprompt")
class DualPrompt(KeyMatchingLearner):
    """G-prompt + E-prompt pool by prefix tuning, key matching (top-1), task-masked head on a frozen ViT."""

    config_class = DualPromptConfig
    default_cfgs = {
        "cifar100": {"epochs": 5, "batch_size": 24, "lr": 0.001, "defaults_source": "PILOT exps/dualprompt.json"},
        "imr": {**_INR, "defaults_source": "PILOT exps/dualprompt_inr.json"},
        "ima": {**_INR, "defaults_source": "harness choice: PILOT exps/dualprompt_inr.json values (no official "
                                           "ImageNet-A config; what CL-LoRA ran is UNCONFIRMED)"},
        "vtab": {**_INR, "defaults_source": "harness choice: PILOT exps/dualprompt_inr.json values (no official "
                                            "VTAB config; what CL-LoRA ran is UNCONFIRMED)"},
        **imagenet_r_recipe(_INR, "PILOT exps/dualprompt_inr.json", ("cub", "objnet", "omni", "domainnet")),
        "digits": {"epochs": 5, "batch_size": 32, "lr": 0.01, "g_prompt_blocks": (0, 1),
                   "e_prompt_blocks": (2, 3),
                   "defaults_source": "ours, for the tiny 4-block digits ViT (not official): G in blocks 0-1, "
                                      "E in blocks 2-3"},
    }
    default_backbones = {family: PILOT_BACKBONE
                         for family in ("cifar100", "imr", "ima", "vtab", "cub", "objnet", "omni", "domainnet")}

    def __init__(self, backbone, hparams: DualPromptConfig, **kwargs) -> None:
        super().__init__(backbone, hparams, **kwargs)
        vit = self.backbone
        depth = len(vit.blocks)
        if any(not 0 <= block < depth for block in (*hparams.g_prompt_blocks, *hparams.e_prompt_blocks)):
            raise ClbenchError(f"prompt blocks must lie in [0, {depth}) for this backbone")
        heads = vit.blocks[0].attn.num_heads
        head_dim = vit.embed_dim // heads
        self.g_wrappers = attach_prefix(vit, hparams.g_prompt_blocks)
        self.e_wrappers = attach_prefix(vit, hparams.e_prompt_blocks)
        generator = self.make_generator(1)
        g_shape = (len(hparams.g_prompt_blocks), 2, hparams.g_prompt_length, heads, head_dim)
        self.g_prompt = nn.Parameter(torch.empty(g_shape).uniform_(-1, 1, generator=generator))
        pool_size = hparams.resolved_pool_size(self.num_tasks)
        e_shape = (len(hparams.e_prompt_blocks), 2, hparams.e_prompt_length, heads, head_dim)
        self.e_pool = PromptPool(pool_size, e_shape, vit.embed_dim, top_k=1, generator=generator)
        if self.num_tasks > pool_size:
            logger.warning("DualPrompt: %d tasks but %d E-prompts: tasks %d and later have no prompt of their "
                           "own and share prompts chosen by key matching (e_pool_size=auto gives one per task)",
                           self.num_tasks, pool_size, pool_size + 1)
        self.to(self.device)

    def train_task(self, task: Task) -> None:
        """Start E-prompt t from E-prompt t-1 (while the pool has a slot per task), then train."""
        if 0 < task.index < self.e_pool.pool_size:
            with torch.no_grad():
                self.e_pool.prompts[task.index] = self.e_pool.prompts[task.index - 1]
        super().train_task(task)

    def select_e_prompt(self, query: torch.Tensor, task_index: int | None) -> Selection:
        """The task's own E-prompt in training (while one exists), else key matching (top-1)."""
        if task_index is not None and task_index < self.e_pool.pool_size:
            return self.e_pool.select(query, self.hparams.batchwise_prompt, forced=[task_index])
        return self.e_pool.select(query, self.hparams.batchwise_prompt)

    def prompted_forward(self, images: torch.Tensor, task_index: int | None) -> tuple[torch.Tensor, Selection]:
        """G prefixes in the G blocks, the selected E-prompt's prefixes in the E blocks, head on CLS."""
        vit = self.backbone
        selection = self.select_e_prompt(self.query(images), task_index)
        e_prefixes = self.e_pool.gather(selection)[:, 0].unbind(dim=1)
        if not self.hparams.dualprompt_permute_fix:
            e_prefixes = [official_prefix_order(prefix) for prefix in e_prefixes]
        g_prefixes = self.g_prompt.unsqueeze(1).unbind(dim=0)
        with prefixes_set(self.g_wrappers + self.e_wrappers, [*g_prefixes, *e_prefixes]):
            tokens = run_blocks(vit, embed_tokens(vit, images))
        return self.head(cls_feature(vit, tokens)), selection

    def parameter_report(self) -> ParameterReport:
        pool = self.e_pool
        g_count = self.g_prompt.numel()
        last_task = len(self.task_sizes) - 1
        if last_task < pool.pool_size:
            trained = g_count + pool.prompts[0].numel() + pool.keys[0].numel()
            notes = f"G-prompt + the task's E-prompt and key; E-pool of {pool.pool_size}"
        else:
            trained = g_count + count_parameters(pool.parameters())
            notes = (f"task {last_task + 1} has no E-prompt of its own (pool of {pool.pool_size}): any prompt and "
                     "key can be trained")
        return self.report(trained, notes + "; trainable (total) counts the whole C_total-class head")
