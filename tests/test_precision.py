"""``--precision``: autocast where the harness applies it, float32 where the numerics need it, the fp16 loss scaler,
and the precision in the saved config, the resume check and ``bench table``."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

from benchmark import precision
from benchmark.models.classifiers import prototype_pass
from benchmark.cli import main
from benchmark.errors import ClbenchError
from benchmark.models.peft.gpm import DualGPM
from benchmark.precision import autocast, full_precision, training_precision
from benchmark.reporting.tables import summary_table
from benchmark.runs.evaluation import make_loader
from benchmark.training import optimizer_step
from baselines.ease import semantic_completion
from baselines.inflora import design_down_projection
from baselines.olora import orthogonality_penalty
from methods.cl_lora import distillation_loss, orthogonality_cosine
from conftest import make_tasks


def test_autocast_lowers_products_and_full_precision_restores_float32():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
        with full_precision():
            assert (x @ w).dtype == torch.float32
        assert (x @ w).dtype == torch.bfloat16
    with pytest.raises(ClbenchError, match="unknown precision 'fp8'"):
        with autocast("fp8", "cpu"):
            pass


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_training_region_forwards_the_weights_of_the_last_step(name):
    """A task's whole training runs in one autocast region: after an optimiser step, the next forward uses the
    stepped weights (autocast's weight cache would keep the casts made before the step)."""
    torch.manual_seed(0)
    layer, x = nn.Linear(8, 4), torch.randn(5, 8)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    with training_precision(name, "cpu"):
        optimizer_step(optimizer, layer(x).float().square().mean())
        after_step = layer(x)
    with autocast(name, "cpu"):
        fresh = layer(x)
    torch.testing.assert_close(after_step, fresh, rtol=0, atol=0)


def test_prototype_means_are_float32_means_of_the_half_features():
    images = torch.randn(6, 5)
    labels = torch.tensor([3, 4, 3, 4, 3, 4])
    weight = torch.randn(5, 7)
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    with autocast("bf16", "cpu"):
        prototypes = prototype_pass(lambda x: x @ weight, loader, [3, 4], torch.device("cpu"))
    features = (images.bfloat16() @ weight.bfloat16()).float()
    assert prototypes.dtype == torch.float32
    assert torch.allclose(prototypes, torch.stack([features[0::2].mean(0), features[1::2].mean(0)]), atol=1e-6)


def test_sensitive_pieces_ignore_autocast():
    """DualGPM projection and update, InfLoRA's SVD design, KD softmaxes and orthogonality terms: the same numbers
    inside a bf16 autocast region as outside it."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(50, 16, generator=generator)
    moment = inputs.T @ inputs / 50
    student, teacher = torch.randn(4, 6, generator=generator), torch.randn(4, 6, generator=generator)
    weights = [torch.rand(3, 4, generator=generator) for _ in range(3)]
    old, new = torch.randn(2, 6, 16, generator=generator), torch.randn(2, 3, 16, generator=generator)

    def compute():
        memory = DualGPM(1, 16)
        memory.update([moment], 0.9)
        prototypes = torch.randn(5, 2, 16, generator=torch.Generator().manual_seed(4))
        semantic_completion(prototypes, [3, 2])
        return [prototypes, memory.basis(0), memory.project(0, moment), design_down_projection(moment, 3),
                distillation_loss(student, teacher, 2.0), orthogonality_cosine(weights[0], weights[1:]),
                orthogonality_penalty(old, new)]

    reference = compute()
    with autocast("bf16", "cpu"):
        lowered = compute()
    for expected, got in zip(reference, lowered):
        assert got.dtype == torch.float32
        assert torch.equal(expected, got)


def test_fp16_scaler_scales_backward_unscales_the_step_and_skips_inf():
    weight = nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    with training_precision("fp16", "cpu"):
        scale = precision.loss_scale()
        assert scale == 2.0 ** 16
        optimizer.zero_grad()
        precision.backward((weight * torch.tensor([3.0, -1.0])).sum())
        assert torch.equal(weight.grad, torch.tensor([3.0, -1.0]) * scale)
        precision.step(optimizer)
        assert torch.allclose(weight.detach(), torch.tensor([1.0 - 0.3, 2.0 + 0.1]))
        before = weight.detach().clone()
        optimizer_step(optimizer, (weight * torch.tensor([math.inf, 1.0])).sum())  # inf gradient: no step
        assert torch.equal(weight.detach(), before)
        assert precision.loss_scale() == scale / 2
    assert precision.loss_scale() == 1.0  # the scaler lives only inside training_precision


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_cl_lora_two_step_update_in_half_precision_follows_fp32(name):
    """CL-LoRA's own two-step KD update under bf16/fp16 (loss-scaled, gradients stashed across the scale) moves the
    shared up-projections as the fp32 update does, up to the half type's rounding."""
    from test_methods_generic import build

    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    results = {}
    for mode in ("fp32", name):
        method = build("cl_lora")
        method.train()
        method.learn(tasks[0])
        method.start_task(tasks[1])
        with torch.no_grad():  # non-zero shared ups, so the KD term has a gradient
            for branch in method._shared_branches():
                branch.up.copy_(torch.randn(branch.up.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        images, labels = tasks[1].train_loader.dataset.tensors[0][:8], tasks[1].train_loader.dataset.tensors[1][:8]
        before = torch.cat([b.up.detach().flatten() for b in method._shared_branches()]).clone()
        with training_precision(mode, "cpu"):
            method.training_step(images, labels)
        results[mode] = torch.cat([b.up.detach().flatten() for b in method._shared_branches()]) - before
    change = results["fp32"]
    assert change.abs().max() > 0
    assert (results[name] - change).norm() / change.norm() < 0.05


def test_loaders_pin_memory_and_keep_workers_on_cuda():
    data = torch.utils.data.TensorDataset(torch.zeros(4, 1))
    cuda = make_loader(data, 2, 2, torch.device("cuda"))
    assert cuda.pin_memory and cuda.persistent_workers
    assert not make_loader(data, 2, 0, torch.device("cuda")).persistent_workers  # needs workers
    cpu = make_loader(data, 2, 2, torch.device("cpu"))
    assert not cpu.pin_memory and not cpu.persistent_workers


def test_precision_in_config_resume_check_and_table(tmp_path, capsys):
    common = ["run", "--methods", "simplecil", "--max-tasks", "1", "--results-dir", str(tmp_path), "--quiet"]
    assert main(common + ["--precision", "bf16"]) == 0
    config = (tmp_path / "digits_t5" / "simplecil" / "seed1993" / "config.json").read_text()
    assert '"precision": "bf16"' in config
    assert main(common) == 2
    assert "different config (precision)" in capsys.readouterr().err

    rows = pd.DataFrame([{"bench": "b", "method": "m", "seed": 1, "precision": p, "state": "finished",
                          "avg_acc": acc, "last_acc": acc, "trainable_task_pct": 0.1}
                         for p, acc in (("fp32", 50.0), ("bf16", 49.0))])
    table = summary_table(rows, ["avg"])
    assert list(table.index) == ["m (bf16)", "m (fp32)"]
    assert table.loc["m (bf16)", ("b", "Ā")] == "49.00"
    same = summary_table(rows[rows["precision"] == "fp32"], ["avg"])
    assert list(same.index) == ["m"]
