"""Sequential fine-tuning against a hand-written loop: SGD (momentum 0.9, weight decay) over backbone and head,
cross-entropy over every class seen so far, a new optimiser per task and the cosine lr stepped once per epoch."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from baselines.finetune import Finetune, FinetuneConfig
from benchmark.config import resolve_hparams
from conftest import make_tasks, make_tiny_vit

EPOCHS, LR, WEIGHT_DECAY = 3, 0.05, 1e-3


def test_two_tasks_follow_a_hand_written_sgd_loop_with_per_epoch_cosine():
    hparams = resolve_hparams(FinetuneConfig, {"epochs": EPOCHS, "lr": LR, "weight_decay": WEIGHT_DECAY,
                                               "batch_size": 8}, {})
    method = Finetune(make_tiny_vit(0), hparams, num_classes=4, num_tasks=2, device="cpu", seed=1993)
    reference = copy.deepcopy(method)
    for task in make_tasks(2, 2, per_class=4, batch_size=8)[0]:
        method.learn(task)
    for task in make_tasks(2, 2, per_class=4, batch_size=8)[0]:  # the same batches in the same order
        optimizer = torch.optim.SGD(reference.parameters(), lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY)
        for epoch in range(EPOCHS):
            for group in optimizer.param_groups:
                group["lr"] = LR * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2
            for images, labels in task.train_loader:
                optimizer.zero_grad()
                logits = reference.head(reference.backbone(images))[:, : task.seen_classes]
                F.cross_entropy(logits, labels).backward()
                optimizer.step()
    for (name, trained), expected in zip(method.named_parameters(), reference.parameters()):
        torch.testing.assert_close(trained, expected, rtol=1e-4, atol=1e-6, msg=name)
    assert method.task_sizes == [2, 2]
    probe = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        assert method.predict(probe).shape == (3, 4)


@pytest.mark.parametrize("values", [{"epochs": 0}, {"lr": 0.0}, {"weight_decay": -1.0}])
def test_invalid_settings_are_refused(values):
    from benchmark.errors import ClbenchError

    with pytest.raises(ClbenchError, match="finetune needs epochs >= 1, lr > 0 and weight_decay >= 0"):
        resolve_hparams(FinetuneConfig, values, {})
