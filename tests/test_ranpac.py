"""RanPAC (``baselines/ranpac.py``) against prompt_baselines.md §7."""
import pytest
import torch
import torch.nn.functional as F

import benchmark.learners.adapter_tuning as adapter_tuning
from baselines.ranpac import RIDGE_GRID, RanPAC, RanPACConfig, random_features, ridge_solve, select_ridge
from benchmark.models.classifiers import extract_features
from benchmark.config import resolve_hparams
from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run
from conftest import make_tasks, make_tiny_vit

NUM_TASKS, CLASSES, M = 3, 2, 48


def build(overrides=None, seed=1993):
    hparams = resolve_hparams(RanPACConfig, RanPAC.family_defaults("digits"),
                              {"epochs": "2", "batch_size": "8", "lr": "0.1", "projection_dim": str(M),
                               **(overrides or {})})
    return RanPAC(make_tiny_vit(0), hparams, num_classes=NUM_TASKS * CLASSES, num_tasks=NUM_TASKS, seed=seed)


@pytest.fixture(scope="module")
def trained():
    """RanPAC (float64 accumulators) after three tasks, with the optimisers built and the adapters per task."""
    torch.manual_seed(0)
    method = build({"accumulator_dtype": "float64"})
    tasks, tests = make_tasks(NUM_TASKS, CLASSES, per_class=8, batch_size=8)
    optimizers, adapters = [], []
    original = adapter_tuning.build_optimizer

    def counting_build(*args, **kwargs):
        optimizers.append(args)
        return original(*args, **kwargs)

    adapter_tuning.build_optimizer = counting_build
    try:
        for task in tasks:
            method.train()
            method.learn(task)
            method.eval()
            adapters.append([p.detach().clone() for p in method.adapter_parameters()])
    finally:
        adapter_tuning.build_optimizer = original
    return method, tasks, tests, optimizers, adapters


def all_h(method, tasks):
    """h and one-hot Y of every task's train_eval images, in one shot (float64)."""
    features, labels = [], []
    for task in tasks:
        f, y = extract_features(method.adapted_features, task.train_eval_loader, method.device)
        features.append(f)
        labels.append(y)
    h = random_features(torch.cat(features).double(), method.projection.double())
    return h, F.one_hot(torch.cat(labels), NUM_TASKS * CLASSES).double()


def test_accumulators_equal_one_shot_computation(trained):
    method, tasks, *_ = trained
    h, y = all_h(method, tasks)
    stats = method.statistics
    assert stats.gram.dtype == torch.float64 and stats.gram.device.type == "cpu"
    assert torch.allclose(stats.gram, h.T @ h, rtol=1e-9, atol=1e-9)
    assert torch.allclose(stats.cross, h.T @ y, rtol=1e-9, atol=1e-9)


def test_solve_equals_regularised_inverse(trained):
    method, *_ = trained
    stats = method.statistics
    ridge = stats.ridge.item()
    assert ridge in RIDGE_GRID
    expected = (torch.linalg.inv(stats.gram + ridge * torch.eye(M, dtype=torch.float64)) @ stats.cross).T
    assert torch.allclose(method.readout.weight.double(), expected, rtol=1e-4, atol=1e-6)


def test_select_ridge_hand_case():
    # 1-d features: fit rows h = 1, y = 1 (4 of them), validation row h = 1, y = 0.5. W = 4 / (4 + λ); the
    # squared error (W - 0.5)² is smallest on the grid at λ = 10 (W = 0.2857: 0.0459; λ = 1: W = 0.8, 0.09).
    h = torch.ones(5, 1, dtype=torch.float64)
    y = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.5]], dtype=torch.float64)
    assert select_ridge(h, y) == 10.0
    assert len(RIDGE_GRID) == 17 and RIDGE_GRID[0] == 1e-8 and RIDGE_GRID[-1] == 1e8


