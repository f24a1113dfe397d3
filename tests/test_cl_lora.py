"""CL-LoRA (methods/cl_lora.py) against the spec (specs/cl_lora.md): structure, losses, updates, inference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmark.models.backbones import build_backbone, embed_tokens
from benchmark.config import resolve_hparams
from benchmark.method import Task
from benchmark.registry import METHODS
from conftest import accuracy, make_tasks, make_tiny_vit, synthetic_images
from methods.cl_lora import (CLLoRA, CLLoRAConfig, distillation_loss, orthogonality_cosine, orthogonality_eq12,
                             reassignment_weights)

TINY = dict(rank=4, shared_blocks=2, epochs=1, lr=0.05, batch_size=8)


def make_method(num_tasks: int = 3, classes_per_task: int = 2, seed: int = 0, **overrides) -> CLLoRA:
    hparams = CLLoRAConfig(**{**TINY, **overrides})
    return CLLoRA(make_tiny_vit(seed), hparams, num_classes=num_tasks * classes_per_task, num_tasks=num_tasks)


def randomise_ups(method: CLLoRA, seed: int = 0) -> None:
    """Non-zero up-projections everywhere (fresh adapters are zero, which would hide routing mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in method.named_parameters():
            if name.endswith(".up"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)


def at_second_task(**overrides) -> tuple[CLLoRA, Task, torch.Tensor, torch.Tensor]:
    """A method that learned task 0 and started task 1, its shared ups moved away from the teacher; a batch."""
    tasks, _ = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2, **overrides)
    method.train()
    method.learn(tasks[0])
    method.start_task(tasks[1])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for branch in method._shared_branches():
            branch.up.add_(torch.randn(branch.up.shape, generator=generator) * 0.2)
    images, labels = next(iter(tasks[1].train_loader))
    return method, tasks[1], images, labels


# -- a reference forward in the official formulation: separate q/k/v projections, explicit softmax ------------
def branch_adapters(branch, ups: torch.Tensor | None = None) -> dict[str, tuple]:
    """slot -> (down B, up A, block weight) of a LoRA branch, read from its tensors."""
    adapters = {}
    for m, slot in enumerate(branch.targets):
        if branch.scale is None:
            weight = 1.0
        else:
            weight = branch.scale[0] if branch.scale.numel() == 1 else branch.scale["qkv".index(slot)]
        adapters[slot] = (branch.down[m], (branch.up if ups is None else ups)[m], weight)
    return adapters


def reference_block(block, x: torch.Tensor, adapters: dict[str, tuple]) -> torch.Tensor:
    attn = block.attn
    batch, tokens, dim = x.shape
    heads = attn.num_heads
    h = block.norm1(x)
    weight, bias = attn.qkv.qkv.weight, attn.qkv.qkv.bias
    projected = {}
    for i, slot in enumerate("qkv"):
        out = h @ weight[i * dim:(i + 1) * dim].T + bias[i * dim:(i + 1) * dim]
        if slot in adapters:
            down, up, w = adapters[slot]
            out = out + w * (h @ down.T @ up.T)
        projected[slot] = out.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)
    scores = (projected["q"] * attn.scale) @ projected["k"].transpose(-2, -1)
    mixed = (scores.softmax(-1) @ projected["v"]).transpose(1, 2).reshape(batch, tokens, dim)
    x = x + attn.proj(mixed)
    return x + block.mlp(block.norm2(x))


def reference_feature(method: CLLoRA, images: torch.Tensor, task: int | None, shared_ups=None) -> torch.Tensor:
    """CLS after the final LN: shared adapter (or ``shared_ups``) in blocks [0, l), then task ``task``'s adapter;
    ``task=None``: the early exit after block l-1."""
    vit = method.backbone
    x = embed_tokens(vit, images)
    for index, block in enumerate(vit.blocks):
        if index < method.split:
            shared = method.shared_qkv[index].branches[0]
            x = reference_block(block, x, branch_adapters(shared, None if shared_ups is None else shared_ups[index]))
        elif task is None:
            break
        else:
            x = reference_block(block, x, branch_adapters(method.specific_qkv[index - method.split].branches[task]))
    return vit.norm(x)[:, 0]


