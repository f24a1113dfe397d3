"""EASE (baselines/ease.py) against ``prompt_baselines.md`` §6: hand computations of semantic completion and the
reweighting, prototypes per subspace, what trains in task t, batched inference equal to one pass per set."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.ease import (EASE, EASEConfig, SubspacePrototypes, concatenated_cosine, reweighted_logits,
                            semantic_completion, subspace_weights)
from benchmark.models.classifiers import extract_features
from benchmark.learners import adapter_tuning
from benchmark.method import SilentMonitor
from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run
from conftest import accuracy, make_tasks, make_tiny_vit

TINY = dict(epochs=1, batch_size=8, lr=0.05, bottleneck=4)


# -- plain tensors: the global classifier ---------------------------------------------------------------------
def test_subspace_weights_are_one_on_the_own_task_and_alpha_over_t_elsewhere():
    assert torch.equal(subspace_weights([2], 0.1), torch.ones(2, 1))
    expected = torch.tensor([[1.0, 0.05, 0.05],
                             [0.05, 1.0, 0.05],
                             [0.05, 1.0, 0.05],
                             [0.05, 0.05, 1.0]])
    assert torch.allclose(subspace_weights([1, 2, 1], 0.1), expected)
    # t is the last task's 0-based number: alpha / 1 with two tasks
    assert torch.allclose(subspace_weights([1, 1], 0.3), torch.tensor([[1.0, 0.3], [0.3, 1.0]]))


def test_reweighted_logits_by_hand():
    features = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])          # f_0(x) = (1, 0), f_1(x) = (0, 2); B = 1
    prototypes = torch.tensor([[[3.0, 0.0], [1.0, 1.0]],           # class 0 (task 0)
                               [[1.0, 1.0], [0.0, -1.0]]])         # class 1 (task 1)
    weights = subspace_weights([1, 1], alpha=0.1)
    logits = reweighted_logits(features, prototypes, weights)
    s = 1 / math.sqrt(2)
    # class 0: 1 * cos(f0, (3,0)) + 0.1 * cos(f1, (1,1));  class 1: 0.1 * cos(f0, (1,1)) + 1 * cos(f1, (0,-1))
    assert torch.allclose(logits, torch.tensor([[1.0 + 0.1 * s, 0.1 * s - 1.0]]))
    # without reweighting: the cosine of the concatenations (1, 0, 0, 2) and (3, 0, 1, 1) / (1, 1, 0, -1)
    plain = concatenated_cosine(features, prototypes)
    assert torch.allclose(plain, torch.tensor([[5 / (math.sqrt(5) * math.sqrt(11)), -1 / (math.sqrt(5) * math.sqrt(3))]]))


def test_semantic_completion_two_tasks_by_hand():
    w = torch.zeros(3, 2, 2)
    w[0, 0] = torch.tensor([1.0, 0.0])                            # task 0: one class, measured in subspace 0 only
    w[1] = torch.tensor([[1.0, 0.0], [3.0, 0.0]])                 # task 1: two classes, both subspaces
    w[2] = torch.tensor([[0.0, 2.0], [0.0, 5.0]])
    semantic_completion(w, [1, 2])
    e = math.e
    # softmax over n in task 1 of cos(W[0,0], W[n,0]) = softmax(1, 0), then the mix of W[n, 1]
    assert torch.allclose(w[0, 1], torch.tensor([3 * e / (e + 1), 5 / (e + 1)]))
    assert torch.equal(w[1:, :], torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 5.0]]]))


def three_task_prototypes() -> torch.Tensor:
    w = torch.full((3, 3, 2), 7.0)                                # 7: entries completion must (re)write
    w[0, 0] = torch.tensor([1.0, 0.0])
    w[1, 0], w[1, 1] = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0])
    w[2, 0], w[2, 1], w[2, 2] = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 4.0]), torch.tensor([-1.0, 3.0])
    return w


def test_semantic_completion_classes_and_subspaces():
    w = three_task_prototypes()
    semantic_completion(w, [1, 1, 1])
    # (i=0, j=1): N = classes of tasks 1..2, cosines in subspace 0: cos((1,0),(0,1)) = 0, cos((1,0),(1,1)) = 1/sqrt2
    p = torch.softmax(torch.tensor([0.0, 1 / math.sqrt(2)]), dim=0)
    assert torch.allclose(w[0, 1], p[0] * torch.tensor([2.0, 0.0]) + p[1] * torch.tensor([0.0, 4.0]))
    # (i=0, j=2) and (i=1, j=2): N = the class of task 2 alone, so a softmax over one class copies it
    assert torch.allclose(w[0, 2], torch.tensor([-1.0, 3.0]))
    assert torch.allclose(w[1, 2], torch.tensor([-1.0, 3.0]))
    # measured prototypes are untouched
    assert torch.equal(w[2], torch.tensor([[1.0, 1.0], [0.0, 4.0], [-1.0, 3.0]]))
    assert torch.equal(w[1, :2], torch.tensor([[0.0, 1.0], [2.0, 0.0]]))


def test_semantic_completion_without_recalc_only_fills_the_newest_subspace():
    w = three_task_prototypes()
    semantic_completion(w, [1, 1, 1], recompute=False)
    assert torch.equal(w[0, 1], torch.tensor([7.0, 7.0]))          # kept from the previous task
    assert torch.allclose(w[0, 2], torch.tensor([-1.0, 3.0]))
    assert torch.allclose(w[1, 2], torch.tensor([-1.0, 3.0]))


def test_classifier_grows_by_one_subspace_and_keeps_old_entries():
    classifier = SubspacePrototypes(2)
    classifier.expand(2)
    classifier.weight[:] = 1.0
    classifier.expand(3)
    assert classifier.weight.shape == (5, 2, 2)
    assert torch.equal(classifier.weight[:2, :1], torch.ones(2, 1, 2))
    assert torch.equal(classifier.weight[:2, 1:], torch.zeros(2, 1, 2))
    assert torch.equal(classifier.weight[2:], torch.zeros(3, 2, 2))


# -- the method on a tiny ViT ------------------------------------------------------------------------------
def make_method(num_tasks: int = 3, seed: int = 0, **overrides) -> EASE:
    hparams = EASEConfig(**{**TINY, **overrides})
    return EASE(make_tiny_vit(seed), hparams, num_classes=num_tasks * 2, num_tasks=num_tasks)


def randomise_adapters(method: EASE, seed: int = 0) -> None:
    """Non-zero up-projections and biases everywhere (fresh adapters output zero, hiding routing mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in method.named_parameters():
            if ".adapters." in name and not name.endswith("down.weight"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)


class OptimizerSpy(SilentMonitor):
    """Records, when training starts, the optimiser's tensors and the local head's, and the lr after each epoch
    (the optimiser is the one ``benchmark.learners.adapter_tuning`` builds, caught through ``build_optimizer``)."""

    def __init__(self, monkeypatch) -> None:
        self.optimizer, self.trained, self.head, self.lrs = None, set(), set(), []
        real = adapter_tuning.build_optimizer

        def recording(parameters, *args, **kwargs):
            parameters = list(parameters)
            self.optimizer = real(parameters, *args, **kwargs)
            self.head = {id(p) for p in parameters[-2:]}  # the head's weight and σ come last
            return self.optimizer

        monkeypatch.setattr(adapter_tuning, "build_optimizer", recording)

    def start_epochs(self, epochs: int, batches_per_epoch: int) -> None:
        self.trained = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        weight, sigma = [p for p in self.optimizer.param_groups[0]["params"] if id(p) in self.head]
        assert weight.shape == (2, 64) and sigma.item() == 1.0

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        self.lrs.append(self.optimizer.param_groups[0]["lr"])


def test_task_trains_only_its_adapter_set_and_local_head_with_cosine_annealing(monkeypatch):
    tasks, _ = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2, epochs=4)
    pretrained = {k: v.clone() for k, v in method.backbone.state_dict().items() if ".adapters." not in k}
    method.train()
    method.learn(tasks[0])
    randomise_adapters(method)
    old_set = [p.detach().clone() for p in method.set_parameters(0)]
    spy = OptimizerSpy(monkeypatch)
    tasks[1].monitor = spy
    method.learn(tasks[1])
    assert len(spy.head) == 2                                          # head weight and its sigma
    assert spy.trained == {id(p) for p in method.set_parameters(1)} | spy.head
    assert not any(id(p) in spy.head for p in method.parameters())     # the local head is discarded
    assert all(torch.equal(p, q) for p, q in zip(method.set_parameters(0), old_set))
    assert all(torch.equal(v, pretrained[k]) for k, v in method.backbone.state_dict().items() if k in pretrained)
    assert not any(p.requires_grad for p in method.parameters())       # set 1 frozen after its task
    ups = [w.adapters[1].up.weight for w in method.wrappers]
    assert all(up.abs().sum() > 0 for up in ups)                        # set 1 trained away from zero
    lr = 0.05
    assert spy.lrs == pytest.approx([lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)], abs=1e-12)


