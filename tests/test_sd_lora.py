"""SD-LoRA (``../shared/specs/more_baselines.md`` §4.10) on tiny ViTs: hand computations of the decoupled
components, magnitude sharing and reset, gradient flow, the head, the variants, parameter counts, the schedule."""
import math

import pytest
import torch
from torch import nn

from baselines.sd_lora import SDLoRA, SDLoRAConfig
from benchmark.config import resolve_hparams
from benchmark.models.peft.decoupled_lora import DecoupledLoRAQKV, Magnitudes
from benchmark.models.peft.lora import SLOTS
from benchmark.runs.resolve import RunRequest, resolve_run
from benchmark.training import build_optimizer, build_scheduler
from conftest import make_tasks, make_tiny_vit


def build(num_tasks=2, classes_per_task=2, backbone=None, **overrides) -> SDLoRA:
    values = {**SDLoRA.family_defaults("digits"), "epochs": 1, "batch_size": 8, **overrides}
    hparams = resolve_hparams(SDLoRAConfig, values, {})
    return SDLoRA(backbone if backbone is not None else make_tiny_vit(0), hparams,
                  num_classes=num_tasks * classes_per_task, num_tasks=num_tasks, device="cpu", seed=1993)


def bare_wrapper(dim: int, magnitudes: Magnitudes, direction_norm="factors") -> DecoupledLoRAQKV:
    """A wrapper on a zero qkv, so its output is the LoRA delta alone."""
    qkv = nn.Linear(dim, 3 * dim)
    nn.init.zeros_(qkv.weight)
    nn.init.zeros_(qkv.bias)
    return DecoupledLoRAQKV(qkv, magnitudes, direction_norm)


def set_component(branch, down: torch.Tensor, up: torch.Tensor) -> None:
    with torch.no_grad():
        branch.down.copy_(down.expand_as(branch.down))
        branch.up.copy_(up.expand_as(branch.up))


