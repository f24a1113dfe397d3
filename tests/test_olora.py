"""O-LoRA ViT port against hand computations from ``inflora_olora.md`` §3: the penalty and its gradient (as a
function, and the method's full sum over blocks x slots x previous tasks), the per-projection dropout masks,
what trains, the logged orthogonality term, the placement switch and the ViT-B/16 counts. The learner it shares
with InfLoRA is tested in ``test_task_lora_learner.py``."""
import math

import pytest
import torch

from baselines.olora import OLoRA, OLoRAConfig, orthogonality_penalty
from benchmark.models.backbones import build_backbone
from benchmark.config import resolve_hparams
from benchmark.models.peft.lora import SLOTS, attach_lora
from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run
from conftest import make_tasks, make_tiny_vit


def build(num_tasks: int = 3, overrides: dict | None = None, **values) -> OLoRA:
    defaults = {**OLoRA.family_defaults("digits"), "epochs": 1, "batch_size": 8, **values}
    hparams = resolve_hparams(OLoRAConfig, defaults, overrides or {})
    return OLoRA(make_tiny_vit(0), hparams, num_classes=2 * num_tasks, num_tasks=num_tasks, device="cpu", seed=1993)


def test_penalties_and_gradient_match_a_hand_sum_over_blocks_slots_and_tasks():
    method = build(lambda_l2=0.3)
    tasks, _ = make_tasks(3, 2, per_class=4, batch_size=8)
    for task in tasks[:2]:
        method.learn(task)
    method.restore_structure([2, 2, 2])  # task 2's fresh branches, as at the start of its training
    rank = method.hparams.rank
    orth_hand = l2_hand = 0.0
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in method.lora_layers:  # ups as after some training (zero-init ups would hide their norms)
            layer.branches[-1].up.copy_(torch.randn(layer.branches[-1].up.shape, generator=generator))
        for layer in method.lora_layers:
            old, new = layer.branches[0], layer.branches[-1]
            for slot in range(len(new.targets)):
                for task in range(2):
                    a_s = old.down[slot, task * rank:(task + 1) * rank]
                    orth_hand += float((a_s @ new.down[slot].T).abs().sum())
                l2_hand += float(torch.linalg.matrix_norm(new.down[slot]) + torch.linalg.matrix_norm(new.up[slot]))
    orth, l2 = method.penalties()
    assert float(orth.detach()) == pytest.approx(orth_hand, rel=1e-5)
    assert float(l2.detach()) == pytest.approx(l2_hand, rel=1e-5)

    (method.hparams.lambda_orth * orth + method.hparams.lambda_l2 * l2).backward()
    for layer in method.lora_layers:
        old, new = layer.branches[0], layer.branches[-1]
        for slot in range(len(new.targets)):
            a_t = new.down[slot].detach()
            expected = method.hparams.lambda_l2 * a_t / torch.linalg.matrix_norm(a_t)
            for task in range(2):
                a_s = old.down[slot, task * rank:(task + 1) * rank]
                expected += method.hparams.lambda_orth * (a_s @ a_t.T).sign().T @ a_s
            assert torch.allclose(new.down.grad[slot], expected, atol=1e-6)
        assert old.down.grad is None  # previous A are frozen

    logits, targets = torch.randn(4, 2, generator=generator), torch.tensor([0, 1, 1, 0])
    method.start_task(tasks[2])
    expected = (torch.nn.functional.cross_entropy(logits, targets) + method.hparams.lambda_orth * orth_hand
                + method.hparams.lambda_l2 * l2_hand)
    assert float(method.loss(logits, targets).detach()) == pytest.approx(float(expected), rel=1e-5)


def test_penalty_is_zero_on_the_first_task():
    method = build()
    method.restore_structure([2])
    orth, _ = method.penalties()
    assert float(orth) == 0.0


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


def identity_branch_layer(num_branches: int = 2):
    """A qkv wrapper with a zero projection and ``num_branches`` rank-64 branches on q and v whose delta is x
    itself (down = up = I), so the output is the sum of the branches' deltas, exactly."""
    layer = attach_lora(make_tiny_vit(0), [0])[0]
    torch.nn.init.zeros_(layer.qkv.weight)
    torch.nn.init.zeros_(layer.qkv.bias)
    for _ in range(num_branches):
        branch = layer.add_branch(64, ("q", "v"), "zeros")
        with torch.no_grad():
            branch.down.copy_(torch.eye(64).expand(2, 64, 64))
            branch.up.copy_(torch.eye(64).expand(2, 64, 64))
    return layer


