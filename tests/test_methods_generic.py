"""Every registered method (built-in or plugin) on a tiny ViT and a tiny synthetic stream, as timm tests
every registered model: it trains, predicts over the seen classes, restores its state to identical
predictions, reports parameters consistently and leaves the pretrained backbone untouched."""
import dataclasses

import pytest
import torch

from benchmark.config import resolve_hparams
from benchmark.method import backbone_size
from benchmark.registry import METHODS
from conftest import make_tasks, make_tiny_vit

NUM_TASKS, CLASSES_PER_TASK = 2, 2


def build(name: str, seed: int = 0, backbone: torch.nn.Module | None = None):
    method_class = METHODS.get(name)
    defaults = method_class.family_defaults("digits")
    fields = {field.name for field in dataclasses.fields(method_class.config_class)}
    fast = {key: value for key, value in {"epochs": 1, "batch_size": 8}.items() if key in fields}
    hparams = resolve_hparams(method_class.config_class, {**defaults, **fast}, {})
    return method_class(backbone if backbone is not None else make_tiny_vit(seed), hparams,
                        num_classes=NUM_TASKS * CLASSES_PER_TASK,
                        num_tasks=NUM_TASKS, device="cpu", seed=1993)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name):
    torch.manual_seed(0)
    method = build(name)
    pretrained = {key: value.clone() for key, value in make_tiny_vit(0).state_dict().items()}
    tasks, _ = make_tasks(NUM_TASKS, CLASSES_PER_TASK, per_class=8, batch_size=8)
    probe = torch.rand(5, 3, 32, 32)
    for task in tasks:
        method.train()
        method.learn(task)
        method.eval()
        with torch.inference_mode():
            logits = method.predict(probe)
        assert logits.shape == (5, task.seen_classes)
        assert torch.isfinite(logits).all()

    restored = build(name)
    restored.load_state_dict(method.state_dict())
    restored.eval()
    with torch.inference_mode():
        assert torch.equal(restored.predict(probe), method.predict(probe))
    assert restored.task_sizes == method.task_sizes

    report = method.parameter_report()
    assert report.backbone == backbone_size(make_tiny_vit(0))
    assert min(report.trainable_task, report.head, report.trainable_total, report.stored) >= 0
    assert isinstance(report.notes, str) and len(report.notes) > 20  # `bench params` explains every count
    if not getattr(method, "trains_backbone", False):
        current = {key.replace(".qkv.qkv.", ".qkv.").replace(".attn.attn.", ".attn.")
                   .replace(".mlp.norm.", ".norm2.").replace(".mlp.mlp.", ".mlp."): value
                   for key, value in method.backbone.state_dict().items()}
        for key, value in pretrained.items():
            assert torch.equal(current[key], value), f"{name} changed pretrained tensor {key}"


@pytest.mark.parametrize("name", METHODS.names())
def test_restore_structure_matches_trained_shapes(name):
    trained = build(name)
    tasks, _ = make_tasks(NUM_TASKS, CLASSES_PER_TASK, per_class=4, batch_size=8)
    for task in tasks:
        trained.learn(task)
    fresh = build(name)
    fresh.restore_structure(list(trained.task_sizes))
    shapes = {key: tuple(value.shape) for key, value in trained.state_dict().items() if torch.is_tensor(value)}
    fresh_shapes = {key: tuple(value.shape) for key, value in fresh.state_dict().items() if torch.is_tensor(value)}
    # DualGPM bases (InfLoRA) have a data-dependent width: their count is structure, their width is not.
    data_sized = {key for key in shapes if ".basis_" in key}
    assert {key: shape for key, shape in fresh_shapes.items() if key not in data_sized} == \
        {key: shape for key, shape in shapes.items() if key not in data_sized}
    # what is frozen after the tasks is frozen in the restored structure too (what a resumed task may train)
    assert {key: p.requires_grad for key, p in fresh.named_parameters()} == \
        {key: p.requires_grad for key, p in trained.named_parameters()}


GLOBAL_RNG_INIT = {"finetune": {"head.weight", "head.bias"}}
"""Tensors drawn from the global RNG (which the runner seeds with the run's seed before building the method):
fine-tuning's head keeps ``nn.Linear``'s own init."""


@pytest.mark.parametrize("name", METHODS.names())
def test_initial_state_depends_on_the_seed_only(name):
    """A method draws its initial tensors from its own seeded generators, not from the global RNG: two builds
    under different global RNG states are identical (a resumed or reordered run gets the same adapters)."""
    states = []
    for global_seed in (1, 2):
        vit = make_tiny_vit(0)  # (reseeds the global RNG itself)
        torch.manual_seed(global_seed)
        states.append(build(name, backbone=vit).state_dict())
    first, second = states
    assert first.keys() == second.keys()
    for key, value in first.items():
        if torch.is_tensor(value) and key not in GLOBAL_RNG_INIT.get(name, set()):
            assert torch.equal(value, second[key]), f"{name}: {key} depends on the global RNG"
