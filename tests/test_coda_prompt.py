"""CODA-Prompt against hand computations from ``prompt_baselines.md`` §5: Gram-Schmidt refill and which rows train
in task t, the soft weighting, the prefix shapes and values, the orthogonality penalty, the task-masked head,
the lagged CODA schedule and drop_last in training, the identity class order and CODA transforms requested from
the stream (and recorded), and the ViT-B/16 parameter counts."""
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from baselines.coda_prompt import CodaPrompt, CodaPromptConfig
from benchmark.models.backbones import cls_feature, embed_tokens, run_blocks
from benchmark.cli import main
from benchmark.errors import ClbenchError
from benchmark.models.peft.prefix import prefixes_set
from benchmark.models.peft.prompts import ComponentPool, frozen_query, gram_schmidt_refill, orthogonality_penalty
from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run
from benchmark.data.streams import class_order
from benchmark.training import drop_last_loader
from conftest import make_tasks, make_tiny_vit
from fabricate import write_dataset

DIM, HEADS = 64, 4


def tiny_coda(num_classes: int = 6, num_tasks: int = 3, **overrides) -> CodaPrompt:
    values = {"batch_size": 8, "epochs": 1, "lr": 0.01, "pool_size": 12, "prompt_length": 4,
              "prompt_blocks": (0, 2), **overrides}
    hparams = dataclasses.replace(CodaPromptConfig(), **values)
    return CodaPrompt(make_tiny_vit(), hparams, num_classes=num_classes, num_tasks=num_tasks, seed=1993)


# -- Gram-Schmidt refill -----------------------------------------------------------------------------------
def test_refill_is_classical_gram_schmidt_against_the_rows_as_they_stand():
    generator = torch.Generator().manual_seed(3)
    rows = torch.zeros(6, 5)
    rows[:2] = torch.tensor([[1.0, 1.0, 0, 0, 0], [1.0, 0, 1.0, 0, 0]])  # kept rows, not orthogonal to each other
    rows[4] = 7.0  # a later task's row: zero after the refill
    refilled = gram_schmidt_refill(rows, 2, 4, generator)
    # the same draws by hand: u_k = v_k - sum_j <v_k, u_j> / <u_j, u_j> u_j over every earlier row (classical)
    draws = torch.Generator().manual_seed(3)
    expected = rows[:2].clone().tolist()
    for _ in range(2):
        v = torch.randn(5, generator=draws)
        u = v.clone()
        for earlier in expected:
            e = torch.tensor(earlier)
            u -= (v @ e) / (e @ e) * e
        expected.append(u.tolist())
    expected = torch.tensor(expected)
    expected[2:] /= expected[2:].norm(dim=1, keepdim=True)
    assert torch.allclose(refilled[:4], expected, atol=1e-6)
    assert torch.equal(refilled[:2], rows[:2]) and torch.equal(refilled[4:], torch.zeros(2, 5))
    assert torch.allclose(refilled[2:4].norm(dim=1), torch.ones(2))


def test_construction_and_refills_give_orthonormal_rows_per_task():
    pool = ComponentPool(pool_size=12, prompt_length=4, dim=DIM, rows_per_task=4,
                         generator=torch.Generator().manual_seed(0))
    for tensor in (pool.prompts.flatten(1), pool.keys, pool.attention):
        assert torch.allclose(tensor[:4] @ tensor[:4].T, torch.eye(4), atol=1e-5)  # task 0's rows at construction
        assert not tensor[4:].any()  # later tasks' rows are zero
    pool.refill(1, torch.Generator().manual_seed(1))
    for tensor in (pool.prompts.flatten(1), pool.keys, pool.attention):
        assert torch.allclose(tensor[:8] @ tensor[:8].T, torch.eye(8), atol=1e-5)
        assert not tensor[8:].any()
    with pytest.raises(ValueError):
        gram_schmidt_refill(torch.zeros(4, 3), 1, 2)  # an earlier zero row cannot be projected out


def test_which_rows_train_in_task_t():
    method = tiny_coda()
    tasks, _ = make_tasks(3, 2, per_class=8, batch_size=8)
    method.learn(tasks[0])
    after_first = [{name: p.detach().clone() for name, p in pool.named_parameters()} for pool in method.pools]
    head_before = method.head.weight.detach().clone()
    method.train_task(tasks[1])  # refill rows [4, 8), train them; rows [0, 4) are used but detached
    for pool, before in zip(method.pools, after_first):
        for name, tensor in pool.named_parameters():
            rows = tensor.detach().flatten(1)
            old = before[name].flatten(1)
            assert torch.equal(rows[:4], old[:4]), f"{name}: task 0's rows moved"
            assert not torch.allclose(rows[4:8], torch.zeros_like(rows[4:8])), f"{name}: task 1's rows not filled"
            assert not rows[8:].any(), f"{name}: a later task's rows changed"
    assert torch.equal(method.head.weight[:2], head_before[:2])  # old classes' rows: masked, no gradient
    assert not torch.equal(method.head.weight[2:4], head_before[2:4])
    assert torch.equal(method.head.weight[4:], head_before[4:])  # unseen classes are absent from the loss