def test_dropout_masks_are_independent_per_projection_and_shared_by_its_branches():
    layer = identity_branch_layer(num_branches=2)
    layer.dropout = 0.5
    layer.train()
    x = torch.ones(4, 50, 64)
    with torch.no_grad():
        delta = layer(x).reshape(4, 50, len(SLOTS), 64)
    q, k, v = delta.unbind(dim=2)
    assert torch.equal(k, torch.zeros_like(k))  # k is not adapted
    # each of the two branches adds drop(x) = mask / (1 - p): every entry is 0 or 2 * 2 (both branches, one mask)
    for slot in (q, v):
        assert set(slot.unique().tolist()) == {0.0, 4.0}
        assert 0.4 < float((slot == 0).float().mean()) < 0.6
    # q and v draw independent masks: they agree on about half of the entries, not on all of them
    agreement = float(((q == 0) == (v == 0)).float().mean())
    assert 0.4 < agreement < 0.6
    layer.eval()  # no dropout at test time: delta = 2 x exactly
    with torch.no_grad():
        assert torch.equal(layer(x), torch.cat([2 * x, torch.zeros_like(x), 2 * x], dim=-1))


def test_dropout_scaling_matches_hand_computation_for_random_branches():
    layer = attach_lora(make_tiny_vit(0), [0])[0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        torch.nn.init.normal_(layer.add_branch(4, ("q", "v"), "kaiming_uniform", generator).up, generator=generator)
    layer.dropout = 0.3
    layer.train()
    x = torch.randn(2, 5, 64)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)  # the same draw: one mask per qkv slot, each kept entry scaled by 1 / (1 - p)
    dropped = torch.nn.functional.dropout(x.unsqueeze(-2).expand(2, 5, 3, 64), 0.3)
    with torch.no_grad():
        expected = layer.qkv(x).clone()
        for branch in layer.branches:
            for m, slot in enumerate(branch.targets):
                index = SLOTS.index(slot)
                delta = dropped[..., index, :] @ branch.down[m].T @ branch.up[m].T
                expected[..., index * 64:(index + 1) * 64] += delta
        assert torch.allclose(out, expected, atol=1e-5)
    kept = dropped[dropped != 0] / x.unsqueeze(-2).expand(2, 5, 3, 64)[dropped != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7))


def test_current_a_and_b_train_with_a_fixed_scale_and_older_adapters_freeze():
    method = build(num_tasks=2)
    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    for task in tasks:
        method.learn(task)
        current = [layer.branches[-1] for layer in method.lora_layers]
        expected = {id(t) for branch in current for t in (branch.down, branch.up)}
        expected |= {id(p) for p in method.heads.heads[-1].parameters()}
        assert {id(p) for p in method.trainable_parameters()} == expected
        assert all(float(branch.scale) == method.hparams.alpha / method.hparams.rank for branch in current)


def test_orthogonality_term_is_driven_down_and_logged():
    method = build(num_tasks=2, epochs=4)
    tasks, _ = make_tasks(2, 2, per_class=8, batch_size=8)
    for task in tasks:
        method.learn(task)
    first, second = method.task_logs
    assert first["orth"] == (0.0, 0.0) and first["max_overlap"] == []
    assert second["orth"][1] < 0.75 * second["orth"][0]  # first epoch mean -> last epoch mean
    assert len(second["max_overlap"]) == 1 and second["max_overlap"][0] > 0


def test_placement_switch_to_key_and_value():
    method = build(overrides={"targets": "k;v"})
    method.restore_structure([2])
    assert method.hparams.targets == ("k", "v")
    assert all(layer.branches[-1].targets == ("k", "v") for layer in method.lora_layers)


@pytest.mark.parametrize("rank, per_task", [(8, 294_912), (10, 368_640)])
def test_vit_b16_counts_after_ten_tasks(rank, per_task):
    backbone = build_backbone("vit_base_patch16_224.augreg_in21k", pretrained=False)
    hparams = resolve_hparams(OLoRAConfig, OLoRA.family_defaults("cifar100"), {"rank": str(rank)})
    method = OLoRA(backbone, hparams, num_classes=100, num_tasks=10, device="cpu", seed=1993)
    method.restore_structure([10] * 10)
    report = method.parameter_report()
    assert (report.backbone, report.trainable_task, report.head) == (85_798_656, per_task, 7_690)
    assert report.stored == 10 * per_task  # 2,949,120 at r = 8
    assert f"{5 * per_task:,} A only" in report.notes  # 1,474,560 at r = 8 if B were folded into W


def test_vit_b16_counts_on_imr_t40():
    report = describe_parameters(resolve_run(RunRequest(bench="imr_t40", method="olora",
                                                        backbone="vit_base_patch16_224.augreg_in21k")))
    assert report["backbone"] == 85_798_656
    assert report["trainable_task"] == 294_912
    assert report["head"] == 768 * 5 + 5
    assert math.isclose(report["trainable_task_pct"], round(100 * 294_912 / 85_798_656, 4))