def test_prototypes_per_subspace_and_completion_of_old_classes():
    tasks, _ = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2, epochs=2, lr=0.2)
    method.train()
    for task in tasks:
        method.learn(task)
    method.eval()
    w = method.classifier.weight
    assert w.shape == (4, 2, 64)

    def class_means(index: int, task) -> dict[int, torch.Tensor]:
        features, labels = extract_features(lambda x: method.set_feature(x, index), task.train_eval_loader, "cpu")
        return {c: features[labels == c].mean(0) for c in task.classes}

    new0, new1, old0 = class_means(0, tasks[1]), class_means(1, tasks[1]), class_means(0, tasks[0])
    for c in (2, 3):                                                    # current classes: measured in every subspace
        assert torch.allclose(w[c, 0], new0[c], atol=1e-5) and torch.allclose(w[c, 1], new1[c], atol=1e-5)
        assert (new0[c] - new1[c]).abs().max() > 1e-3                   # the two subspaces really differ
    for c in (0, 1):                                                    # old classes: measured in their own subspace,
        assert torch.allclose(w[c, 0], old0[c], atol=1e-5)              # completed in the new one
        mix = torch.softmax(torch.stack([F.cosine_similarity(old0[c], new0[n], dim=0) for n in (2, 3)]), dim=0)
        assert torch.allclose(w[c, 1], mix[0] * new1[2] + mix[1] * new1[3], atol=1e-5)