def test_select_ridge_matches_explicit_losses():
    generator = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(40, 12, generator=generator, dtype=torch.float64))
    y = F.one_hot(torch.randint(0, 3, (40,), generator=generator), 3).double()
    fit_h, val_h = h[:32], h[32:]
    losses = []
    for ridge in RIDGE_GRID:
        w = torch.linalg.inv(fit_h.T @ fit_h + ridge * torch.eye(12, dtype=torch.float64)) @ (fit_h.T @ y[:32])
        losses.append(((val_h @ w - y[32:]) ** 2).mean().item())
    expected = RIDGE_GRID[min(range(17), key=losses.__getitem__)]
    assert 1e-8 < expected < 1e8  # an interior argmin, so the test can fail
    assert select_ridge(h, y) == expected


def test_ridge_solve():
    gram = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # (G + I)^-1 = [[4, -1], [-1, 3]] / 11
    expected = torch.tensor([[4.0, -1.0], [-1.0, 3.0]], dtype=torch.float64) / 11
    assert torch.allclose(ridge_solve(gram, targets, 1.0), expected)


def test_readouts(trained):
    method, _, tests, *_ = trained
    images = torch.cat([test.tensors[0] for test in tests])
    sigma = method.readout.sigma
    assert sigma.item() != 1.0  # the first head's trained σ is kept
    with torch.inference_mode():
        h = torch.relu(method.adapted_features(images) @ method.projection)
        w = method.readout.weight
        cosine = method.predict(images)
        assert torch.allclose(cosine, sigma * F.normalize(h, dim=1) @ F.normalize(w, dim=1).T, atol=1e-6)
        method.hparams.ranpac_readout = "linear"
        try:
            linear = method.predict(images)
        finally:
            method.hparams.ranpac_readout = "cosine"
        assert torch.allclose(linear, sigma * h @ w.T, rtol=1e-5, atol=1e-5)
    assert cosine.shape == linear.shape == (len(images), 6)


def test_nothing_trains_after_the_first_task(trained):
    method, _, _, optimizers, adapters = trained
    assert len(optimizers) == 1
    assert all(torch.equal(a, b) for later in adapters[1:] for a, b in zip(adapters[0], later))
    assert not any(p.requires_grad for p in method.parameters())


def test_projection_from_seed_not_stored():
    first, second, other = build(), build(), build(seed=7)
    assert torch.equal(first.projection, second.projection) and not torch.equal(first.projection, other.projection)
    assert first.projection.shape == (64, M)
    assert "projection" not in first.state_dict()


def test_ridge_split_orders(monkeypatch):
    import baselines.ranpac as ranpac

    tasks, _ = make_tasks(1, 4, per_class=5, batch_size=8)
    seen = {}
    for split in ("loader", "shuffled"):
        def spy(h, targets, split=split):
            seen[split] = targets.argmax(1)
            return 1.0

        monkeypatch.setattr(ranpac, "select_ridge", spy)
        build({"ridge_split": split, "epochs": "0"}).learn(tasks[0])
    assert torch.equal(seen["loader"], torch.arange(4).repeat_interleave(5))  # class by class
    assert not torch.equal(seen["shuffled"], seen["loader"])
    assert torch.equal(seen["shuffled"].sort().values, seen["loader"])


def test_defaults():
    imr = resolve_hparams(RanPACConfig, RanPAC.family_defaults("imr"), {})
    assert (imr.epochs, imr.batch_size, imr.lr, imr.weight_decay, imr.projection_dim) == (10, 16, 0.05, 5e-3, 10_000)
    cifar = resolve_hparams(RanPACConfig, RanPAC.family_defaults("cifar100"), {})
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.weight_decay, cifar.ranpac_readout) == (
        20, 48, 0.01, 5e-4, "cosine")


def test_parameter_counts_vit_b16():
    report = describe_parameters(resolve_run(RunRequest(bench="imr_t40", method="ranpac")))
    assert (report["trainable_task"], report["head"], report["trainable_total"]) == (1_189_632, 3_841, 1_193_473)
    # adapters + σ + W_o (200 x 10,000) + G (10,000²) + Q (10,000 x 200)
    assert report["stored"] == 1_189_632 + 1 + 2_000_000 + 100_000_000 + 2_000_000
    assert "400 MB in float32" in report["notes"]
