"""L2P: parameter counts (spec §2), task masking, frozen backbone, batch-wise versus per-sample selection."""
import dataclasses

import torch

from baselines.l2p import L2P, L2PConfig
from benchmark.models.backbones import build_backbone
from benchmark.models.peft.prompts import frozen_query
from conftest import accuracy, make_tasks, make_tiny_vit


def tiny_l2p(num_classes: int = 4, num_tasks: int = 2, **overrides) -> L2P:
    values = {"batch_size": 8, "epochs": 1, "lr": 0.05, "prompt_length": 2, "top_k": 3, **overrides}
    hparams = dataclasses.replace(L2PConfig(), **values)
    return L2P(make_tiny_vit(), hparams, num_classes=num_classes, num_tasks=num_tasks, seed=1993)


def test_vit_b16_parameter_counts_match_the_spec():
    backbone = build_backbone("vit_base_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    method = L2P(backbone, L2PConfig(), num_classes=200, num_tasks=40)
    method.task_sizes = [5] * 40
    report = method.parameter_report()
    assert report.backbone == 85_798_656
    assert report.trainable_total == 199_880 and round(report.percent(report.trainable_total), 3) == 0.233
    assert report.trainable_task == 46_080
    assert report.head == 769 * 5
    assert report.stored == report.trainable_total
    method.head = torch.nn.Linear(768, 100)  # a 100-class stream (cifar100_*)
    assert method.parameter_report().trainable_total == 122_980


def test_training_masks_other_tasks_and_keeps_the_backbone_bit_identical():
    method = tiny_l2p(num_classes=6, num_tasks=3)
    backbone_before = {key: value.clone() for key, value in method.backbone.state_dict().items()}
    tasks, _ = make_tasks(num_tasks=3, classes_per_task=2, per_class=8, batch_size=8)
    method.learn(tasks[0])
    head_before = method.head.weight.detach().clone(), method.head.bias.detach().clone()
    keys_before = method.pool.keys.detach().clone()
    method.learn(tasks[1])
    weight, bias = method.head.weight.detach(), method.head.bias.detach()
    for old_or_unseen in (slice(0, 2), slice(4, 6)):  # classes of task 0 and of the future task 2
        assert torch.equal(weight[old_or_unseen], head_before[0][old_or_unseen])
        assert torch.equal(bias[old_or_unseen], head_before[1][old_or_unseen])
    assert not torch.equal(weight[2:4], head_before[0][2:4])
    assert not torch.equal(method.pool.keys, keys_before)  # keys learn through the pull term
    for key, value in method.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    logits = method.predict(torch.rand(3, 3, 32, 32))
    assert logits.shape == (3, 4)


def aim_keys_at(method: L2P, images: torch.Tensor) -> None:
    """Key i := the query of image i, so that image i ranks prompt i first."""
    with torch.no_grad():
        method.pool.keys.copy_(frozen_query(method.backbone, images[: method.pool.pool_size]))


def test_batchwise_selection_is_shared_by_the_batch_and_per_sample_is_not():
    images = torch.rand(10, 3, 32, 32)
    batchwise, per_sample = tiny_l2p(), tiny_l2p(batchwise_prompt=False)
    for method in (batchwise, per_sample):
        aim_keys_at(method, images)
    _, selection = batchwise.prompted_forward(images, None)
    assert (selection.ids == selection.ids[:1]).all()
    _, selection = per_sample.prompted_forward(images, None)
    assert torch.equal(selection.ids[:, 0], torch.arange(10))
    per_sample.task_sizes = [2, 2]
    with torch.inference_mode():
        together = per_sample.predict(images)
        alone = torch.cat([per_sample.predict(images[i: i + 1]) for i in range(len(images))])
    assert torch.allclose(together, alone, atol=1e-5)


def test_a_short_run_learns():
    method = tiny_l2p(epochs=5)
    tasks, tests = make_tasks(num_tasks=2, classes_per_task=2, per_class=16, batch_size=8)
    for task in tasks:
        method.train()
        method.learn(task)
    method.eval()
    assert accuracy(method, tests, batch_size=16) >= 60  # held-out images of 4 classes: chance 25 %
