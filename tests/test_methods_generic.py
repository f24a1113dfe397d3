"""Every registered method (built-in or plugin) against the conformance kit (``benchmark.testing``), one test per
rule, as timm tests every registered model; plus what the kit leaves to the harness's own reports."""
import dataclasses

import pytest
import torch

from benchmark.config import resolve_hparams
from benchmark.method import backbone_size
from benchmark.registry import METHODS
from benchmark.testing import RULES, check_rule
from benchmark.testing.contract import trial
from conftest import make_tiny_vit

NUM_TASKS, CLASSES_PER_TASK = 2, 2


def build(name: str, seed: int = 0, backbone: torch.nn.Module | None = None):
    """A registered method on a tiny ViT with its digits defaults, one epoch and batch 8 (for other tests)."""
    method_class = METHODS.get(name)
    defaults = method_class.family_defaults("digits")
    fields = {field.name for field in dataclasses.fields(method_class.config_class)}
    fast = {key: value for key, value in {"epochs": 1, "batch_size": 8}.items() if key in fields}
    hparams = resolve_hparams(method_class.config_class, {**defaults, **fast}, {})
    return method_class(backbone if backbone is not None else make_tiny_vit(seed), hparams,
                        num_classes=NUM_TASKS * CLASSES_PER_TASK,
                        num_tasks=NUM_TASKS, device="cpu", seed=1993)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, rule):
    check_rule(METHODS.get(name), rule)


@pytest.mark.parametrize("name", METHODS.names())
def test_parameter_report_explains_its_counts(name):
    report = trial(METHODS.get(name), {}).method.parameter_report()
    assert report.backbone == backbone_size(make_tiny_vit(0))
    assert min(report.trainable_task, report.head, report.trainable_total, report.stored) >= 0
    assert isinstance(report.notes, str) and len(report.notes) > 20  # `bench params` explains every count