# -- structure and freezing --------------------------------------------------------------------------------
def test_structure_and_freezing_per_task():
    tasks, _ = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2)
    assert len(method.shared_qkv) == 2 and len(method.specific_qkv) == 2
    method.train()
    method.learn(tasks[0])
    for wrapper in method.shared_qkv:
        (branch,) = wrapper.branches
        assert branch.down.shape == (2, 4, 64) and branch.up.shape == (2, 64, 4) and branch.scale is None
        assert not branch.down.requires_grad and branch.up.requires_grad
    for wrapper in method.specific_qkv:
        (branch,) = wrapper.branches
        assert branch.scale.shape == (3,) and not any(p.requires_grad for p in branch.parameters())
    assert method.prototypes.prototypes.shape == (2, 64)

    before = {name: tensor.clone() for name, tensor in method.state_dict().items()
              if isinstance(tensor, torch.Tensor)}
    method.train()
    method.learn(tasks[1])
    after = method.state_dict()
    changed = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}
    assert changed == {"backbone.blocks.0.attn.qkv.branches.0.up", "backbone.blocks.1.attn.qkv.branches.0.up",
                       "prototypes.prototypes"}
    assert torch.equal(after["prototypes.prototypes"][:2], before["prototypes.prototypes"])
    assert all(len(w.branches) == 1 for w in method.shared_qkv)  # the teacher is gone
    assert method.train_head is None and method.optimizer is None
    assert not any(p.requires_grad for w in method.specific_qkv for p in w.branches.parameters())


def test_trainable_tensors_during_a_task():
    """Task t trains the shared ups, its own specific LoRA and block weights, and the head; nothing else."""
    method, _, _, _ = at_second_task()
    trainable = {name for name, p in method.named_parameters() if p.requires_grad}
    expected = {f"backbone.blocks.{i}.attn.qkv.branches.0.up" for i in (0, 1)}
    expected |= {f"backbone.blocks.{i}.attn.qkv.branches.1.{n}" for i in (2, 3) for n in ("down", "up", "scale")}
    expected |= {"train_head.weight", "train_head.sigma"}
    assert trainable == expected
    assert {id(p) for g in method.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in method.parameters() if p.requires_grad}
    teacher = [w.branches[1] for w in method.shared_qkv]
    assert all(not p.requires_grad for b in teacher for p in b.parameters())
    assert all(torch.equal(t.down, w.branches[0].down) for t, w in zip(teacher, method.shared_qkv))


def test_restore_structure_and_state_round_trip():
    tasks, tests = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2)
    for task in tasks:
        method.learn(task)
    method.eval()
    fresh = make_method(num_tasks=2, seed=5)
    fresh.load_state_dict(method.state_dict())
    fresh.eval()
    images = tests[0].tensors[0]
    with torch.inference_mode():
        assert torch.equal(fresh.predict(images), method.predict(images))
    assert fresh.parameter_report() == method.parameter_report()


# -- losses against hand computations -----------------------------------------------------------------------
def test_distillation_loss_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[0.5, 1.5, -1.0], [2.0, 0.0, 1.0]])
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        t_exp = [math.exp(v / 2) for v in t_row]
        s_log_norm = math.log(sum(math.exp(v / 2) for v in s_row))
        total += sum(-(te / sum(t_exp)) * (sv / 2 - s_log_norm) for te, sv in zip(t_exp, s_row))
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(total / 2, rel=1e-6)


def test_reassignment_weights_by_hand():
    teacher = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])
    weights = reassignment_weights(teacher)
    assert weights.shape == (2, 3, 1)
    for m, rows in enumerate(teacher.tolist()):
        norms = [math.sqrt(sum(v * v for v in row)) for row in rows]
        for i, norm in enumerate(norms):
            assert weights[m, i, 0].item() == pytest.approx(3 * norm / sum(norms), rel=1e-6)


