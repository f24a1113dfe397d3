"""DualPrompt: parameter counts (spec §3), E-prompt pool size switch, prompt transfer, the reshape quirk."""
import dataclasses
import logging

import torch

from baselines.dualprompt import DualPrompt, DualPromptConfig
from benchmark.models.backbones import build_backbone
from benchmark.models.peft.prompts import frozen_query
from conftest import accuracy, make_tasks, make_tiny_vit


def tiny_dualprompt(num_classes: int = 4, num_tasks: int = 2, **overrides) -> DualPrompt:
    values = {"batch_size": 8, "epochs": 1, "lr": 0.05, "g_prompt_length": 2, "e_prompt_length": 3,
              "g_prompt_blocks": (0, 1), "e_prompt_blocks": (2, 3), **overrides}
    hparams = dataclasses.replace(DualPromptConfig(), **values)
    return DualPrompt(make_tiny_vit(), hparams, num_classes=num_classes, num_tasks=num_tasks, seed=1993)


def test_vit_b16_parameter_counts_match_the_spec():
    backbone = build_backbone("vit_base_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    method = DualPrompt(backbone, DualPromptConfig(), num_classes=200, num_tasks=10)
    method.task_sizes = [20] * 10
    report = method.parameter_report()
    assert report.backbone == 85_798_656
    assert report.trainable_total == 407_240 and round(report.percent(report.trainable_total), 3) == 0.475
    assert report.trainable_total - 153_800 == 253_440  # prompts and keys at M = 10
    assert report.trainable_task == 39_168 and report.head == 769 * 20
    assert report.stored == report.trainable_total
    # e_pool_size=auto on imr_t40: one E-prompt per task. The ViT is re-used (already wrapped).
    auto = DualPrompt(method.backbone, DualPromptConfig(e_pool_size="auto"), num_classes=200, num_tasks=40)
    auto.task_sizes = [5] * 40
    assert auto.parameter_report().trainable_total == 1_121_480


def test_pool_size_switch_for_long_task_sequences(caplog):
    with caplog.at_level(logging.WARNING):
        default = tiny_dualprompt(num_classes=24, num_tasks=12)
    assert default.e_pool.pool_size == 10 and "share prompts" in caplog.text
    auto = tiny_dualprompt(num_classes=24, num_tasks=12, e_pool_size="auto")
    assert auto.e_pool.pool_size == 12
    query = torch.randn(6, 64)
    # Training task 12 (index 11): the default pool has no slot for it and matches keys; auto forces slot 11.
    matched = default.select_e_prompt(query, task_index=11)
    assert torch.equal(matched.ids, default.e_pool.select(query, batchwise=True).ids)
    assert (auto.select_e_prompt(query, task_index=11).ids == 11).all()
    assert (default.select_e_prompt(query, task_index=9).ids == 9).all()
    assert tiny_dualprompt(e_pool_size="4").e_pool.pool_size == 4


def test_training_touches_only_the_task_prompt_its_key_and_its_head_rows():
    method = tiny_dualprompt(num_classes=6, num_tasks=3)
    backbone_before = {key: value.clone() for key, value in method.backbone.state_dict().items()}
    tasks, _ = make_tasks(num_tasks=3, classes_per_task=2, per_class=8, batch_size=8)
    method.learn(tasks[0])
    prompts, keys = method.e_pool.prompts.detach().clone(), method.e_pool.keys.detach().clone()
    g_prompt, head = method.g_prompt.detach().clone(), method.head.weight.detach().clone()
    method.learn(tasks[1])
    trained_prompt = method.e_pool.prompts.detach()
    # E-prompt 1 started as a copy of E-prompt 0 and was trained; the other slots did not move.
    assert not torch.equal(trained_prompt[1], prompts[1]) and not torch.equal(trained_prompt[1], prompts[0])
    assert torch.equal(trained_prompt[0], prompts[0]) and torch.equal(trained_prompt[2:], prompts[2:])
    changed_keys = (method.e_pool.keys.detach() != keys).any(dim=1)
    assert changed_keys.tolist() == [False, True] + [False] * 8
    assert not torch.equal(method.g_prompt, g_prompt)
    changed_rows = (method.head.weight.detach() != head).any(dim=1)
    assert changed_rows.tolist() == [False, False, True, True, False, False]
    for key, value in method.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key


def test_prompt_transfer_copies_the_previous_e_prompt_but_not_its_key():
    method = tiny_dualprompt(epochs=0)
    tasks, _ = make_tasks(num_tasks=2, classes_per_task=2, per_class=4, batch_size=8)
    method.learn(tasks[0])
    keys = method.e_pool.keys.detach().clone()
    method.learn(tasks[1])
    assert torch.equal(method.e_pool.prompts[1], method.e_pool.prompts[0])
    assert torch.equal(method.e_pool.keys, keys) and not torch.equal(keys[1], keys[0])


def e_prefixes_seen(method: DualPrompt, images: torch.Tensor) -> torch.Tensor:
    """The prefix that the first E block receives in one test pass (after the unprompted query pass)."""
    seen = []
    hook = method.e_wrappers[0].register_forward_pre_hook(lambda module, args: seen.append(module.prefix))
    with torch.inference_mode():
        method.prompted_forward(images, None)
    hook.remove()
    assert seen[0] is None and len(seen) == 2
    return seen[1]


def test_reshape_quirk_by_default_and_the_permute_fix_switch():
    images = torch.rand(6, 3, 32, 32)
    quirk, fixed = tiny_dualprompt(), tiny_dualprompt(dualprompt_permute_fix=True)
    with torch.inference_mode():
        _, selection = quirk.prompted_forward(images, None)
    chosen = int(selection.ids[0, 0])
    assert (selection.ids == chosen).all()  # batch-wise majority: one prompt for the whole batch
    key_half, value_half = quirk.e_pool.prompts[chosen, 0]
    prefix = e_prefixes_seen(quirk, images)
    for b in range(3):  # first half of the batch: key and value prefixes are both the key half
        assert torch.equal(prefix[b, 0], key_half) and torch.equal(prefix[b, 1], key_half)
    for b in range(3, 6):  # second half: both are the value half
        assert torch.equal(prefix[b, 0], value_half) and torch.equal(prefix[b, 1], value_half)
    prefix = e_prefixes_seen(fixed, images)
    assert all(torch.equal(prefix[b, 0], key_half) and torch.equal(prefix[b, 1], value_half) for b in range(6))
    with torch.inference_mode():
        assert not torch.allclose(quirk.prompted_forward(images, None)[0], fixed.prompted_forward(images, None)[0])


def test_per_sample_selection_with_the_fix_makes_predictions_independent_of_the_batch():
    images = torch.rand(10, 3, 32, 32)
    method = tiny_dualprompt(batchwise_prompt=False, dualprompt_permute_fix=True)
    with torch.no_grad():
        method.e_pool.keys.copy_(frozen_query(method.backbone, images))
    method.task_sizes = [2, 2]
    with torch.inference_mode():
        _, selection = method.prompted_forward(images, None)
        together = method.predict(images)
        alone = torch.cat([method.predict(images[i: i + 1]) for i in range(len(images))])
    assert torch.equal(selection.ids[:, 0], torch.arange(10))
    assert torch.allclose(together, alone, atol=1e-5)


def test_a_short_run_learns():
    method = tiny_dualprompt(epochs=5)
    tasks, tests = make_tasks(num_tasks=2, classes_per_task=2, per_class=16, batch_size=8)
    for task in tasks:
        method.train()
        method.learn(task)
    method.eval()
    assert accuracy(method, tests, batch_size=16) >= 60  # held-out images of 4 classes: chance 25 %


def test_prompt_blocks_must_lie_inside_the_backbone():
    import pytest
    from benchmark.errors import ClbenchError

    tiny_dualprompt(e_prompt_blocks=(2, 3))  # the last block of the 4-block tiny ViT
    with pytest.raises(ClbenchError, match=r"prompt blocks must lie in \[0, 4\) for this backbone"):
        tiny_dualprompt(e_prompt_blocks=(2, 4))


def test_g_prompt_init_is_uniform_on_minus_one_one():
    g_prompt = tiny_dualprompt().g_prompt.detach()
    assert -1 <= float(g_prompt.min()) < -0.95 and 0.95 < float(g_prompt.max()) <= 1


def test_e_prompt_t_starts_from_e_prompt_t_minus_1_from_the_second_task(monkeypatch):
    from benchmark.learners.prompt import PromptLearner

    monkeypatch.setattr(PromptLearner, "train_task", lambda self, task: None)
    method = tiny_dualprompt()
    tasks, _ = make_tasks(2, 2, per_class=2, batch_size=4)
    initial = method.e_pool.prompts.detach().clone()
    method.train_task(tasks[0])
    assert torch.equal(method.e_pool.prompts.detach(), initial)  # the first task keeps its own init
    method.train_task(tasks[1])
    assert torch.equal(method.e_pool.prompts[1].detach(), initial[0])
    assert torch.equal(method.e_pool.prompts[2:].detach(), initial[2:])


def test_pool_as_large_as_the_task_count_warns_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        method = tiny_dualprompt(num_classes=20, num_tasks=10)
    assert method.e_pool.pool_size == 10 and "share prompts" not in caplog.text