def randomise(method: SDLoRA, seed: int = 0) -> None:
    """Non-zero ups (and offsets) everywhere, as after training, so every component matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.lora_layers:
            for branch in layer.branches:
                branch.up.copy_(torch.randn(branch.up.shape, generator=generator) * 0.3)


def reference_delta(layer: DecoupledLoRAQKV, x: torch.Tensor) -> torch.Tensor:
    """The straightforward per-component sum of spec §4.4 (one product per component and slot)."""
    out = layer.qkv(x)
    alphas = layer.magnitudes.values
    last = len(layer.branches) - 1
    for i, branch in enumerate(layer.branches):
        for m, slot in enumerate(branch.targets):
            product = branch.up[m] @ branch.down[m]
            if i < last:
                norm = (branch.up[m].norm() * branch.down[m].norm() if layer.direction_norm == "factors"
                        else product.norm())
                if norm == 0:
                    continue
                product = product / norm
            start = SLOTS.index(slot) * layer.dim
            out[..., start:start + layer.dim] += (alphas[i] + layer.offsets[i, m]) * (x @ product.T)
    return out


# -- spec §4.10.1 and §4.10.2: direction normalisation by hand ------------------------------------------
def test_rank1_direction_old_and_current():
    magnitudes = Magnitudes()
    layer = bare_wrapper(4, magnitudes)
    down, up = torch.tensor([[2.0, 0, 0, 0]]), torch.tensor([[0.0], [3.0], [0], [0]])
    set_component(layer.add_branch(1, ("q", "v"), "zeros"), down, up)
    magnitudes.reset(1, 0.8)
    x = torch.ones(1, 4)
    with torch.no_grad():
        current = layer(x)
        layer.add_branch(1, ("q", "v"), "zeros")  # a newer (zero) component: component 0 is now old
        magnitudes.reset(2, 0.8)
        old = layer(x)
    assert torch.allclose(current[0, :4], torch.tensor([0.0, 4.8, 0, 0]))
    assert torch.allclose(old[0, :4], torch.tensor([0.0, 0.8, 0, 0]))
    assert torch.allclose(old[0, 8:], old[0, :4]) and torch.equal(old[0, 4:8], torch.zeros(4))


@pytest.mark.parametrize("norm, expected", [("factors", 0.5), ("product", 1 / math.sqrt(2))])
def test_rank2_factors_versus_product(norm, expected):
    magnitudes = Magnitudes()
    layer = bare_wrapper(4, magnitudes, norm)
    down = torch.eye(4)[:2]
    up = torch.tensor([[1.0, 0], [1, 0], [0, 0], [0, 0]])
    set_component(layer.add_branch(2, ("q", "v"), "zeros"), down, up)
    layer.add_branch(2, ("q", "v"), "zeros")
    magnitudes.reset(2, 1.0)
    with torch.no_grad():
        out = layer(torch.eye(4)[:1])
    assert torch.allclose(out[0, :4], torch.tensor([expected, expected, 0, 0]), atol=1e-6)


# -- spec §4.10.3: one magnitude per task, shared by every block and slot --------------------------------
def test_shared_magnitude_gradient_is_the_sum_over_blocks_and_slots():
    method = build(num_tasks=3).double()
    method.restore_structure([2, 2])
    randomise(method)
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    for layer in method.lora_layers:  # leaf offsets: their gradients are the per-block, per-slot contributions
        layer.offsets.requires_grad_(True)
    loss = method.head(method.backbone(images)).square().sum()
    loss.backward()
    per_site = sum(layer.offsets.grad.sum(dim=1) for layer in method.lora_layers)
    assert torch.allclose(method.magnitudes.values.grad, per_site, rtol=1e-9, atol=1e-12)
    assert (method.magnitudes.values.grad != 0).all()

    # finite differences of the shared scalar
    eps = 1e-6
    with torch.no_grad():
        for layer in method.lora_layers:
            layer.offsets.requires_grad_(False)
        method.magnitudes.values[0] += eps
        plus = method.head(method.backbone(images)).square().sum()
        method.magnitudes.values[0] -= 2 * eps
        minus = method.head(method.backbone(images)).square().sum()
        method.magnitudes.values[0] += eps
    assert float((plus - minus) / (2 * eps)) == pytest.approx(float(method.magnitudes.values.grad[0]), rel=1e-5)

    # on a fixed input, perturbing alpha_0 moves q and v (not k) of every block
    dim = method.backbone.embed_dim
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    with torch.no_grad():
        before = [layer(x) for layer in method.lora_layers]
        method.magnitudes.values[0] += 0.1
        after = [layer(x) for layer in method.lora_layers]
    for old, new in zip(before, after):
        change = (new - old).abs().amax(dim=(0, 1))
        assert change[:dim].min() > 0 and change[2 * dim:].min() > 0 and change[dim:2 * dim].max() == 0


# -- spec §4.10.4 and §4.10.5: reset at the task start, gradient flow ------------------------------------
def test_reset_at_task_start_and_gradient_flow():
    method = build(num_tasks=4)
    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    for task in tasks:
        method.learn(task)
    assert not torch.allclose(method.magnitudes.values, torch.full((2,), 0.8))  # trained
    method._grow(2)
    assert torch.equal(method.magnitudes.values.detach(), torch.full((3,), 0.8))
    images = torch.rand(2, 3, 32, 32)
    inputs, outputs = {}, {}

    def keep(index):
        def hook(module, args, output):
            inputs[index], outputs[index] = args[0].detach(), output.detach()
        return hook

    hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(method.lora_layers)]
    with torch.no_grad():
        method.backbone(images)
    for hook in hooks:
        hook.remove()
    dim = method.backbone.embed_dim
    for index, layer in enumerate(method.lora_layers):
        assert torch.equal(layer.branches[-1].up, torch.zeros_like(layer.branches[-1].up))
        x = inputs[index]
        expected = layer.qkv(x)
        for branch in layer.branches[:-1]:
            for m, start in ((0, 0), (1, 2 * dim)):
                direction = branch.up[m] @ branch.down[m] / (branch.up[m].norm() * branch.down[m].norm())
                expected[..., start:start + dim] += 0.8 * x @ direction.T
        assert torch.allclose(outputs[index], expected, atol=1e-5)

    with torch.no_grad():  # a trained-looking current component, so every trainable tensor gets gradient
        for layer in method.lora_layers:
            layer.branches[-1].up.normal_(0, 0.1)
    method.head(method.backbone(images)).sum().backward()
    assert len(method.magnitudes) == 3 and (method.magnitudes.values.grad != 0).all()
    for layer in method.lora_layers:
        for branch in layer.branches[:-1]:
            assert branch.down.grad is None and branch.up.grad is None
            assert not branch.down.requires_grad and not branch.up.requires_grad
        assert layer.branches[-1].down.grad.abs().sum() > 0 and layer.branches[-1].up.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.backbone.parameters() if not p.requires_grad)


def test_magnitude_carry_keeps_trained_values():
    method = build(num_tasks=3, magnitude_init="carry")
    tasks, _ = make_tasks(1, 2, per_class=4, batch_size=8)
    method.learn(tasks[0])
    with torch.no_grad():  # values a longer training would reach (one epoch from a zero up leaves 0.8)
        method.magnitudes.values.copy_(torch.tensor([1.7]))
    method._grow(1)
    assert torch.equal(method.magnitudes.values.detach(), torch.tensor([1.7, 0.8]))
    reset = build(num_tasks=3)
    reset.learn(tasks[0])
    with torch.no_grad():
        reset.magnitudes.values.copy_(torch.tensor([1.7]))
    reset._grow(1)
    assert torch.equal(reset.magnitudes.values.detach(), torch.tensor([0.8, 0.8]))


# -- spec §4.10.6: old head rows untouched -------------------------------------------------------------
def test_old_head_rows_bit_identical_after_a_later_task():
    method = build(num_tasks=2)
    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    initial = method.head.weight.detach().clone()
    method.learn(tasks[0])
    after_first = (method.head.weight.detach().clone(), method.head.bias.detach().clone())
    assert not torch.equal(after_first[0][:2], initial[:2])
    assert torch.equal(after_first[0][2:], initial[2:])  # future classes untouched
    method.learn(tasks[1])
    assert torch.equal(method.head.weight[:2], after_first[0][:2])
    assert torch.equal(method.head.bias[:2], after_first[1][:2])


def test_head_init_is_simplelinear():
    head = build(num_tasks=2).head
    bound = math.sqrt(3 / 64)
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.9 * bound
    assert torch.equal(head.bias, torch.zeros_like(head.bias))


# -- spec §4.10.7: the rank-reduction schedule ---------------------------------------------------------
def test_rank_reduction_schedule():
    method = build(num_tasks=10, rank=10, sd_lora_variant="rr", rr_ranks=(8, 6))
    method.restore_structure([2] * 10)
    for layer in method.lora_layers:
        assert [branch.rank for branch in layer.branches] == [10, 10, 10, 10, 8, 8, 8, 8, 6, 6]
    assert method.parameter_report().trainable_task == 4 * 2 * (6 * 64 + 64 * 6) + 10
    assert build(num_tasks=10, rank=10).component_rank(9) == 10  # plain: no reduction


# -- spec §4.10.8: parameter counts ----------------------------------------------------------------------
@pytest.mark.parametrize("rank, per_task", [(4, 4096), (10, 10240)])
def test_tiny_parameter_counts(rank, per_task):
    method = build(num_tasks=3, rank=rank)
    method.restore_structure([2, 2, 2])
    report = method.parameter_report()
    assert report.trainable_task == per_task + 3
    assert report.head == 65 * 2
    assert report.trainable_total == per_task + 3 + 65 * 6
    assert report.stored == 3 * per_task + 3 + 65 * 6


def test_default_backbone_is_the_codes_tag():
    assert resolve_run(RunRequest(bench="imr_t40", method="sd_lora")).backbone == \
        "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert resolve_run(RunRequest(bench="imr_t40", method="sd_lora", backbone="vit_tiny_random")).backbone == \
        "vit_tiny_random"


# -- structure at 40 tasks; inference equal to the per-component sum ------------------------------------
def test_forty_task_structure_builds_and_predicts():
    method = build(num_tasks=40)
    method.restore_structure([2] * 40)
    method.task_sizes = [2] * 40
    assert len(method.magnitudes) == 40 and all(len(layer.branches) == 40 for layer in method.lora_layers)
    with torch.inference_mode():
        logits = method.predict(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 80) and torch.isfinite(logits).all()


@pytest.mark.parametrize("norm", ["factors", "product"])
def test_inference_equals_per_component_sum(norm):
    method = build(num_tasks=5, sd_lora_variant="rr", rank=4, rr_milestones=(2, 4), rr_ranks=(3, 1),
                   direction_norm=norm)
    method.restore_structure([2] * 5)
    method.task_sizes = [2] * 5
    randomise(method)
    with torch.no_grad():
        method.magnitudes.values.copy_(torch.tensor([0.5, 1.2, -0.3, 0.9, 2.0]))
        for layer in method.lora_layers:
            layer.offsets.normal_()
    images = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        fast = method.predict(images)
        for layer in method.lora_layers:
            layer.forward = lambda x, layer=layer: reference_delta(layer, x)
        slow = method.predict(images)
    assert (fast - slow).abs().max() <= 1e-4
    assert torch.equal(fast.argmax(1), slow.argmax(1))


# -- SD-LoRA-KD (spec §4.7) ------------------------------------------------------------------------------
def test_kd_absorbs_a_direction_the_old_ones_explain():
    magnitudes = Magnitudes()
    layer = bare_wrapper(6, magnitudes)
    generator = torch.Generator().manual_seed(0)
    downs = [torch.randn(2, 6, generator=generator) for _ in range(2)]
    ups = [torch.randn(6, 2, generator=generator) for _ in range(2)]
    for down, up in zip(downs, ups):
        set_component(layer.add_branch(2, ("q", "v"), "zeros"), down, up)
    newest = layer.add_branch(4, ("q", "v"), "zeros")
    # q: 0.7 D_0 - 0.4 D_1 written as one rank-4 product, scaled arbitrarily; v: an unrelated direction
    directions = [u @ d / (u.norm() * d.norm()) for u, d in zip(ups, downs)]
    target = 0.7 * directions[0] - 0.4 * directions[1]
    u, s, vh = torch.linalg.svd(target)
    with torch.no_grad():
        newest.down[0] = 3.0 * vh[:4]
        newest.up[0] = u[:, :4] * s[:4]
        newest.down[1] = torch.randn(4, 6, generator=generator)
        newest.up[1] = torch.randn(6, 4, generator=generator)
    magnitudes.reset(3, 0.8)
    # D_2 = B A / (||B|| ||A||) = 3 target / (||B|| ||A||): the fitted coefficients are (0.7, -0.4) times that
    scale = float(3 / (newest.up[0].norm() * newest.down[0].norm()).detach())
    assert layer.absorb_newest(9e-4) == [True, False]
    assert torch.allclose(layer.offsets[:2, 0], torch.tensor([0.7, -0.4]) * scale, atol=1e-5)
    assert torch.equal(layer.offsets[:, 1], torch.zeros(3)) and layer.offsets[2, 0] == 0
    assert torch.equal(newest.down[0], torch.zeros(4, 6)) and torch.equal(newest.up[0], torch.zeros(6, 4))
    assert newest.down[1].abs().sum() > 0

    # the absorbed (zero) component: next task it is old, contributes nothing, and gradients stay finite
    layer.add_branch(2, ("q", "v"), "zeros")
    magnitudes.reset(4, 0.8)
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.allclose(layer(x), reference_delta(layer, x), atol=1e-5)
    layer.offsets.requires_grad_(True)
    layer(x).sum().backward()
    assert torch.isfinite(magnitudes.values.grad).all() and torch.isfinite(layer.offsets.grad).all()
    assert layer.offsets.grad[2, 0] == 0 and layer.offsets.grad[2, 1] != 0  # q of component 2 is skipped


def test_kd_fit_equals_lstsq_on_flattened_directions():
    magnitudes = Magnitudes()
    layer = bare_wrapper(5, magnitudes, "product")
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        set_component(layer.add_branch(2, ("q",), "zeros"), torch.randn(2, 5, generator=generator),
                      torch.randn(5, 2, generator=generator))
    with torch.no_grad():
        flat = torch.stack([(b.up[0] @ b.down[0] / (b.up[0] @ b.down[0]).norm()).flatten() for b in layer.branches])
    solution = torch.linalg.lstsq(flat[:3].T.double(), flat[3:].T.double())
    residual = float(((flat[:3].T.double() @ solution.solution - flat[3:].T.double()) ** 2).sum())
    assert layer.absorb_newest(residual * 0.999) == [False]  # just above the threshold: kept
    assert layer.absorb_newest(residual * 1.001) == [True]
    assert torch.allclose(layer.offsets[:3, 0].double(), solution.solution.flatten(), atol=1e-5)


def test_kd_variant_runs_through_training():
    method = build(num_tasks=2, sd_lora_variant="kd", kd_threshold=10.0)  # absorbs everything it can
    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    for task in tasks:
        method.learn(task)
    for layer in method.lora_layers:
        assert torch.equal(layer.branches[-1].up, torch.zeros_like(layer.branches[-1].up))
        assert (layer.offsets[0] != 0).all()


# -- the optimiser and schedule: SGD + per-epoch MultiStepLR, task-0 values -----------------------------
def test_multistep_schedule_values():
    optimizer = build_optimizer([nn.Parameter(torch.zeros(1))], "sgd", 1.0)
    scheduler = build_scheduler(optimizer, "multistep", 6, milestones=(2, 4), gamma=0.1)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_training_uses_sgd_multistep_with_task0_values(monkeypatch):
    import baselines.sd_lora as module

    seen = []

    def fake_run_epochs(task, epochs, step, device, scheduler=None, loader=None):
        optimizer = scheduler.optimizer
        group = optimizer.param_groups[0]
        seen.append((type(optimizer).__name__, group["lr"], group.get("momentum"), group["weight_decay"], epochs,
                     dict(scheduler.milestones), scheduler.gamma))
        return []

    monkeypatch.setattr(module, "run_epochs", fake_run_epochs)
    method = build(num_tasks=2, **{**SDLoRA.family_defaults("ima"), "epochs": 3, "init_epochs": 2})
    tasks, _ = make_tasks(2, 2, per_class=2, batch_size=8)
    for task in tasks:
        method.learn(task)
    assert seen == [("SGD", 0.01, 0.9, 0.0, 2, {10: 1, 15: 1}, 0.05), ("SGD", 0.005, 0.9, 0.0, 3, {10: 1, 15: 1}, 0.05)]
    adam = build(num_tasks=1, optimizer="adam")
    seen.clear()
    adam.learn(tasks[0])
    assert seen[0][0] == "Adam"


def test_bad_config_is_a_clear_error():
    from benchmark.errors import ClbenchError

    with pytest.raises(ClbenchError):
        resolve_hparams(SDLoRAConfig, {}, {"rr_ranks": "8", "rr_milestones": "4,8"})
    with pytest.raises(ClbenchError):
        resolve_hparams(SDLoRAConfig, {}, {"sd_lora_variant": "xx"})


# -- the command line and the published numbers -----------------------------------------------------------
def test_cli_describe_and_params(capsys):
    from benchmark.cli import main

    assert main(["describe", "--method", "sd_lora", "--bench", "imr_t40"]) == 0
    text = capsys.readouterr().out
    for switch in ("optimizer = 'sgd'", "sd_lora_variant = 'plain'", "kd_threshold = 0.0009", "rr_ranks = (8, 6)",
                   "magnitude_init = 'reset'", "direction_norm = 'factors'", "UNCONFIRMED",
                   "backbone (imr): vit_base_patch16_224.augreg2_in21k_ft_in1k"):
        assert switch in text
    # ViT-B/16 shapes after 40 tasks: 368,640 LoRA + 40 magnitudes; head 769 x 5 (task) / 769 x 200 (seen)
    assert main(["params", "--methods", "sd_lora", "--bench", "imr_t40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    numbers = next(line for line in lines if line.startswith("sd_lora")).split()[2:9]  # then ckpt MB, % full
    assert numbers == ["368,680", "0.430", "3,845", "522,480", "0.609", "14,899,440", "17.366"]
    assert "(368,640) + 40 magnitudes" in next(line for line in lines if "note:" in line)
    assert "backbone size: 85,798,656" in lines[-1]


def test_paper_numbers_show_beside_matching_runs():
    import pandas as pd

    from benchmark.reporting.tables import summary_table

    runs = pd.DataFrame([{"bench": "imr_t10", "method": "sd_lora", "seed": 1993, "state": "finished",
                          "avg_acc": 80.0, "last_acc": 75.0, "trainable_task_pct": 0.43}])
    table = summary_table(runs, ["last", "avg"], with_paper=True)
    assert table.loc["sd_lora", ("imr_t10", "A_T paper")] == "77.34 ± 0.35"
    assert table.loc["sd_lora", ("imr_t10", "Ā paper")] == "82.04 ± 0.24"
