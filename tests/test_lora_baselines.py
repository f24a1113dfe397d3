"""InfLoRA and O-LoRA: designed down-projections, DualGPM memory, the O-LoRA penalty, frozen tensors, heads."""
import copy
import math

import numpy as np
import pytest
import torch

from baselines.inflora import InfLoRA, InfLoRAConfig, design_down_projection
from baselines.olora import OLoRA, OLoRAConfig, orthogonality_penalty
from benchmark.config import resolve_hparams
from benchmark.peft.gpm import REMOVE, RETAIN, DualGPM, gpm_threshold
from benchmark.peft.lora import attach_lora
from benchmark.runner import RunRequest, describe_parameters, resolve_run
from benchmark.cli import main
from conftest import make_tasks, make_tiny_vit


def build(method_class, config_class, num_tasks=3, **overrides):
    hparams = resolve_hparams(config_class, {**method_class.family_defaults("digits"), **overrides}, {})
    return method_class(make_tiny_vit(0), hparams, num_classes=2 * num_tasks, num_tasks=num_tasks, device="cpu",
                        seed=1993)


def random_moment(dim=64, seed=0):
    x = torch.randn(500, dim, generator=torch.Generator().manual_seed(seed))
    return x.T @ x / 500


def test_designed_down_projection_avoids_memory_and_has_official_scale():
    memory = DualGPM(num_layers=1, dim=64)
    memory.update([torch.diag(torch.tensor([10.0, 8, 6, 4] + [0.1] * 60))], threshold=0.9)  # "remove" memory
    basis = memory.basis(0)
    assert int(memory.kind[0]) == REMOVE and 1 <= basis.shape[1] < 32
    down = design_down_projection(memory.project(0, random_moment()), rank=4)
    assert down.shape == (4, 64)
    assert (down @ basis).abs().max() < 1e-5  # orthogonal to the old tasks' input space
    assert torch.allclose(down.pow(2).sum(1), torch.full((4,), 1 / 3), atol=1e-5)  # rows of norm 1/sqrt(3)


def test_memory_grows_per_threshold_schedule_on_controlled_spectrum():
    # C = diag(s): singular values s, energies s^2 (the official sigma^4-of-inputs convention)
    s = torch.tensor([4.0, 2.0, 1.0, 1.0] + [0.1] * 60)
    energy = s.pow(2) / s.pow(2).sum()
    assert gpm_threshold(0, 10, 0.95) == pytest.approx(0.95)
    assert gpm_threshold(5, 10, 0.95, 1.0) == pytest.approx(0.975)
    memory = DualGPM(1, 64)
    memory.update([torch.diag(s)], gpm_threshold(0, 10, 0.8))
    expected = int((energy.cumsum(0) < 0.8).sum())
    assert memory.memory_dims() == [max(expected, 1)]
    before = memory.memory_dims()[0]
    memory.update([torch.diag(s)], gpm_threshold(9, 10, 0.8))  # higher threshold: more directions kept
    assert memory.memory_dims()[0] > before
    memory.update([torch.eye(64)], 0.99)  # flat spectrum: the old space passes dim/2 -> "retain" memory
    assert int(memory.kind[0]) == RETAIN and memory.memory_dims()[0] > 32


def test_memory_bases_restore_with_any_shape():
    memory = DualGPM(2, 64)
    memory.update([random_moment(seed=1), random_moment(seed=2)], 0.9)
    fresh = DualGPM(2, 64)
    fresh.load_state_dict(memory.state_dict())
    assert torch.equal(fresh.basis(1), memory.basis(1)) and torch.equal(fresh.kind, memory.kind)


def test_olora_penalty_and_gradient_match_hand_computation():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(2, 6, 16, generator=generator)
    new = torch.randn(2, 3, 16, generator=generator, requires_grad=True)
    hand = sum(abs(float(old[m, r] @ new.detach()[m, c])) for m in range(2) for r in range(6) for c in range(3))
    penalty = orthogonality_penalty(old, new)
    assert float(penalty.detach()) == pytest.approx(hand, rel=1e-5)
    penalty.backward()
    gram = torch.einsum("mrd,msd->mrs", old, new.detach())
    expected = torch.einsum("mrs,mrd->msd", gram.sign(), old)  # d sum|A_old A_new^T| / dA_new
    assert torch.allclose(new.grad, expected, atol=1e-5)


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

@pytest.mark.parametrize("method", ["inflora", "olora"])
def test_short_digits_run_learns(method, tmp_path):
    assert main(["run", "--methods", method, "--bench", "digits_t5", "--max-tasks", "3", "--results-dir",
                 str(tmp_path), "--quiet", "--workers", "0"]) == 0
    run_dir = tmp_path / "digits_t5" / method / "seed1993"
    with np.load(run_dir / "predictions" / "task2.npz") as data:
        accuracy_after_three_tasks = 100 * (data["top5"][:, 0] == data["labels"]).mean()
    assert accuracy_after_three_tasks > 40  # 6 classes seen: chance is 16.7 %


def test_inflora_designs_each_task_in_the_space_the_memory_leaves_free():
    method = build(InfLoRA, InfLoRAConfig, epochs=1, batch_size=8)
    tasks, _ = make_tasks(2, 2, per_class=8, batch_size=8)
    method.learn(tasks[0])
    memory = copy.deepcopy(method.memory)
    method.learn(tasks[1])
    rank = method.hparams.rank
    for index, layer in enumerate(method.lora_layers):
        down = layer.branches[-1].down[0]  # task 2's A (shared by k and v)
        basis = memory.basis(index)
        old_space_part = down @ basis if int(memory.kind[index]) == REMOVE else down - (down @ basis) @ basis.T
        assert old_space_part.abs().max() < 1e-4
        assert torch.allclose(down.pow(2).sum(1), torch.full((rank,), 1 / 3), atol=1e-5)


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


@pytest.mark.parametrize("method, per_task", [("inflora", 184_320), ("olora", 294_912)])
def test_vit_b16_parameter_counts(method, per_task):
    report = describe_parameters(resolve_run(RunRequest(bench="imr_t40", method=method,
                                                        backbone="vit_base_patch16_224.augreg_in21k")))
    assert report["backbone"] == 85_798_656
    assert report["trainable_task"] == per_task
    assert report["head"] == 768 * 5 + 5
    assert math.isclose(report["trainable_task_pct"], round(100 * per_task / 85_798_656, 4))
