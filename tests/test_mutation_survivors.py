"""Behaviours the specs require that a planted bug once changed without any test failing.

Each test here is the one that kills such a bug (a detached loss term, an off-by-one task index, the wrong
token read, an unstable sort, metrics on the unrounded matrix, a non-atomic write, a scheduler stepped per
batch). ``make mutants`` finds new survivors; a test that kills one goes here unless a module's own test file
is the more natural home.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.inflora import InfLoRA, InfLoRAConfig
from baselines.l2p import L2P, L2PConfig
from benchmark.config import resolve_hparams
from benchmark.reporting.metrics import Evaluation, compute_metrics
from benchmark.models.peft.gpm import DualGPM
from benchmark.models.peft.prompts import embed_with_prompts, frozen_query
from benchmark.store.results import atomic_write_bytes, atomic_write_json
from benchmark.data.streams import build_stream
from benchmark.training import run_epochs
from conftest import make_tasks, make_tiny_vit
from test_cl_lora import at_second_task, reference_update


# -- CL-LoRA: the orthogonality term reaches the block weights with the right gradient ---------------------------
def test_cl_lora_orthogonality_gradient_on_block_weights_by_hand():
    """dL/dw of L = mean_k |<w/(|w|+e), v_k>|, v_k = w_k/(|w_k|+e), written out (cl_lora.md, 'Orthogonality loss
    as coded'); a detached or sign-flipped term changes it."""
    method, _, images, labels = at_second_task()
    orth = method.losses(images, labels).orth
    scales = [branch.scale for branch in method._task_branches(1)]
    grads = torch.stack(torch.autograd.grad(orth, scales), dim=1).flatten()
    w = method.block_weight_tensor(1).detach().flatten().double()
    old = method.block_weight_tensor(0).detach().flatten().double()
    eps, norm = 1e-8, w.norm()
    v = old / (old.norm() + eps)
    sign = torch.sign((w / (norm + eps)) @ v)
    expected = sign * (v / (norm + eps) - w * (w @ v) / (norm * (norm + eps) ** 2))
    torch.testing.assert_close(grads.double(), expected, rtol=1e-4, atol=1e-7)
    assert expected.abs().max() > 1e-3  # a non-trivial gradient


def test_cl_lora_update_with_a_large_orthogonality_weight_matches_the_spec_port():
    """At the default 1e-4 the term is below the update test's tolerance; at 10 a flipped sign shows."""
    method, _, images, labels = at_second_task(orth_weight=10.0)
    expected = reference_update(method, images, labels)
    params = [p for group in method.optimizer.param_groups for p in group["params"]]
    method.training_step(images, labels)
    for param, value in zip(params, expected):
        torch.testing.assert_close(param.detach(), value, atol=1e-6, rtol=1e-5)


# -- InfLoRA: the DualGPM threshold of task t is used after task t ------------------------------------------------
def test_inflora_memory_after_each_task_uses_that_tasks_threshold():
    """The memory after task t equals a fresh DualGPM updated with eps_t = lamb + (lame - lamb) t / T on the same
    moments (inflora_olora.md, DualGPM schedule); with t + 1 the memory grows far larger on the tiny ViT."""
    num_tasks = 3
    tasks, _ = make_tasks(num_tasks, 2, per_class=8)
    hparams = resolve_hparams(InfLoRAConfig, {**InfLoRA.family_defaults("digits"), "epochs": 1}, {})
    method = InfLoRA(make_tiny_vit(0), hparams, num_classes=2 * num_tasks, num_tasks=num_tasks, device="cpu")
    recorded: list[tuple[list[torch.Tensor], float]] = []
    update = method.memory.update

    def recording_update(moments, threshold):
        recorded.append(([m.detach().clone() for m in moments], threshold))
        update(moments, threshold)

    method.memory.update = recording_update
    reference = DualGPM(len(method.lora_layers), method.backbone.num_features)
    for index, task in enumerate(tasks):
        method.learn(task)
        moments, threshold = recorded[index]
        expected_threshold = hparams.lamb + (hparams.lame - hparams.lamb) * index / num_tasks
        assert threshold == pytest.approx(expected_threshold, abs=1e-12)
        reference.update(moments, expected_threshold)
        assert method.memory.memory_dims() == reference.memory_dims()
        for layer in range(reference.num_layers):
            torch.testing.assert_close(method.memory.basis(layer), reference.basis(layer))


# -- L2P: the head reads the mean of the prompt positions' outputs -----------------------------------------------
def test_l2p_logits_are_the_head_on_the_mean_of_prompt_outputs():
    hparams = resolve_hparams(L2PConfig, L2P.family_defaults("digits"), {})
    method = L2P(make_tiny_vit(0), hparams, num_classes=4, num_tasks=2, device="cpu")
    with torch.no_grad():
        for parameter in method.pool.parameters():
            parameter.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    method.eval()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = method.prompted_forward(images, None)
        vit = method.backbone
        selection = method.pool.select(frozen_query(vit, images), hparams.batchwise_prompt)
        prompts = method.pool.gather(selection).flatten(1, 2)
        hidden = vit.norm(vit.blocks(embed_with_prompts(vit, images, prompts)))
        count = hparams.top_k * hparams.prompt_length
        expected = method.head(hidden[:, 1:1 + count].mean(dim=1))
        cls_logits = method.head(hidden[:, 0])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, cls_logits, atol=1e-3)