def test_gradient_reaches_only_the_current_task_rows():
    method = tiny_coda()
    method.task_sizes = [2]  # task 0 learned; now a step of task 1 on its refilled rows
    for pool in method.pools:
        pool.refill(1, torch.Generator().manual_seed(5))
    logits, _ = method.prompted_forward(torch.rand(3, 3, 32, 32), task_index=1)
    logits[:, 2:4].sum().backward()
    for pool in method.pools:
        for tensor in pool.parameters():
            grad = tensor.grad.flatten(1)
            assert not grad[:4].any() and not grad[8:].any() and grad[4:8].abs().sum() > 0


# -- soft weighting and prefixes ---------------------------------------------------------------------------
def test_soft_weights_and_combined_prompt_match_hand_computation():
    generator = torch.Generator().manual_seed(0)
    pool = ComponentPool(pool_size=6, prompt_length=4, dim=8, rows_per_task=3, generator=generator)
    pool.refill(1, generator)
    query = torch.randn(5, 8, generator=generator)
    pool.requires_grad_(False)
    weights = pool.weights(query, stop=6)
    for b in range(5):
        for m in range(6):
            attended = query[b] * pool.attention[m]
            cosine = attended @ pool.keys[m] / (attended.norm() * pool.keys[m].norm())
            assert float(weights[b, m]) == pytest.approx(float(cosine), abs=1e-6)
    assert (weights < 0).any()  # cosine weights may be negative (no softmax)
    prompts = pool.combine(weights)
    hand = sum(weights[:, m, None, None] * pool.prompts[m] for m in range(6))
    assert prompts.shape == (5, 4, 8) and torch.allclose(prompts, hand, atol=1e-6)
    assert pool.weights(query, stop=3).shape == (5, 3)  # rows [0, stop) only