def test_orthogonality_losses_by_hand():
    current = torch.tensor([[1.0, 2.0], [0.5, 1.0], [1.5, 0.7]])
    previous = [torch.tensor([[0.6, 1.2], [1.0, 0.9], [0.8, 1.4]]), torch.tensor([[1.0, -1.0], [0.0, 1.0], [1.0, 1.0]])]
    flat = current.flatten().tolist()

    def unit(values):
        norm = math.sqrt(sum(v * v for v in values)) + 1e-8
        return [v / norm for v in values]

    expected = sum(abs(sum(a * b for a, b in zip(unit(flat), unit(w.flatten().tolist())))) for w in previous) / 2
    assert orthogonality_cosine(current, previous).item() == pytest.approx(expected, rel=1e-6)
    mu = torch.tensor([[0.7, 1.2, 0.9]])
    olds = [torch.tensor([[1.1, 0.6, 1.3]]), torch.tensor([[0.5, -0.8, 1.0]])]
    eq12 = sum(abs(a * b) for w in olds for a in mu.flatten().tolist() for b in w.flatten().tolist())
    assert orthogonality_eq12(mu, olds).item() == pytest.approx(eq12, rel=1e-6)


def test_losses_match_reference_forward():
    """CE on the full pass with local labels; KD at the early exit from the teacher snapshot; L_orth on w."""
    method, task, images, labels = at_second_task()
    teacher_ups = [w.branches[1].up.detach().clone() for w in method.shared_qkv]
    assert not torch.equal(teacher_ups[0], method.shared_qkv[0].branches[0].up)
    ce, kd, orth = method.losses(images, labels)
    head = method.train_head
    with torch.no_grad():
        expected_ce = F.cross_entropy(head(reference_feature(method, images, 1)), labels - task.known_classes)
        student = head(reference_feature(method, images, None))
        teacher = head(reference_feature(method, images, None, shared_ups=teacher_ups))
        expected_orth = orthogonality_cosine(method.block_weight_tensor(1), [method.block_weight_tensor(0)])
    assert ce.item() == pytest.approx(expected_ce.item(), abs=1e-5)
    assert kd.item() == pytest.approx(5 * distillation_loss(student, teacher, 2.0).item(), abs=1e-5)
    assert orth.item() == pytest.approx(expected_orth.item(), abs=1e-6)
    assert method.block_weight_tensor(1).shape == (3, 2)


# -- the update: the spec's faithful port of the two optimiser steps ----------------------------------------------
def reference_update(method: CLLoRA, images, labels) -> list[torch.Tensor]:
    """New parameter values by the spec §3 port, SGD written out (fresh momentum, weight decay, lr)."""
    hp = method.hparams
    params = [p for group in method.optimizer.param_groups for p in group["params"]]
    ce, kd, orth = method.losses(images, labels)
    main = ce if orth is None else ce + hp.orth_weight * orth
    g_main = torch.autograd.grad(main, params, retain_graph=kd is not None, allow_unused=True)
    g_kd = torch.autograd.grad(kd, params, allow_unused=True) if kd is not None else [None] * len(params)
    if hp.grad_reassign and kd is not None:
        omega = {id(w.branches[0].up): reassignment_weights(w.branches[1].up) for w in method.shared_qkv}
        g_kd = [g if g is None or id(p) not in omega else g * omega[id(p)] for p, g in zip(params, g_kd)]
    lr, wd, mom = hp.lr, hp.weight_decay, hp.momentum
    new = []
    for p, gm, gk in zip(params, g_main, g_kd):
        p = p.detach()
        if gk is None:
            new.append(p - lr * (gm + wd * p))
        elif hp.update == "joint":
            new.append(p - lr * (gm + gk + wd * p))
        else:
            buffer = gk + wd * p
            p1 = p - lr * buffer
            new.append(p1 - lr * (mom * buffer + gm + wd * p1))
    return new


