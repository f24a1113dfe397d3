"""APER w/ Adapter (``baselines/aper.py``) against more_baselines.md §2.9 and §2.5/§2.6."""
import math

import pytest
import torch

import benchmark.learners.adapter_tuning as adapter_tuning
from baselines.aper import APER, AperConfig
from baselines.simplecil import SimpleCIL, SimpleCILConfig
from benchmark.models.classifiers import CosinePrototypeClassifier, extract_features
from benchmark.config import resolve_hparams
from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run
from conftest import make_tasks, make_tiny_vit

NUM_TASKS, CLASSES = 3, 2


def build(overrides=None, seed=0):
    hparams = resolve_hparams(AperConfig, APER.family_defaults("digits"),
                              {"epochs": "2", "batch_size": "8", "lr": "0.1", **(overrides or {})})
    return APER(make_tiny_vit(seed), hparams, num_classes=NUM_TASKS * CLASSES, num_tasks=NUM_TASKS, seed=1993)


class Spy:
    """A loader wrapper that counts how often it is iterated."""

    def __init__(self, loader):
        self.loader, self.iterations = loader, 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


@pytest.fixture(scope="module")
def trained():
    """APER after three tasks, with snapshots taken after each task, the optimisers built and the head's σ."""
    torch.manual_seed(0)
    method = build()
    tasks, tests = make_tasks(NUM_TASKS, CLASSES, per_class=8, batch_size=8)
    optimizers, heads, snapshots, spies = [], [], [], []
    original_build, original_keep = adapter_tuning.build_optimizer, method.keep_first_head

    def counting_build(*args, **kwargs):
        optimizers.append(args)
        return original_build(*args, **kwargs)

    adapter_tuning.build_optimizer = counting_build
    method.keep_first_head = lambda head: (heads.append(head), original_keep(head))
    try:
        for task in tasks:
            task.train_loader, task.train_eval_loader = Spy(task.train_loader), Spy(task.train_eval_loader)
            spies.append((task.train_loader, task.train_eval_loader))
            method.train()
            method.learn(task)
            method.eval()
            snapshots.append(([p.detach().clone() for p in method.adapter_parameters()],
                              method.classifier.prototypes.clone()))
    finally:
        adapter_tuning.build_optimizer = original_build
    return method, tasks, tests, optimizers, heads, snapshots, spies


def test_untrained_aper_equals_simplecil():
    tasks, tests = make_tasks(NUM_TASKS, CLASSES, per_class=8, batch_size=8)
    aper = build({"epochs": "0"})
    simple = SimpleCIL(make_tiny_vit(0), SimpleCILConfig(), num_classes=6, num_tasks=3)
    images = torch.cat([test.tensors[0] for test in tests])
    for task in tasks:
        aper.learn(task)
        simple.learn(task)
        with torch.inference_mode():
            assert (aper.predict(images) - simple.predict(images)).abs().max() <= 1e-6


