"""InfLoRA against hand computations from ``inflora_olora.md`` §2: the DualGPM update step by step on spectra we
control, the threshold schedule, the σ⁴ energy convention, the design of A (in the space the memory leaves free,
the top subspace of independently collected input moments, official row scale), what trains, and the ViT-B/16
counts. The learner it shares with O-LoRA is tested in ``test_task_lora_learner.py``."""
import copy
import math

import pytest
import torch

from baselines.inflora import InfLoRA, InfLoRAConfig, design_down_projection
from benchmark.models.backbones import build_backbone
from benchmark.config import resolve_hparams
from benchmark.models.peft.gpm import REMOVE, RETAIN, DualGPM, gpm_threshold
from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run
from conftest import make_tasks, make_tiny_vit

DIM = 8


def rotation(seed: int = 0) -> torch.Tensor:
    """A random orthogonal DIM x DIM matrix: column i is direction i of the synthetic input space."""
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(seed)))
    return q


def moment_with_energies(q: torch.Tensor, energies: dict[int, float]) -> torch.Tensor:
    """C = Q diag(s) Qᵀ whose squared singular values s_i² are the given energy fractions."""
    s = torch.zeros(DIM)
    for direction, energy in energies.items():
        s[direction] = math.sqrt(energy)
    return q @ torch.diag(s) @ q.T


def projector(basis: torch.Tensor) -> torch.Tensor:
    return basis @ basis.T


def old_space(memory: DualGPM, q: torch.Tensor) -> torch.Tensor:
    """Projector on the old tasks' input space, whatever the memory's type."""
    basis = memory.basis(0)
    return projector(basis) if int(memory.kind[0]) == REMOVE else torch.eye(DIM) - projector(basis)


def span(q: torch.Tensor, directions: list[int]) -> torch.Tensor:
    return projector(q[:, directions])


def test_dualgpm_update_step_by_step_with_the_threshold_schedule():
    q, memory = rotation(), DualGPM(1, DIM)
    thresholds = [gpm_threshold(t, 4, 0.8) for t in range(4)]
    assert thresholds == pytest.approx([0.8, 0.85, 0.9, 0.95])

    # task 0: cumulative energies 0.5, 0.75, 0.9, 1.0 -> 2 entries below 0.8 -> "remove" memory of 2 directions
    memory.update([moment_with_energies(q, {0: 0.5, 1: 0.25, 2: 0.15, 3: 0.1})], thresholds[0])
    assert int(memory.kind[0]) == REMOVE and memory.memory_dims() == [2]
    assert torch.allclose(old_space(memory, q), span(q, [0, 1]), atol=1e-5)

    # task 1: 0.2 already covered; + 0.4 (dir 2) = 0.6 < 0.85, + 0.35 (dir 3) = 0.95 -> stop: 2 new directions
    memory.update([moment_with_energies(q, {0: 0.1, 1: 0.1, 2: 0.4, 3: 0.35, 4: 0.05})], thresholds[1])
    assert int(memory.kind[0]) == REMOVE and memory.memory_dims() == [4]  # 4 = dim / 2 is not above it
    assert torch.allclose(old_space(memory, q), span(q, [0, 1, 2, 3]), atol=1e-5)

    # task 2: 0.1 covered; + 0.6 (dir 5) = 0.7, + 0.3 (dir 6) = 1.0 -> 6 > dim / 2: switch to the free space
    memory.update([moment_with_energies(q, {0: 0.1, 5: 0.6, 6: 0.3})], thresholds[2])
    assert int(memory.kind[0]) == RETAIN and memory.basis(0).shape[1] == 2
    assert torch.allclose(projector(memory.basis(0)), span(q, [4, 7]), atol=1e-5)

    # task 3 ("retain"): free energy 0.52 >= 1 - 0.95, remove dir 4 (0.5) -> 0.02 < 0.05 -> stop: M⊥ = dir 7
    memory.update([moment_with_energies(q, {0: 0.48, 4: 0.5, 7: 0.02})], thresholds[3])
    assert int(memory.kind[0]) == RETAIN and memory.memory_dims() == [7]
    assert torch.allclose(projector(memory.basis(0)), span(q, [7]), atol=1e-5)


def test_energy_ratios_use_squared_singular_values_of_the_second_moment():
    q, memory = rotation(1), DualGPM(1, DIM)
    energies = {0: 0.7, 1: 0.15, 2: 0.1, 3: 0.05}
    memory.update([moment_with_energies(q, energies)], 0.8)
    assert memory.memory_dims() == [1]  # S² of C: 0.7 < 0.8 <= 0.85
    s = torch.tensor([math.sqrt(e) for e in energies.values()])
    assert int((s.cumsum(0) / s.sum() < 0.8).sum()) == 2  # S (σ² of the inputs) would keep 2