@pytest.mark.parametrize("overrides", [{}, {"grad_reassign": False}, {"update": "joint"}, {"kd": False}],
                         ids=["code", "no_gr", "joint", "no_kd"])
def test_update_matches_spec_port(overrides):
    method, _, images, labels = at_second_task(**overrides)
    expected = reference_update(method, images, labels)
    params = [p for group in method.optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    method.training_step(images, labels)
    for param, value, old in zip(params, expected, before):
        assert not torch.equal(param, old)
        torch.testing.assert_close(param.detach(), value, atol=1e-6, rtol=1e-5)


def test_switches_change_the_update():
    """GR, KD and the joint objective each change the new shared up-projections (and only as claimed)."""
    results = {}
    for name, overrides in {"code": {}, "no_gr": {"grad_reassign": False}, "joint": {"update": "joint"},
                            "no_kd": {"kd": False}}.items():
        method, _, images, labels = at_second_task(**overrides)
        method.training_step(images, labels)
        results[name] = torch.cat([b.up.detach().flatten() for b in method._shared_branches()])
    for a, b in [("code", "no_gr"), ("code", "joint"), ("code", "no_kd"), ("no_gr", "no_kd")]:
        assert not torch.allclose(results[a], results[b], atol=1e-7), (a, b)
    method, _, images, labels = at_second_task(kd=False)
    assert method.losses(images, labels).kd is None and all(len(w.branches) == 1 for w in method.shared_qkv)


def test_kd_is_zero_gradient_when_student_equals_teacher():
    """At the first step of a task the teacher is the student: KD's gradient reaches only the head."""
    tasks, _ = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2)
    method.learn(tasks[0])
    method.start_task(tasks[1])
    images, labels = next(iter(tasks[1].train_loader))
    _, kd, _ = method.losses(images, labels)
    ups = [b.up for b in method._shared_branches()]
    grads = torch.autograd.grad(kd, ups + [method.train_head.weight])
    assert all(g.abs().max() < 1e-7 for g in grads[:-1]) and grads[-1].abs().max() > 0


# -- block weights, orthogonality, inits, targets -------------------------------------------------------------
def test_block_weight_switches():
    method, _, images, labels = at_second_task(block_weights=False)
    assert all(b.scale is None for w in method.specific_qkv for b in w.branches)
    assert method.losses(images, labels).orth is None
    eq12, _, images, labels = at_second_task(orth="eq12")
    weights = eq12.block_weight_tensor(1)
    assert weights.shape == (1, 2) and bool(((weights >= 0.5) & (weights <= 1.5)).all())
    expected = orthogonality_eq12(weights, [eq12.block_weight_tensor(0)])
    assert eq12.losses(images, labels).orth.item() == pytest.approx(expected.item(), rel=1e-6)
    code, _, _, _ = at_second_task()
    assert code.parameter_report().trainable_task - method.parameter_report().trainable_task == 6
    assert code.parameter_report().trainable_task - eq12.parameter_report().trainable_task == 4


def test_block_weights_scale_the_specific_delta():
    method = make_method(num_tasks=2)
    method.restore_structure([2, 2])
    randomise_ups(method)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        base = method.task_feature(images, 1)
        for wrapper in method.specific_qkv:
            wrapper.branches[1].scale[1] += 5.0  # the k row is inert with targets (q, v)
        torch.testing.assert_close(method.task_feature(images, 1), base)
        method.specific_qkv[0].branches[1].scale[0] *= 2.0
        assert not torch.allclose(method.task_feature(images, 1), base)
        torch.testing.assert_close(method.task_feature(images, 1), reference_feature(method, images, 1),
                                   atol=1e-5, rtol=1e-5)