def test_whole_vector_normalisation():
    method = build()
    method.classifier = CosinePrototypeClassifier(4)
    method.classifier.add(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    method.merged_features = lambda images: torch.tensor([[3.0, 0.0, 0.0, 4.0]])
    logit = method.predict(torch.zeros(1, 3, 32, 32))
    assert logit.item() == pytest.approx(7 / (5 * math.sqrt(2)), abs=1e-6)  # 0.98995, not the per-branch mean 1.0


def test_merged_feature_is_pretrained_then_adapted(trained):
    method, tasks, *_ = trained
    images = tasks[0].train_eval_loader.loader.dataset.tensors[0][:4]
    reference = make_tiny_vit(0)
    with torch.inference_mode():
        merged = method.merged_features(images)
        assert merged.shape == (4, 128)
        assert torch.allclose(merged[:, :64], reference(images), atol=1e-5)
        assert torch.allclose(merged[:, 64:], method.adapted_features(images), atol=1e-5)
        assert not torch.allclose(merged[:, 64:], merged[:, :64], atol=1e-3)  # the adapters did train


def test_only_the_first_task_trains(trained):
    method, _, _, optimizers, _, snapshots, spies = trained
    assert len(optimizers) == 1
    first_adapters = snapshots[0][0]
    for adapters, _ in snapshots[1:]:
        assert all(torch.equal(a, b) for a, b in zip(first_adapters, adapters))
    assert all(not p.requires_grad for p in method.adapter_parameters())
    assert [train.iterations for train, _ in spies] == [2, 0, 0]  # 2 epochs in task 1, nothing later


def test_old_prototypes_are_frozen_and_rows_appended(trained):
    _, _, _, _, _, snapshots, _ = trained
    sizes = [prototypes.shape for _, prototypes in snapshots]
    assert sizes == [(2, 128), (4, 128), (6, 128)]
    assert torch.equal(snapshots[2][1][:2], snapshots[0][1]) and torch.equal(snapshots[2][1][:4], snapshots[1][1])


def test_prototypes_come_from_the_test_transform_loader(trained):
    method, tasks, _, _, _, snapshots, spies = trained
    assert [evaluation.iterations for _, evaluation in spies] == [1, 1, 1]
    features, labels = extract_features(method.merged_features, tasks[2].train_eval_loader.loader, method.device)
    expected = torch.stack([features[labels == c].mean(0) for c in tasks[2].classes])
    assert torch.allclose(snapshots[2][1][4:], expected, atol=1e-5)


def test_merged_sigma_is_one(trained):
    method, _, tests, _, heads, _, _ = trained
    assert len(heads) == 1 and heads[0].sigma.item() != 1.0  # the training head's σ moved...
    images = torch.cat([test.tensors[0] for test in tests])
    with torch.inference_mode():
        logits = method.predict(images)
    assert logits.abs().max() <= 1 + 1e-6  # ...but the merged classifier's is 1


def test_batched_branches_equal_two_passes(trained):
    method, _, tests, *_ = trained
    images = torch.cat([test.tensors[0] for test in tests])
    with torch.inference_mode():
        batched = method.predict(images)
        method.hparams.batch_branches = False
        try:
            separate = method.predict(images)
        finally:
            method.hparams.batch_branches = True
    assert (batched - separate).abs().max() <= 1e-4
    assert torch.equal(batched.argmax(1), separate.argmax(1))


def test_recipes_and_overrides():
    imr = resolve_hparams(AperConfig, APER.family_defaults("imr"), {})
    assert (imr.epochs, imr.batch_size, imr.lr, imr.weight_decay, imr.bottleneck) == (20, 24, 0.05, 5e-3, 64)
    assert "imagenetr_5_5" in imr.defaults_source
    pilot = resolve_hparams(AperConfig, APER.family_defaults("imr"), {"aper_recipe": "pilot", "epochs": "3"})
    assert (pilot.epochs, pilot.batch_size, pilot.lr) == (3, 16, 0.05)
    cifar = resolve_hparams(AperConfig, APER.family_defaults("cifar100"), {})
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.weight_decay) == (20, 48, 0.01, 5e-4)
    assert APER.default_backbones["imr"] == "vit_base_patch16_224.augreg_in21k"


def test_parameter_counts_tiny():
    assert build().parameter_report().trainable_task == 4 * (64 * 8 + 8 + 8 * 64 + 64) == 4_384
    assert build({"bottleneck": "64"}).parameter_report().trainable_task == 33_280


@pytest.mark.parametrize("bench, head, stored", [("imr_t40", 3_841, 1_189_632 + 1_536 * 200),
                                                 ("ima_t10", 15_361, 1_189_632 + 1_536 * 200)])
def test_parameter_counts_vit_b16(bench, head, stored):
    report = describe_parameters(resolve_run(RunRequest(bench=bench, method="aper")))
    assert report["backbone"] == 85_798_656
    assert (report["trainable_task"], report["head"], report["trainable_total"], report["stored"]) == (
        1_189_632, head, 1_189_632 + head, stored)
    assert round(report["trainable_task_pct"], 2) == 1.39