def test_designed_down_projection_is_the_top_subspace_of_independently_collected_moments():
    hparams = resolve_hparams(InfLoRAConfig, {**InfLoRA.family_defaults("digits"), "epochs": 1, "batch_size": 8}, {})
    method = InfLoRA(make_tiny_vit(0), hparams, num_classes=4, num_tasks=2, device="cpu", seed=1993)
    tasks, _ = make_tasks(2, 2, per_class=8, batch_size=8)
    method.learn(tasks[0])
    before = copy.deepcopy(method)
    method.learn(tasks[1])

    # C by hand: norm1 outputs (the qkv inputs) of the model after task 0, over task 1's training images
    outputs: list[list[torch.Tensor]] = [[] for _ in before.backbone.blocks]
    handles = [block.norm1.register_forward_hook(lambda m, a, out, i=i: outputs[i].append(out))
               for i, block in enumerate(before.backbone.blocks)]
    with torch.no_grad():
        for images, _ in tasks[1].train_loader:
            before.backbone(images)
    for handle in handles:
        handle.remove()
    rank = hparams.rank
    for index, layer in enumerate(method.lora_layers):
        tokens = torch.cat([out.reshape(-1, out.shape[-1]) for out in outputs[index]])
        moment = torch.einsum("nd,ne->de", tokens, tokens) / tokens.shape[0]
        basis = before.memory.basis(index)
        projected = moment - basis @ (basis.T @ moment)  # the layers are "remove" after one task
        assert int(before.memory.kind[index]) == REMOVE
        top = torch.linalg.svd(projected).U[:, :rank]
        down = layer.branches[-1].down
        assert torch.equal(down[0], down[1])  # one A for k and v
        assert torch.allclose(3 * down[0].T @ down[0], top @ top.T, atol=1e-3)  # same subspace, rows of norm 1/√3
        assert torch.allclose(down[0].pow(2).sum(1), torch.full((rank,), 1 / 3), atol=1e-5)
        assert (down[0] @ basis).abs().max() < 1e-4  # nothing in the space the memory protects


def test_only_the_up_projections_and_the_task_head_train():
    hparams = resolve_hparams(InfLoRAConfig, {**InfLoRA.family_defaults("digits"), "epochs": 1, "batch_size": 8}, {})
    method = InfLoRA(make_tiny_vit(0), hparams, num_classes=4, num_tasks=2, device="cpu", seed=1993)
    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    for task in tasks:
        method.learn(task)
        expected = {id(layer.branches[-1].up) for layer in method.lora_layers}
        expected |= {id(p) for p in method.heads.heads[-1].parameters()}
        assert {id(p) for p in method.trainable_parameters()} == expected


def test_vit_b16_stored_counts_after_ten_tasks():
    backbone = build_backbone("vit_base_patch16_224.augreg_in21k", pretrained=False)
    hparams = resolve_hparams(InfLoRAConfig, InfLoRA.family_defaults("cifar100"), {})
    method = InfLoRA(backbone, hparams, num_classes=100, num_tasks=10, device="cpu", seed=1993)
    method.restore_structure([10] * 10)
    report = method.parameter_report()
    assert (report.backbone, report.trainable_task, report.head) == (85_798_656, 184_320, 7_690)
    assert report.trainable_total == 192_010  # the official log's "Trainable params: 192010"
    assert report.stored == 10 * 368_640  # A and B for k and v, unmerged
    assert "2,764,800 unique" in report.notes  # 276,480 per task: A_k = A_v


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


def test_vit_b16_counts_on_imr_t40():
    report = describe_parameters(resolve_run(RunRequest(bench="imr_t40", method="inflora",
                                                        backbone="vit_base_patch16_224.augreg_in21k")))
    assert report["backbone"] == 85_798_656
    assert report["trainable_task"] == 184_320
    assert report["head"] == 768 * 5 + 5
    assert math.isclose(report["trainable_task_pct"], round(100 * 184_320 / 85_798_656, 4))


def test_rank_wider_than_the_backbone_is_refused():
    from benchmark.errors import ClbenchError

    values = {**InfLoRA.family_defaults("digits"), "rank": 65}
    with pytest.raises(ClbenchError, match="^rank 65 exceeds the backbone width 64$"):
        InfLoRA(make_tiny_vit(0), resolve_hparams(InfLoRAConfig, values, {}), num_classes=4, num_tasks=2,
                device="cpu", seed=1993)
    values["rank"] = 64
    InfLoRA(make_tiny_vit(0), resolve_hparams(InfLoRAConfig, values, {}), num_classes=4, num_tasks=2,
            device="cpu", seed=1993)


def test_first_memory_of_exactly_half_the_width_is_kept_as_the_free_space():
    # cumulative energies 0.3, 0.5, 0.65, 0.8, 0.9, 1.0: 4 below 0.85 = dim / 2, which is not below dim / 2 ->
    # "retain" memory (the free space, directions 4-7), as the official branch condition k < dim / 2 decides
    q, memory = rotation(), DualGPM(1, DIM)
    memory.update([moment_with_energies(q, {0: 0.3, 1: 0.2, 2: 0.15, 3: 0.15, 4: 0.1, 5: 0.1})], 0.85)
    assert int(memory.kind[0]) == RETAIN and memory.basis(0).shape[1] == 4
    assert torch.allclose(projector(memory.basis(0)), span(q, [4, 5, 6, 7]), atol=1e-5)
