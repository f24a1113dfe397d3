"""The per-task-LoRA learner that InfLoRA and O-LoRA share (``benchmark/learners/task_lora.py``,
``inflora_olora.md`` §1, §3.3): frozen tensors and concatenated heads for both methods, stacking and merging of
frozen branches, the lagged CODA cosine schedule it trains with, and a short ``digits_t5`` run of each method."""
import copy
import math

import numpy as np
import pytest
import torch

from baselines.inflora import InfLoRA, InfLoRAConfig
from baselines.olora import OLoRA, OLoRAConfig
from benchmark.cli import main
from benchmark.config import resolve_hparams
from benchmark.reporting.metrics import accuracy_percent
from benchmark.models.peft.lora import attach_lora
from benchmark.training import build_optimizer, build_scheduler
from conftest import make_tasks, make_tiny_vit


def build(method_class, config_class, num_tasks=3, **overrides):
    hparams = resolve_hparams(config_class, {**method_class.family_defaults("digits"), **overrides}, {})
    return method_class(make_tiny_vit(0), hparams, num_classes=2 * num_tasks, num_tasks=num_tasks, device="cpu",
                        seed=1993)


@pytest.mark.parametrize("method_class, config_class", [(InfLoRA, InfLoRAConfig), (OLoRA, OLoRAConfig)])
def test_keeps_frozen_tensors_and_concatenates_heads(method_class, config_class):
    torch.manual_seed(0)
    method = build(method_class, config_class, epochs=1, batch_size=8)
    tasks, tests = make_tasks(3, 2, per_class=12, batch_size=8)
    method.learn(tasks[0])
    first_branch = copy.deepcopy([layer.branches[-1] for layer in method.lora_layers])
    first_head = copy.deepcopy(method.heads.heads[0])
    for task in tasks[1:]:
        method.learn(task)
    for layer, branch in zip(method.lora_layers, first_branch):
        stacked = layer.branches[0]  # finished tasks are stacked: task 0 holds the first rows/columns
        rank = branch.rank
        assert torch.equal(stacked.down[:, :rank], branch.down) and torch.equal(stacked.up[:, :, :rank], branch.up)
    assert torch.equal(method.heads.heads[0].weight, first_head.weight)
    method.eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        features = method.backbone(images)
        expected = torch.cat([head(features) for head in method.heads.heads], dim=1)
        assert torch.equal(method.predict(images), expected) and expected.shape == (4, 6)


def test_stacking_and_merging_frozen_branches_keep_outputs():
    vit = make_tiny_vit(0)
    layer = attach_lora(vit, [0])[0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        branch = layer.add_branch(4, ("k", "v"), "kaiming_uniform", generator)
        torch.nn.init.normal_(branch.up, generator=generator)
    x = torch.randn(2, 5, 64)
    reference = layer(x)
    stacked = copy.deepcopy(layer)
    stacked.stack_branches([0, 1, 2])
    assert len(stacked.branches) == 1 and torch.allclose(stacked(x), reference, atol=1e-5)
    merged = copy.deepcopy(layer)
    for _ in range(3):
        merged.merge_branch(0)
    assert len(merged.branches) == 0 and torch.allclose(merged(x), reference, atol=1e-4)


def epoch_rates(name: str, epochs: int, base: float) -> list[float]:
    """The lr each epoch trains with under ``build_scheduler(name)``, stepped once per epoch."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([parameter], "adam", base)
    scheduler = build_scheduler(optimizer, name, epochs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_coda_cosine_schedule_lags_one_epoch_as_the_official_scheduler():
    rates = epoch_rates("coda_cosine", 20, 5e-4)
    # epoch 0 at base, epoch e >= 1 at base cos(99 pi (e - 1) / (200 (K - 1)))
    expected = [5e-4] + [5e-4 * math.cos(99 * math.pi * (e - 1) / (200 * 19)) for e in range(1, 20)]
    assert rates == pytest.approx(expected, rel=1e-9)
    assert rates[0] == rates[1] == 5e-4
    assert rates[-1] == pytest.approx(0.0974 * 5e-4, rel=1e-3)  # the spec's 0.097: cos(99 pi 18 / 3800)
    assert epoch_rates("coda_cosine", 50, 1.0)[-1] == pytest.approx(0.0474, abs=1e-4)  # the spec's 0.047
    assert epoch_rates("coda_cosine", 1, 1e-3) == [1e-3]  # K = 1: no division by zero, the base rate


def test_coda_cosine_is_not_cosine_annealing():
    annealing = epoch_rates("cosine", 20, 5e-4)
    assert annealing[1] < annealing[0] and epoch_rates("coda_cosine", 20, 5e-4)[1] == annealing[0]


@pytest.mark.parametrize("method", ["inflora", "olora"])
def test_short_digits_run_learns(method, tmp_path):
    assert main(["run", "--methods", method, "--bench", "digits_t5", "--max-tasks", "3", "--results-dir",
                 str(tmp_path), "--quiet", "--workers", "0"]) == 0
    run_dir = tmp_path / "digits_t5" / method / "seed1993"
    with np.load(run_dir / "predictions" / "task2.npz") as data:
        accuracy_after_three_tasks = accuracy_percent(int((data["top5"][:, 0] == data["labels"]).sum()),
                                                      len(data["labels"]))
    assert accuracy_after_three_tasks > 40  # 6 classes seen: chance is 16.7 %
