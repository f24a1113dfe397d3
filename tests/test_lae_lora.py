"""LAE w/ LoRA against ``more_baselines.md`` §3.10: the k/v-only PET, EMA rule, freeze phase, old heads, the
max-softmax ensemble and its energy switch, the batched two-expert pass, parameter counts."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import baselines.lae_lora as lae_module
from baselines.lae_lora import LAEConfig, LAELoRA, ensemble_scores
from benchmark.cli import main
from benchmark.config import resolve_hparams
from benchmark.errors import ClbenchError
from benchmark.models.heads import TaskLinearHeads
from benchmark.models.peft.lora import BranchEMA, LoRABranch, LoRAQKV, attach_lora
from benchmark.runs.resolve import RunRequest, resolve_run
from benchmark.training import drop_last_loader
from conftest import make_tasks, make_tiny_vit


def build(num_tasks: int = 3, classes_per_task: int = 2, **overrides) -> LAELoRA:
    defaults = {**LAELoRA.family_defaults("digits"), "epochs": 3, "num_freeze_epochs": 2, "batch_size": 8,
                "ema_decay": 0.5, **overrides}
    hparams = resolve_hparams(LAEConfig, defaults, {})
    return LAELoRA(make_tiny_vit(0), hparams, num_classes=num_tasks * classes_per_task, num_tasks=num_tasks,
                   device="cpu", seed=1993)


def pet_state(branches) -> list[torch.Tensor]:
    return [t.detach().clone() for b in branches for t in (b.down, b.up, b.scale)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# -- the PET -----------------------------------------------------------------------------------------------
def test_kv_only_hand_check():
    linear = nn.Linear(4, 12)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([torch.eye(4)] * 3))
        linear.bias.zero_()
    layer = LoRAQKV(linear)
    branch = layer.add_branch(1, ("k", "v"), "zeros", scale=torch.ones(2))
    with torch.no_grad():
        branch.down[0] = torch.tensor([[1.0, 0, 0, 0]])  # A_k = e1^T
        branch.up[0] = torch.tensor([[0.0], [2.0], [0], [0]])  # B_k = 2 e2
        branch.scale[0] = 1.5  # s_k; the (2,) scale has no q entry
    x = torch.tensor([[1.0, 0, 0, 0]])
    out = layer(x)
    assert torch.equal(out[0, :4], x[0]) and torch.equal(out[0, 8:], x[0])
    assert torch.equal(out[0, 4:8], torch.tensor([1.0, 3.0, 0, 0]))
    # A per-target (2,) scale is the slot-indexed (3,) scale without its inert q entry
    slot_indexed = LoRABranch(4, 1, ("k", "v"), "zeros", scale=torch.tensor([7.0, 1.5, 1.0]))
    slot_indexed.load_state_dict({"down": branch.down, "up": branch.up, "scale": torch.tensor([7.0, 1.5, 1.0])})
    assert torch.equal(slot_indexed.delta(x), branch.delta(x))
    assert torch.equal(slot_indexed.weight_delta(), branch.weight_delta())
    assert torch.equal(branch.weight_delta()[4:8] @ x[0], torch.tensor([0.0, 3.0, 0, 0]))
    with pytest.raises(ValueError, match="scale must have shape"):
        LoRABranch(4, 1, ("k", "v"), scale=torch.ones(4))


def test_pet_adapts_k_and_v_of_blocks_only():
    method = build()
    assert [layer is method.backbone.blocks[i].attn.qkv for i, layer in enumerate(method.lora_layers)] == [True] * 4
    with torch.no_grad():
        for branch in method.online_pet():
            nn.init.normal_(branch.up)
            assert branch.targets == ("k", "v") and branch.scale.shape == (2,)
            assert torch.equal(branch.scale, torch.ones(2)) and branch.scale.requires_grad
    layer = method.lora_layers[1]
    x = torch.randn(2, 5, 64)
    out, base = layer(x), layer.qkv(x)
    assert torch.equal(out[..., :64], base[..., :64])
    assert not torch.allclose(out[..., 64:128], base[..., 64:128])
    assert not torch.allclose(out[..., 128:], base[..., 128:])


def test_fresh_pet_is_the_frozen_vit():
    method = build()
    images = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(method.backbone(images), make_tiny_vit(0)(images))


def test_adapt_blocks_beyond_depth_is_an_error():
    with pytest.raises(ClbenchError, match="exceed the backbone's 4 blocks"):
        build(adapt_blocks=(0, 4))
    with pytest.raises(ClbenchError, match="distinct"):
        resolve_hparams(LAEConfig, {"adapt_blocks": (1, 1)}, {})


# -- EMA, freeze phase, heads ------------------------------------------------------------------------------
def test_ema_rule_by_hand():
    layers = attach_lora(make_tiny_vit(0), [0, 1])
    for layer in layers:
        layer.add_branch(2, ("k", "v"), "kaiming_uniform", scale=torch.ones(2))
    ema = BranchEMA(layers, 0, decay=0.5)
    assert ema.index == 1 and all(len(layer.branches) == 2 for layer in layers)
    assert all(not p.requires_grad for b in ema.offline for p in b.parameters())
    with torch.no_grad():
        for layer in layers:
            for tensor in layer.branches[0].parameters():
                tensor.fill_(2.0)
            for tensor in layer.branches[1].parameters():
                tensor.zero_()
    ema.update()
    assert all(torch.equal(t, torch.ones_like(t)) for b in ema.offline for t in b.parameters())
    ema.update()
    assert all(torch.equal(t, torch.full_like(t, 1.5)) for b in ema.offline for t in b.parameters())
    assert all(torch.equal(t, torch.full_like(t, 2.0)) for layer in layers for t in layer.branches[0].parameters())


def test_offline_pet_from_task_1_and_one_ema_update_per_step(monkeypatch):
    method = build()
    tasks, _ = make_tasks(3, 2, per_class=9, batch_size=8)  # 18 images: 2 full batches (drop_last), not 3
    method.learn(tasks[0])
    assert method.ema is None and all(len(layer.branches) == 1 for layer in method.lora_layers)

    updates, checked = [], []
    real_update, real_step = BranchEMA.update, lae_module.optimizer_step

    def counting_update(self):
        updates.append(1)
        real_update(self)

    def checking_step(*args, **kwargs):
        if not checked:  # before the first step of task 1 the offline PET is the online one, bit for bit
            checked.append(same(pet_state(method.online_pet()), pet_state(method.ema.offline)))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(BranchEMA, "update", counting_update)
    monkeypatch.setattr(lae_module, "optimizer_step", checking_step)
    method.learn(tasks[1])
    assert checked == [True]
    assert len(updates) == 2 * 3  # drop_last batches x epochs
    assert all(len(layer.branches) == 2 for layer in method.lora_layers)


def test_freeze_phase_changes_only_the_new_head(monkeypatch):
    method = build(epochs=3, num_freeze_epochs=2)
    tasks, _ = make_tasks(3, 2, per_class=8, batch_size=8)
    snapshots: list[dict] = []
    real_run_epochs = lae_module.run_epochs

    def recording_run_epochs(*args, on_epoch_start, **kwargs):
        def hook(epoch):
            snapshots.append({"online": pet_state(method.online_pet()),
                              "offline": pet_state(method.ema.offline) if method.ema else None,
                              "head": method.heads.heads[-1].weight.detach().clone(),
                              "old_heads": [h.weight.detach().clone() for h in method.heads.heads[:-1]]})
            on_epoch_start(epoch)
        return real_run_epochs(*args, on_epoch_start=hook, **kwargs)

    monkeypatch.setattr(lae_module, "run_epochs", recording_run_epochs)
    method.learn(tasks[0])
    task0 = snapshots[:]
    assert not same(task0[0]["online"], task0[1]["online"])  # no freeze in task 0
    for index in (1, 2):
        snapshots.clear()
        before_task = pet_state(method.online_pet())
        old_heads = [h.weight.detach().clone() for h in method.heads.heads]
        method.learn(tasks[index])
        s = snapshots
        assert same(before_task, s[0]["online"]) and same(s[0]["online"], s[1]["online"])
        assert same(s[1]["online"], s[2]["online"])  # frozen for epochs 0 and 1
        assert not same(s[2]["online"], pet_state(method.online_pet()))  # trains in epoch 2
        assert not torch.equal(s[0]["head"], s[1]["head"]) and not torch.equal(s[1]["head"], s[2]["head"])
        # old heads never change
        assert all(torch.equal(a, b) for a, b in zip(old_heads, [h.weight for h in method.heads.heads[:-1]],
                                                      strict=True))
        # the offline PET moves iff it differs from the online one (decay 0.5 keeps equal tensors exact)
        moved = not same(s[0]["offline"], s[1]["offline"])
        assert moved == (index == 2)
    assert all(p.requires_grad for b in method.online_pet() for p in b.parameters())


def test_pilot_port_switch(monkeypatch):
    method = build(lae_impl="pilot", epochs=3, num_freeze_epochs=2)
    assert method.ema is not None and same(pet_state(method.online_pet()), pet_state(method.ema.offline))
    tasks, _ = make_tasks(3, 2, per_class=8, batch_size=8)
    starts: list[list[torch.Tensor]] = []
    real_run_epochs = lae_module.run_epochs

    def recording_run_epochs(*args, on_epoch_start, **kwargs):
        def hook(epoch):
            starts.append(pet_state(method.online_pet()))
            on_epoch_start(epoch)
        return real_run_epochs(*args, on_epoch_start=hook, **kwargs)

    monkeypatch.setattr(lae_module, "run_epochs", recording_run_epochs)
    updates = []
    real_update = BranchEMA.update
    monkeypatch.setattr(BranchEMA, "update", lambda self: (updates.append(1), real_update(self)))
    method.learn(tasks[0])
    assert same(starts[0], starts[1]) and same(starts[1], starts[2])  # frozen in task 0 too
    assert len(updates) == 2 * 3  # EMA from the first step of task 0
    fresh = build(lae_impl="pilot")
    fresh.restore_structure([20])
    head = fresh.heads.heads[0]  # as initialised
    assert torch.equal(head.bias, torch.zeros(20)) and head.weight.abs().max() <= math.sqrt(3 / 64)
    assert head.weight.abs().max() > 0.2  # Kaiming-uniform (bound 0.2165), not N(0, 0.001^2)
    with torch.no_grad():
        for branch in method.ema.offline:
            branch.up.normal_(0, 0.2)
    method.eval()
    probe = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        online, offline = method.expert_logits(probe, batched=False)
        assert offline is not None
        assert torch.allclose(method.predict(probe), torch.maximum(online.softmax(1), offline.softmax(1)), atol=1e-5)


# -- inference ---------------------------------------------------------------------------------------------
def test_ensemble_by_hand():
    z_on, z_off = torch.tensor([[2.0, 0, 0]]), torch.tensor([[0.0, 3, 0]])
    scores = ensemble_scores(z_on, z_off)
    assert torch.allclose(scores, torch.tensor([[0.7870, 0.9094, 0.1065]]), atol=1e-4)
    assert scores.argmax(1).item() == 1
    assert torch.equal(ensemble_scores(z_on, None), z_on.softmax(1))
    z_on, z_off = torch.tensor([[5.0, 5.1, 0]]), torch.tensor([[2.0, 0, 0]])
    assert ensemble_scores(z_on, z_off, "max_prob").argmax(1).item() == 0  # 0.787 > 0.523
    assert ensemble_scores(z_on, z_off, "energy").argmax(1).item() == 1  # -5.748 < -2.240: the online expert
    assert math.isclose(-torch.logsumexp(z_on, 1).item(), -5.748, abs_tol=1e-3)


def test_predict_is_the_ensemble_of_two_separate_passes():
    method = build(epochs=1, num_freeze_epochs=0)
    tasks, _ = make_tasks(3, 2, per_class=8, batch_size=8)
    probe = torch.rand(6, 3, 32, 32)
    for task in tasks[:2]:
        method.learn(task)
    with torch.no_grad():
        for branch in method.ema.offline:  # make the experts clearly different
            branch.up.normal_(0, 0.2)
    method.eval()
    with torch.inference_mode():
        batched = method.expert_logits(probe, batched=True)
        separate = method.expert_logits(probe, batched=False)
        for a, b in zip(batched, separate):
            assert (a - b).abs().max() <= 1e-4
        assert not torch.allclose(*separate, atol=1e-3)
        expected = torch.maximum(separate[0].softmax(1), separate[1].softmax(1))
        assert torch.equal(method.predict(probe).argmax(1), expected.argmax(1))
        assert torch.allclose(method.predict(probe), expected, atol=1e-5)
        assert all(layer.active == [0] and layer.per_chunk is None for layer in method.lora_layers)
        method.hparams.lae_ensemble = "energy"
        energy = method.predict(probe)
        on_lower = (-separate[0].logsumexp(1)) <= (-separate[1].logsumexp(1))
        chosen = torch.where(on_lower[:, None], separate[0], separate[1]).softmax(1)
        assert torch.allclose(energy, chosen, atol=1e-5)


# -- shared pieces ------------------------------------------------------------------------------------------
def test_normal_head_init_and_drop_last_loader():
    heads = TaskLinearHeads(768)
    head = heads.add_head(50, torch.Generator().manual_seed(0), weight_std=0.001)
    assert torch.equal(head.bias, torch.zeros(50))
    assert math.isclose(head.weight.std().item(), 0.001, rel_tol=0.02) and abs(head.weight.mean().item()) < 1e-5
    data = TensorDataset(torch.arange(10))
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    reference = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    dropped = [batch[0].tolist() for batch in drop_last_loader(loader)]
    assert dropped == [batch[0].tolist() for batch in reference][:2] and all(len(b) == 4 for b in dropped)


# -- parameters ----------------------------------------------------------------------------------------------
def test_tiny_parameter_count_and_40_task_structure():
    method = build(num_tasks=40, classes_per_task=5, rank=5)
    assert method.parameter_report().trainable_task == 4 * (2 * (5 * 64 + 64 * 5) + 2) == 5_128
    method.restore_structure([5] * 40)
    report = method.parameter_report()
    assert (report.trainable_task, report.head) == (5_128, 65 * 5)
    assert report.trainable_total == 5_128 + 65 * 200 and report.stored == 2 * 5_128 + 65 * 200
    with torch.inference_mode():
        assert method.eval().predict(torch.rand(3, 3, 32, 32)).shape == (3, 200)


def test_vit_b16_parameter_counts_printed_by_bench_params(capsys):
    assert resolve_run(RunRequest(bench="imr_t40", method="lae_lora")).backbone == "vit_base_patch16_224.orig_in21k"
    assert main(["params", "--methods", "lae_lora", "--bench", "imr_t40"]) == 0  # builds ViT-B/16 shapes
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("lae_lora")).split()
    # trainable/task, %, head, trainable total, %, stored, %
    assert row[2:9] == ["76,810", "0.090", "3,845", "230,610", "0.269", "307,420", "0.358"]  # then ckpt MB, % full
    assert "0.8 %" in next(line for line in lines if "note:" in line)
    assert "85,798,656" in lines[-1]