def test_shared_down_inits():
    code = make_method()
    paper = make_method(shared_down_init="gaussian_svd")
    for method in (code, paper):
        for branch in method._shared_branches():
            for down in branch.down:
                torch.testing.assert_close(down @ down.T, torch.eye(4), atol=1e-5, rtol=0)
    code_down = code._shared_branches()[0].down[0]
    paper_down = paper._shared_branches()[0].down[0]
    assert not torch.allclose(code_down, paper_down)
    # QR of a positive-uniform matrix: the first basis vector has entries of one sign (spec §1).
    assert (code_down[0] > 0).all() or (code_down[0] < 0).all()


def test_targets_and_rank_change_the_lora():
    method = make_method(num_tasks=1, targets=("q",), rank=2)
    method.restore_structure([2])
    randomise_ups(method)
    branch = method.specific_qkv[0].branches[0]
    assert branch.down.shape == (1, 2, 64)
    x = torch.rand(2, 5, 64)
    delta = branch.delta(x)
    assert delta[..., :64].abs().max() > 0 and delta[..., 64:].abs().max() == 0
    assert make_method(rank=2).parameter_report().trainable_task < make_method(rank=4).parameter_report().trainable_task


@pytest.mark.parametrize("split", [0, 1, 3, 4])
def test_shared_blocks_split(split):
    method = make_method(num_tasks=3, shared_blocks=split)
    assert len(method.shared_qkv) == split and len(method.specific_qkv) == 4 - split
    method.restore_structure([2, 2, 2])
    randomise_ups(method)
    images = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(method.predict(images), method.predict(images, shared_trunk=False),
                                   atol=1e-5, rtol=0)


# -- prototypes and inference ----------------------------------------------------------------------------------
def test_prototypes_and_per_task_cosine_inference():
    tasks, tests = make_tasks(2, 2, per_class=8)
    method = make_method(num_tasks=2)
    for task in tasks:
        method.learn(task)
    method.eval()
    with torch.no_grad():
        images, labels = tasks[1].train_eval_loader.dataset.tensors
        features = reference_feature(method, images, 1)
        expected = torch.stack([features[labels == c].mean(0) for c in tasks[1].classes])
        torch.testing.assert_close(method.prototypes.prototypes[2:], expected, atol=1e-5, rtol=1e-5)
        test_images = torch.cat([t.tensors[0] for t in tests])
        logits = method.predict(test_images)
        prototypes = method.prototypes.prototypes
        for c in range(4):
            feature = reference_feature(method, test_images, c // 2)
            torch.testing.assert_close(logits[:, c], F.cosine_similarity(feature, prototypes[c][None], dim=1),
                                       atol=1e-5, rtol=0)


def test_fast_inference_equals_per_task_passes_and_shares_the_trunk():
    method = make_method(num_tasks=4)
    method.restore_structure([2, 3, 2, 1])
    randomise_ups(method)
    with torch.no_grad():
        method.prototypes.prototypes.normal_()
    method.eval()
    images = torch.rand(5, 3, 32, 32)
    seen = [0] * 4
    hooks = [block.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, seen[i] + len(inp[0])))
             for i, block in enumerate(method.backbone.blocks)]
    with torch.inference_mode():
        fast = method.predict(images)
        passes_fast = list(seen)
        seen[:] = [0] * 4
        naive = method.predict(images, shared_trunk=False)
        passes_naive = list(seen)
        features = method.task_features(images)
        grouped = {}
        for limit in (0, 10):  # all tasks in one pass; two tasks per pass
            method.hparams.max_branch_batch = limit
            grouped[limit] = method.predict(images)
    for hook in hooks:
        hook.remove()
    assert fast.shape == (5, 8)
    assert (fast - naive).abs().max() <= 1e-5
    assert all((logits - naive).abs().max() <= 1e-5 for logits in grouped.values())
    assert passes_fast == [5, 5, 20, 20] and passes_naive == [20, 20, 20, 20]
    assert all((features[i] - features[j]).abs().max() > 1e-3 for i in range(4) for j in range(i))