# -- streams: evaluation order inside a class is the original order ---------------------------------------------
def test_digits_evaluation_order_is_label_then_original_position():
    """On digits_t5 (many test images per class) the evaluation set is sorted by (label, original position);
    L2P/DualPrompt's batch-wise prompt vote depends on it."""
    stream = build_stream("digits_t5", image_size=32)
    labels = stream.test_labels
    expected = np.lexsort((np.arange(len(labels)), labels))
    for task in range(stream.num_tasks):
        dataset = stream.eval_dataset(task)
        seen = sum(stream.increments[: task + 1])
        np.testing.assert_array_equal(dataset.indices, expected[: int((labels < seen).sum())])
    assert np.bincount(labels).min() > 1


# -- metrics: forgetting on the rounded matrix ---------------------------------------------------------------------
def test_forgetting_uses_the_rounded_matrix():
    """acc[0][0] = 2/3 -> 66.67 and acc[1][0] = 1/3 -> 33.33: PILOT forgetting 33.34 (unrounded: 33.333...)."""
    labels = np.array([0, 0, 0, 1, 1])
    after_first = Evaluation(labels=labels[:3], top5=np.array([[0], [0], [1]]))
    after_second = Evaluation(labels=labels, top5=np.array([[0], [1], [1], [1], [1]]))
    metrics = compute_metrics([after_first, after_second], [1, 1])
    assert metrics["forgetting_pilot"] == pytest.approx(33.34, abs=1e-9)
    assert metrics["forgetting_avalanche"] == pytest.approx(0.3334, abs=1e-11)


# -- results: a failed write leaves the previous file whole and no temporary --------------------------------------
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_write_keeps_the_previous_file_when_the_write_fails(tmp_path: Path, monkeypatch, failing):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"avg_acc": 86.6})
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'{"avg_acc": 1.0, "partial": ')
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# -- the epoch loop steps the schedule once per epoch, after the epoch's batches ------------------------------------
def test_run_epochs_steps_the_scheduler_once_per_epoch():
    tasks, _ = make_tasks(1, 2, per_class=8, batch_size=4)  # 16 images -> 4 batches per epoch
    events: list[str] = []

    class CountingScheduler:
        def step(self) -> None:
            events.append("schedule")

    def step(images, labels):
        events.append("batch")
        return torch.tensor(1.0)

    run_epochs(tasks[0], 3, step, torch.device("cpu"), scheduler=CountingScheduler())
    assert events == (["batch"] * 4 + ["schedule"]) * 3


# -- metrics: survivors of `make mutants` on benchmark/reporting/metrics.py -------------------------------------------------
def test_top5_curve_counts_a_hit_anywhere_in_the_top5():
    """Top-5 accuracy: a sample is right when its label is among its five best classes (3 of 4 here)."""
    labels = np.array([0, 1, 2, 3])
    top5 = np.array([[0, 1, 2, 3, 4], [2, 1, 0, 3, 4], [0, 1, 3, 4, 5], [5, 4, 3, 2, 1]])
    metrics = compute_metrics([Evaluation(labels=labels, top5=top5)], [6])
    assert metrics["top5_curve"] == [75.0]
    assert metrics["accuracy_curve"] == [25.0]


def test_a_task_without_test_images_is_nan_not_zero():
    """A task group with no evaluation images has no accuracy (NaN in the matrix, None in JSON), never 0 %."""
    from benchmark.reporting.metrics import accuracy_row

    evaluation = Evaluation(labels=np.array([0, 0, 2]), top5=np.array([[0], [1], [2]]))
    row = accuracy_row(evaluation, [1, 1, 1], 2)
    assert row.shape == (3,)
    assert row[0] == 50.0 and np.isnan(row[1]) and row[2] == 100.0
