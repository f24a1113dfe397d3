"""AdaptFormer adapters parallel to the MLP (``benchmark/models/peft/adapter.py``; prompt_baselines.md §1.9)."""
import math

import pytest
import timm
import torch

from benchmark.errors import ClbenchError
from benchmark.models.peft.adapter import (Adapter, AdaptedMLP, adapter_set_parameters, add_adapter_set, attach_adapters,
                                    use_adapter_chunks, use_adapter_set)
from conftest import make_tiny_vit


def randomise(wrappers, index, seed=0):
    """Give adapter set ``index`` non-zero weights everywhere (a fresh set is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter_set_parameters(wrappers, index):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def test_fresh_adapter_is_identity_and_init():
    reference = make_tiny_vit(0)
    vit = make_tiny_vit(0)
    wrappers = attach_adapters(vit)
    assert len(wrappers) == 4 and all(isinstance(block.norm2, torch.nn.Identity) for block in vit.blocks)
    index = add_adapter_set(wrappers, bottleneck=8, generator=torch.Generator().manual_seed(1))
    assert index == 0
    adapter = wrappers[0].adapters[0]
    assert adapter.scale == 0.1 and adapter.dropout.p == 0.1
    assert adapter.down.weight.abs().max() <= 1 / math.sqrt(64) and adapter.down.weight.abs().sum() > 0
    for tensor in (adapter.down.bias, adapter.up.weight, adapter.up.bias):
        assert torch.count_nonzero(tensor) == 0
    images = torch.rand(3, 3, 32, 32)
    with torch.inference_mode(), use_adapter_set(wrappers, 0):
        assert torch.equal(vit(images), reference(images))


def test_adapters_off_is_pretrained_and_attach_is_idempotent():
    reference = make_tiny_vit(0)
    vit = make_tiny_vit(0)
    wrappers = attach_adapters(vit)
    assert attach_adapters(vit) == wrappers
    add_adapter_set(wrappers, 8)
    randomise(wrappers, 0)
    images = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        assert wrappers[0].active is None
        assert torch.equal(vit(images), reference(images))
        with use_adapter_set(wrappers, 0):
            assert not torch.allclose(vit(images), reference(images))
            with use_adapter_set(wrappers, None):
                assert torch.equal(vit(images), reference(images))
            assert all(w.active == 0 for w in wrappers)
    assert all(w.active is None and w.per_chunk is None for w in wrappers)


def test_hand_computed_adapted_block():
    vit = make_tiny_vit(0, depth=1)
    block = vit.blocks[0]
    norm2, mlp = block.norm2, block.mlp
    wrappers = attach_adapters(vit)
    add_adapter_set(wrappers, 8, scale=0.1, dropout=0.1)
    randomise(wrappers, 0)
    adapter = wrappers[0].adapters[0]
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        u = x + block.attn(block.norm1(x))
        hidden = torch.relu(u @ adapter.down.weight.T + adapter.down.bias)
        expected = u + mlp(norm2(u)) + 0.1 * (hidden @ adapter.up.weight.T + adapter.up.bias)
        vit.eval()
        with use_adapter_set(wrappers, 0):
            assert torch.allclose(block(x), expected, atol=1e-6)
        # dropout acts on the bottleneck in training mode only
        vit.train()
        with use_adapter_set(wrappers, 0):
            torch.manual_seed(0)
            first = block(x)
            torch.manual_seed(1)
            assert not torch.allclose(first, block(x))


def test_per_chunk_equals_separate_passes():
    vit = make_tiny_vit(0)
    wrappers = attach_adapters(vit)
    for seed in range(2):
        add_adapter_set(wrappers, 8)
        randomise(wrappers, seed, seed=seed)
    images = torch.rand(4, 3, 32, 32)
    plan = [None, 1, 0]
    with torch.inference_mode():
        separate = []
        for index in plan:
            with use_adapter_set(wrappers, index):
                separate.append(vit(images))
        with use_adapter_chunks(wrappers, plan):
            batched = vit(images.repeat(3, 1, 1, 1))
        assert (batched - torch.cat(separate)).abs().max() <= 1e-5
        assert all(w.per_chunk is None for w in wrappers)
        with use_adapter_chunks(wrappers, [0, 1]), pytest.raises(ClbenchError, match="equal adapter chunks"):
            vit(torch.rand(3, 3, 32, 32))


def test_adapter_sets_train_only_their_own_parameters():
    vit = make_tiny_vit(0)
    vit.requires_grad_(False)
    wrappers = attach_adapters(vit)
    add_adapter_set(wrappers, 8)
    add_adapter_set(wrappers, 8)
    randomise(wrappers, 1)
    with use_adapter_set(wrappers, 1):
        vit(torch.rand(2, 3, 32, 32)).pow(2).sum().backward()
    assert all(p.grad is None for p in adapter_set_parameters(wrappers, 0))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter_set_parameters(wrappers, 1))


def test_parameter_count_per_set_at_vit_b16():
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    wrappers = attach_adapters(vit)
    counts = [sum(p.numel() for p in adapter_set_parameters(wrappers, add_adapter_set(wrappers, r)))
              for r in (64, 16)]
    assert counts == [1_189_632, 304_320]
    tiny = attach_adapters(make_tiny_vit(0))
    assert sum(p.numel() for p in adapter_set_parameters(tiny, add_adapter_set(tiny, 8))) == 4_384


def test_refuses_layerscale_and_drop_path():
    from benchmark.models.backbones import tiny_vit

    with_ls = tiny_vit()
    with_ls.blocks[1].ls2 = timm.layers.LayerScale(64, init_values=1e-5)
    with pytest.raises(ClbenchError, match="ls2"):
        attach_adapters(with_ls)
    with_dp = tiny_vit()
    with_dp.blocks[0].drop_path2 = timm.layers.DropPath(0.1)
    with pytest.raises(ClbenchError, match="drop_path2"):
        attach_adapters(with_dp)
    with pytest.raises(ClbenchError, match="bottleneck"):
        Adapter(64, 0)


def test_generator_makes_sets_reproducible_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    first = attach_adapters(make_tiny_vit(0))
    second = attach_adapters(make_tiny_vit(0))
    torch.random.set_rng_state(state)
    add_adapter_set(first, 8, generator=torch.Generator().manual_seed(5))
    add_adapter_set(second, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(adapter_set_parameters(first, 0), adapter_set_parameters(second, 0)))
    assert isinstance(first[0], AdaptedMLP)


def test_new_set_follows_train_eval_mode():
    vit = make_tiny_vit(0)  # eval mode
    wrappers = attach_adapters(vit)
    add_adapter_set(wrappers, 8)
    assert not wrappers[0].training and not wrappers[0].adapters[0].training
    vit.train()
    add_adapter_set(wrappers, 8)
    assert wrappers[0].adapters[1].training