# -- parameter counts (ViT-B/16 shapes, no weights) -----------------------------------------------------------
def vit_b_method(num_tasks: int, classes: int, **overrides) -> CLLoRA:
    backbone = build_backbone("vit_base_patch16_224.augreg_in21k", pretrained=False)
    method = CLLoRA(backbone, CLLoRAConfig(**overrides), num_classes=num_tasks * classes, num_tasks=num_tasks)
    method.restore_structure([classes] * num_tasks)
    return method


def test_parameter_counts_vit_b16():
    report = vit_b_method(40, 5).parameter_report()
    assert report.backbone == 85_798_656
    assert report.trainable_task == 276_498 and round(report.percent(report.trainable_task), 3) == 0.322
    assert report.head == 768 * 5 + 1
    assert report.stored == 184_320 + 40 * (184_320 + 18) + 768 * 200 == 7_711_440
    cifar = vit_b_method(20, 5, rank=8, targets=("v",)).parameter_report()
    # Table 3 form: m * 18 * 768 * r (+ 18 block weights); m = 1 (W_v), r = 8.
    assert cifar.trainable_task == 1 * 18 * 768 * 8 + 18


def test_parameter_counts_rank8_default_targets():
    method = CLLoRA(build_backbone("vit_base_patch16_224.augreg_in21k", pretrained=False), CLLoRAConfig(rank=8),
                    num_classes=100, num_tasks=20)
    method.restore_structure([5] * 20)
    report = method.parameter_report()
    assert report.trainable_task == 221_202 and report.stored == 3_173_736


# -- it learns, and forgets less than sequential fine-tuning --------------------------------------------------
def held_out_tasks(num_tasks: int = 3, classes_per_task: int = 2, per_class: int = 16
                   ) -> tuple[list[Task], list[TensorDataset]]:
    """Synthetic tasks whose test images come from the same class distribution as the training images."""
    images, labels = synthetic_images(num_tasks * classes_per_task, 2 * per_class, seed=0)
    train = torch.arange(len(labels)) % 2 == 0
    tasks, tests = [], []
    for index in range(num_tasks):
        classes = list(range(index * classes_per_task, (index + 1) * classes_per_task))
        mask = (labels >= classes[0]) & (labels <= classes[-1])
        data = TensorDataset(images[mask & train], labels[mask & train])
        tasks.append(Task(index=index, classes=classes, known_classes=classes[0], seen_classes=classes[-1] + 1,
                          num_tasks=num_tasks, train_eval_loader=DataLoader(data, batch_size=16),
                          train_loader=DataLoader(data, batch_size=8, shuffle=True,
                                                  generator=torch.Generator().manual_seed(index))))
        tests.append(TensorDataset(images[mask & ~train], labels[mask & ~train]))
    return tasks, tests


def test_learns_and_forgets_less_than_finetuning():
    tasks, tests = held_out_tasks()
    method = make_method(num_tasks=3, epochs=3)
    finetune_class = METHODS.get("finetune")
    finetune = finetune_class(make_tiny_vit(0), resolve_hparams(finetune_class.config_class,
                                                                finetune_class.family_defaults("digits"),
                                                                {"batch_size": "8"}),
                              num_classes=6, num_tasks=3)
    for task in tasks:
        for learner in (method, finetune):
            learner.train()
            learner.learn(task)
            learner.eval()
    final = accuracy(method, tests)
    assert final >= 50.0  # chance is 16.7 %
    assert accuracy(method, tests[:2]) > accuracy(finetune, tests[:2])


def test_speed_report_on_a_tiny_vit():
    from benchmark.runs.speed import format_speed_report, speed_report

    report = speed_report("vit_tiny_random", num_tasks=3, batch_size=4, repeats=1, rank=4)
    assert report["max_abs_logit_diff"] <= 1e-5 and report["same_predictions"]
    assert report["block_passes_fast"] == 2 + 2 * 3 and report["block_passes_naive"] == 12
    assert report["fast_images_per_s"] > 0 and report["naive_images_per_s"] > 0
    assert "images/s" in format_speed_report(report)
