"""Fabricated data for method tests: separable synthetic images and class-incremental tasks (no files)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmark.method import Task


def synthetic_images(num_classes: int, per_class: int, seed: int, image_size: int = 32, pattern_seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Easily separable images: each class has its own colour and stripe pattern (fixed by ``pattern_seed``),
    plus noise drawn from ``seed``. In [0, 1]."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    base = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(pattern_seed))
    freq = torch.arange(num_classes).float() % 5 + 1
    grid = torch.linspace(0, 3.1416, image_size)
    stripes = torch.sin(freq[:, None, None] * grid[None, :, None] + (torch.arange(num_classes) % 3)[:, None, None]
                        * grid[None, None, :])
    noise = torch.rand(len(labels), 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    images = 0.5 * base[labels] + 0.3 * stripes[labels].unsqueeze(1) + 0.1 * noise
    return images.clamp(0, 1), labels


def make_tasks(num_tasks: int = 3, classes_per_task: int = 2, per_class: int = 16, batch_size: int = 8,
               seed: int = 0, image_size: int = 32) -> tuple[list[Task], list[TensorDataset]]:
    """``num_tasks`` Task objects over synthetic data, and the per-task test sets (global labels).

    Each task's shuffling generator is seeded from ``seed`` and the task index, so calling this again gives
    tasks that replay identically.
    """
    total = num_tasks * classes_per_task
    train_x, train_y = synthetic_images(total, per_class, seed, image_size, pattern_seed=seed)
    test_x, test_y = synthetic_images(total, max(per_class // 2, 2), seed + 1, image_size, pattern_seed=seed)
    tasks, tests = [], []
    for index in range(num_tasks):
        classes = list(range(index * classes_per_task, (index + 1) * classes_per_task))
        train_mask = (train_y >= classes[0]) & (train_y <= classes[-1])
        test_mask = (test_y >= classes[0]) & (test_y <= classes[-1])
        train_set = TensorDataset(train_x[train_mask], train_y[train_mask])
        loader_generator = torch.Generator().manual_seed(seed + index)
        tasks.append(Task(index=index, classes=classes, known_classes=classes[0],
                          seen_classes=classes[-1] + 1, num_tasks=num_tasks,
                          train_loader=DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                                  generator=loader_generator),
                          train_eval_loader=DataLoader(train_set, batch_size=batch_size)))
        tests.append(TensorDataset(test_x[test_mask], test_y[test_mask]))
    return tasks, tests