def test_prefixes_are_the_soft_prompts_split_into_key_and_value_halves():
    method = tiny_coda()
    tasks, _ = make_tasks(3, 2, per_class=8, batch_size=8)
    method.learn(tasks[0])
    method.learn(tasks[1])
    method.eval()
    images = torch.rand(3, 3, 32, 32)
    vit = method.backbone
    with torch.no_grad():
        query = vit.norm(vit.blocks(embed_tokens(vit, images)))[:, 0]  # unprompted CLS after the final LN
        assert torch.allclose(frozen_query(vit, images), query, atol=1e-6)
        prefixes = []
        for pool in method.pools:  # after task 1 (t = 1): rows [0, 8), pt = 12 // 3 = 4
            keys = F.normalize(pool.keys[:8], dim=1)
            attended = F.normalize(query[:, None, :] * pool.attention[None, :8], dim=2)
            alpha = torch.einsum("bmd,md->bm", attended, keys)
            prompt = torch.einsum("bm,mld->bld", alpha, pool.prompts[:8])  # (B, L = 4, dim)
            prefix = torch.stack([prompt[:, :2], prompt[:, 2:]], dim=1).reshape(3, 2, 2, HEADS, DIM // HEADS)
            prefixes.append(prefix)
        assert prefixes[0].shape == (3, 2, 2, 4, 16)  # (B, key/value, L/2, heads, head_dim)
        with prefixes_set(method.wrappers, prefixes):
            expected = method.head(cls_feature(vit, run_blocks(vit, embed_tokens(vit, images))))[:, :4]
        assert torch.allclose(method.predict(images), expected, atol=1e-5)


def test_inference_uses_the_rows_of_tasks_seen_so_far_only():
    method = tiny_coda()
    method.task_sizes = [2, 2]  # after task 1: rows [0, 8)
    for pool in method.pools:
        pool.refill(1, torch.Generator().manual_seed(5))
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        before = method.predict(images)
        for pool in method.pools:
            pool.keys[8].fill_(1.0)
            pool.attention[8].fill_(1.0)
            pool.prompts[8].fill_(5.0)
        assert torch.equal(method.predict(images), before)
        for pool in method.pools:
            pool.prompts[7].fill_(5.0)
        assert not torch.allclose(method.predict(images), before)


def test_orthogonality_penalty_matches_hand_computation_and_is_off_by_default():
    rows = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    hand = sum((float(rows[i] @ rows[j]) - (i == j)) ** 2 for i in range(3) for j in range(3)) / 9
    assert float(orthogonality_penalty(rows)) == pytest.approx(hand, rel=1e-6)
    images = torch.rand(2, 3, 32, 32)
    method = tiny_coda()
    assert float(method.prompted_forward(images, 0)[1]) == 0.0  # mu = 0: the official setting
    weighted = tiny_coda(ortho_mu=0.5)
    _, penalty = weighted.prompted_forward(images, 0)
    expected = 0.5 * sum(orthogonality_penalty(t[:4].flatten(1)) for pool in weighted.pools
                         for t in (pool.keys, pool.attention, pool.prompts))
    assert float(penalty.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


# -- training: head, schedule, drop_last -------------------------------------------------------------------
def test_head_is_pytorch_default_linear_over_all_classes():
    method = tiny_coda()
    bound = 1 / math.sqrt(DIM)
    assert method.head.weight.shape == (6, DIM)
    assert method.head.weight.abs().max() <= bound and method.head.bias.abs().max() <= bound
    assert method.head.bias.abs().max() > 0  # not PILOT's ViT head init (bias zero) of L2P and DualPrompt


def test_training_uses_the_lagged_coda_schedule_and_drops_the_last_batch(monkeypatch):
    method = tiny_coda(epochs=4)
    tasks, _ = make_tasks(3, 2, per_class=7, batch_size=4)  # 14 images: 3 full batches of 4, one of 2 dropped
    seen: list[tuple[int, float]] = []
    step = torch.optim.Adam.step

    def recording_step(optimizer, *args, **kwargs):
        seen.append((len(method._last_batch), optimizer.param_groups[0]["lr"]))
        return step(optimizer, *args, **kwargs)

    forward = method.prompted_forward

    def recording_forward(images, task_index):
        method._last_batch = images
        return forward(images, task_index)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    monkeypatch.setattr(method, "prompted_forward", recording_forward)
    method.learn(tasks[0])
    assert [size for size, _ in seen] == [4] * 12  # 3 batches per epoch, never the incomplete one
    rates = [lr for _, lr in seen[::3]]
    expected = [0.01] + [0.01 * math.cos(99 * math.pi * (e - 1) / (200 * 3)) for e in (1, 2, 3)]
    assert rates == pytest.approx(expected, rel=1e-9)


def test_drop_last_loader_keeps_the_sampler_order():
    tasks, _ = make_tasks(1, 2, per_class=7, batch_size=4)
    loader = tasks[0].train_loader
    state = loader.generator.get_state()
    full = [labels.tolist() for _, labels in loader]
    loader.generator.set_state(state)
    dropped = [labels.tolist() for _, labels in drop_last_loader(loader)]
    assert dropped == full[:-1] and len(full[-1]) == 2
    with pytest.raises(ClbenchError, match="fewer than one batch"):
        drop_last_loader(make_tasks(1, 1, per_class=3, batch_size=4)[0][0].train_loader)


def test_invalid_pool_sizes_are_clear_errors():
    with pytest.raises(ClbenchError, match="pool_size"):
        tiny_coda(pool_size=65)  # more rows than the 64-wide keys can hold orthogonally
    with pytest.raises(ClbenchError, match="pool_size"):
        tiny_coda(pool_size=2)  # fewer rows than tasks
    with pytest.raises(ClbenchError, match="even"):
        CodaPromptConfig(prompt_length=5).validate()


# -- stream requests and parameter counts ------------------------------------------------------------------
@pytest.mark.parametrize("order, expected", [("identity", list(range(100))),
                                             ("seed1993", class_order(100, True, 1993))])
def test_class_order_and_transforms_are_requested_and_recorded(order, expected, tmp_path):
    write_dataset(tmp_path / "data", "cifar100", train_per_class=2, test_per_class=1)
    assert main(["run", "--methods", "coda_prompt", "--bench", "cifar100_t20", "--backbone", "vit_tiny_random",
                 "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"), "--max-tasks",
                 "1", "--workers", "0", "--quiet", "--set", "epochs=1", "--set", "batch_size=8", "--set",
                 "pool_size=20", "--set", "prompt_blocks=0;1", "--set", f"coda_order={order}"]) == 0
    config = json.loads((tmp_path / "results" / "cifar100_t20" / "coda_prompt" / "seed1993" / "config.json")
                        .read_text())
    stream = config["stream"]
    assert stream["class_order"] == expected and config["hparams"]["coda_order"] == order
    assert stream["requested_order"] == ("identity" if order == "identity" else "protocol")
    assert stream["shuffle"] is (order != "identity")
    assert stream["transform_profile"] == "coda"


@pytest.mark.parametrize("bench, total, task", [("imr_t40", 3_993_800, 76_800), ("cifar100_t20", 3_916_900, 192_000)])
def test_vit_b16_parameter_counts_match_the_spec(bench, total, task):
    report = describe_parameters(resolve_run(RunRequest(bench=bench, method="coda_prompt")))
    assert report["backbone"] == 85_798_656
    assert report["trainable_total"] == total == 3_840_000 + 769 * (200 if bench == "imr_t40" else 100)
    assert report["trainable_task"] == task and report["head"] == 769 * 5
    assert report["stored"] == total
    assert round(report["trainable_total_pct"], 2) == (4.65 if bench == "imr_t40" else 4.57)