def trained_method(num_tasks: int = 3, randomise: bool = True, **overrides) -> tuple[EASE, list]:
    tasks, tests = make_tasks(num_tasks, 2, per_class=8)
    method = make_method(num_tasks=num_tasks, **overrides)
    method.train()
    for task in tasks:
        method.learn(task)
    if randomise:
        randomise_adapters(method, seed=3)
    method.eval()
    return method, tests


@pytest.mark.parametrize("limit", [None, 0, 1, 2])
def test_batched_sets_equal_one_pass_per_set(limit):
    method, _ = trained_method(max_sets_per_pass=limit)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        batched = method.set_features(images)
        reference = torch.stack([method.set_feature(images, j) for j in range(3)])
    assert batched.shape == (3, 5, 64)
    assert (batched - reference).abs().max() <= 1e-5


def test_predict_is_the_reweighted_subspace_cosine():
    method, _ = trained_method()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = method.predict(images)
        features = [method.set_feature(images, j) for j in range(3)]
    w = method.classifier.weight
    expected = torch.zeros(4, 6)
    for c in range(6):
        own = c // 2
        for j in range(3):
            weight = 1.0 if j == own else 0.1 / 2
            expected[:, c] += weight * F.cosine_similarity(features[j], w[c, j].expand(4, -1), dim=1)
    assert (logits - expected).abs().max() <= 1e-5


def test_learns_above_chance():
    method, tests = trained_method(randomise=False, epochs=2)
    assert accuracy(method, tests) > 50.0                               # chance: 1/6


def test_vit_b16_parameter_counts():
    report = describe_parameters(resolve_run(RunRequest(bench="imr_t40", method="ease")))
    assert report["backbone"] == 85_798_656
    assert report["trainable_task"] == 1_189_632 == 12 * (768 * 64 + 64 + 64 * 768 + 768)
    assert report["trainable_task_pct"] == round(100 * 1_189_632 / 85_798_656, 4)   # 1.3865 -> "1.4 %"
    assert report["head"] == 768 * 5 + 1
    assert report["stored"] == 40 * 1_189_632 + 200 * 768 * 40


def test_vtab_bottleneck_16_parameter_count():
    run = resolve_run(RunRequest(bench="vtab_t5", method="ease"))
    assert run.hparams.bottleneck == 16 and run.backbone == "vit_base_patch16_224.augreg_in21k"
    report = describe_parameters(run)
    assert report["trainable_task"] == 304_320
    assert report["stored"] == 5 * 304_320 + 50 * 768 * 5


def test_reweight_switch_scores_the_concatenated_cosine():
    method, _ = trained_method()
    method.hparams.reweight = False
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        logits = method.predict(images)
        features = torch.cat([method.set_feature(images, j) for j in range(3)], dim=1)
    expected = F.normalize(features, dim=1) @ F.normalize(method.classifier.weight.flatten(1), dim=1).T
    assert (logits - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("recalc", [True, False])
def test_recalc_sim_recomputes_older_completions_each_task(recalc):
    tasks, _ = make_tasks(3, 2, per_class=8)
    method = make_method(recalc_sim=recalc)
    method.train()
    method.learn(tasks[0])
    method.learn(tasks[1])
    before = method.classifier.weight.clone()
    method.learn(tasks[2])
    after = method.classifier.weight
    assert torch.equal(after[:2, 0], before[:2, 0]) and torch.equal(after[2:4, :2], before[2:4])  # measured
    changed = (after[:2, 1] - before[:2, 1]).abs().max() > 1e-6      # N of (task 0, subspace 1) now holds task 2
    assert changed == recalc
