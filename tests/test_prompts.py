"""Shared prompt mechanics: key matching, batch-wise majority, pull term, input prompts, prefix attention."""
import pytest
import torch

from benchmark.models.backbones import cls_feature, embed_tokens, run_blocks
from benchmark.models.peft.prefix import (PrefixAttention, attach_prefix, official_prefix_order, prefixes_set,
                                   split_prompt_tokens)
from benchmark.models.peft.prompts import PromptPool, batch_majority, embed_with_prompts, frozen_query, l2_normalize
from conftest import make_tiny_vit


def basis_pool(pool_size: int = 6, dim: int = 8, top_k: int = 2) -> PromptPool:
    """Keys along the first axes with different lengths (matching must use cosine, not dot products)."""
    pool = PromptPool(pool_size, (3, dim), dim, top_k, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pool.keys.copy_(torch.eye(pool_size, dim) * torch.arange(1, pool_size + 1).float()[:, None])
    return pool


def queries(*weights: dict[int, float], dim: int = 8) -> torch.Tensor:
    out = torch.zeros(len(weights), dim)
    for row, entries in enumerate(weights):
        for axis, value in entries.items():
            out[row, axis] = value
    return out


def test_l2_normalize_is_the_official_formula():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]])
    expected = x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=1e-12))
    assert torch.equal(l2_normalize(x), expected)
    assert torch.allclose(l2_normalize(x)[0], torch.tensor([0.6, 0.8]))


def test_per_sample_top_k_picks_the_closest_keys_by_cosine():
    pool = basis_pool()
    # Key 5 is 6x longer than key 0: a dot product would prefer it, the cosine must not.
    q = queries({0: 3.0, 2: 2.0, 5: 1.0}, {4: 1.0, 1: 5.0, 3: 0.5}, {5: 2.0, 3: 1.0})
    ids = pool.select(q, batchwise=False).ids
    assert [sorted(row) for row in ids.tolist()] == [[0, 2], [1, 4], [3, 5]]


def test_batch_majority_versus_per_sample_selection():
    pool = basis_pool()
    # Per-sample top-2 sets {0,1}, {0,2}, {0,1}, {1,3}, {0,4}: id 0 occurs 4 times, id 1 three times, others once.
    q = queries({0: 2.0, 1: 1.0}, {0: 2.0, 2: 1.0}, {1: 2.0, 0: 1.0}, {3: 2.0, 1: 1.0}, {4: 2.0, 0: 1.0})
    per_sample = pool.select(q, batchwise=False).ids
    assert [sorted(row) for row in per_sample.tolist()] == [[0, 1], [0, 2], [0, 1], [1, 3], [0, 4]]
    batchwise = pool.select(q, batchwise=True).ids
    assert batchwise.shape == (5, 2)
    assert all(sorted(row) == [0, 1] for row in batchwise.tolist())
    # The vote depends on the batch: with sets {0,2}, {0,4}, {0,2} the majority is {0, 2}.
    other_batch = pool.select(q[[1, 4, 1]], batchwise=True).ids
    assert all(sorted(row) == [0, 2] for row in other_batch.tolist())


def test_batch_majority_counts_and_breaks_ties_towards_lower_ids():
    ids = torch.tensor([[4, 2], [2, 4], [3, 1]])
    assert batch_majority(ids, pool_size=6).tolist() == [2, 4]
    assert batch_majority(torch.tensor([[5], [1]]), pool_size=6).tolist() == [1]


def test_forced_ids_and_pull_term():
    pool = basis_pool(top_k=1)
    q = queries({0: 1.0, 3: 1.0}, {3: 2.0}, {1: 1.0})
    selection = pool.select(q, batchwise=True, forced=[3])
    assert selection.ids.tolist() == [[3], [3], [3]]
    pull = selection.pull()
    expected = torch.stack([torch.cosine_similarity(pool.keys[3], row, dim=0) for row in q]).mean()
    assert torch.allclose(pull, expected)
    pull.backward()
    assert pool.keys.grad[3].abs().sum() > 0
    assert pool.keys.grad[[0, 1, 2, 4, 5]].abs().sum() == 0
    assert pool.prompts.grad is None


def test_pull_term_sums_over_the_selected_keys_and_averages_over_the_batch():
    pool = basis_pool(top_k=2)
    q = queries({0: 2.0, 1: 1.0}, {2: 2.0, 4: 1.0})
    selection = pool.select(q, batchwise=False)
    cos = torch.nn.functional.cosine_similarity(q[:, None], pool.keys[None], dim=-1)
    expected = (cos[0, [0, 1]].sum() + cos[1, [2, 4]].sum()) / 2
    assert torch.allclose(selection.pull(), expected)
    assert pool.gather(selection).shape == (2, 2, 3, 8)
    assert torch.equal(pool.gather(selection)[1, 1], pool.prompts[selection.ids[1, 1]])


def test_pool_init_is_uniform_and_seeded():
    first = PromptPool(10, (5, 16), 16, 5, torch.Generator().manual_seed(3))
    second = PromptPool(10, (5, 16), 16, 5, torch.Generator().manual_seed(3))
    assert torch.equal(first.prompts, second.prompts) and torch.equal(first.keys, second.keys)
    assert first.prompts.abs().max() <= 1 and first.prompts.min() < -0.9 and first.keys.max() > 0.9
    with pytest.raises(ValueError):
        PromptPool(3, (1,), 4, top_k=4)


def test_frozen_query_is_the_unprompted_cls_feature_without_gradient():
    vit = make_tiny_vit()
    images = torch.rand(3, 3, 32, 32)
    query = frozen_query(vit, images)
    assert not query.requires_grad
    assert torch.allclose(query, vit(images), atol=1e-6)


def test_input_prompts_share_the_cls_position_and_leave_patches_unchanged():
    vit = make_tiny_vit()
    images = torch.rand(2, 3, 32, 32)
    plain = embed_tokens(vit, images)
    assert torch.equal(embed_with_prompts(vit, images, torch.zeros(2, 0, 64)), plain)
    prompts = torch.randn(2, 6, 64)
    tokens = embed_with_prompts(vit, images, prompts)
    assert tokens.shape == (2, 1 + 6 + 64, 64)
    assert torch.equal(tokens[:, 0], plain[:, 0])
    assert torch.equal(tokens[:, 1:7], prompts + vit.pos_embed[:, :1])
    assert torch.equal(tokens[:, 7:], plain[:, 1:])


# -- prefix attention ---------------------------------------------------------------------------------
def manual_prefix_attention(attn, x, prefix):
    """Hand-written multi-head attention with [P_k ; K] and [P_v ; V] (spec §1.6)."""
    batch, length, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(batch, length, 3, heads, head_dim).unbind(2)  # each (B, N, H, D)
    k = torch.cat([prefix[:, 0], k], dim=1)
    v = torch.cat([prefix[:, 1], v], dim=1)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / head_dim ** 0.5
    out = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v).reshape(batch, length, dim)
    return attn.proj(out)


@pytest.mark.parametrize("fused", [True, False])
def test_zero_length_prefix_reproduces_the_plain_block(fused):
    vit = make_tiny_vit()
    block = vit.blocks[1]
    block.attn.fused_attn = fused
    x = torch.randn(2, 65, 64)
    plain = block(x)
    wrapper = attach_prefix(vit, [1])[0]
    assert isinstance(block.attn, PrefixAttention) and wrapper.num_heads == 4 and wrapper.head_dim == 16
    with prefixes_set([wrapper], [torch.zeros(2, 2, 0, 4, 16)]):
        assert torch.allclose(block(x), plain, atol=1e-6, rtol=0)
    assert torch.equal(block(x), plain)  # no prefix: the wrapped timm module itself


@pytest.mark.parametrize("fused", [True, False])
def test_prefix_attention_matches_a_hand_computation(fused):
    vit = make_tiny_vit()
    wrapper = attach_prefix(vit, [0])[0]
    wrapper.attn.fused_attn = fused
    x = torch.randn(3, 65, 64)
    prefix = torch.randn(3, 2, 5, 4, 16)
    with prefixes_set([wrapper], [prefix]):
        out = wrapper(x)
    assert out.shape == x.shape
    assert torch.allclose(out, manual_prefix_attention(wrapper.attn, x, prefix), atol=1e-5)
    # A prefix of zero vectors is not the identity: zero keys still take softmax mass.
    with prefixes_set([wrapper], [torch.zeros(1, 2, 5, 4, 16)]):
        assert not torch.allclose(wrapper(x), wrapper.attn(x), atol=1e-4)


def test_prefixes_are_cleared_after_the_pass_even_on_error():
    vit = make_tiny_vit()
    wrappers = attach_prefix(vit, [0, 2])
    assert attach_prefix(vit, [2])[0] is wrappers[1]
    with pytest.raises(RuntimeError):
        with prefixes_set(wrappers, [torch.zeros(1, 2, 1, 4, 16)] * 2):
            raise RuntimeError("boom")
    assert all(wrapper.prefix is None for wrapper in wrappers)
    with pytest.raises(ValueError):
        with prefixes_set(wrappers, [torch.zeros(1, 2, 1, 4, 16)]):
            pass


def test_official_prefix_order_follows_the_spec_formula():
    batch = 5
    prefix = torch.randn(batch, 2, 3, 4, 16)
    quirk = official_prefix_order(prefix)
    for b in range(batch):
        for half in (0, 1):
            flat = 2 * b + half
            assert torch.equal(quirk[b, half], prefix[flat % batch, flat // batch])


def test_official_prefix_order_under_a_shared_prompt():
    batch = 5
    prompt = torch.randn(2, 3, 4, 16)
    quirk = official_prefix_order(prompt.expand(batch, -1, -1, -1, -1))
    key, value = prompt
    for b in (0, 1):  # first half: key prefix and value prefix are both the key half
        assert torch.equal(quirk[b, 0], key) and torch.equal(quirk[b, 1], key)
    assert torch.equal(quirk[2, 0], key) and torch.equal(quirk[2, 1], value)  # the middle of an odd batch
    for b in (3, 4):  # second half: both are the value half
        assert torch.equal(quirk[b, 0], value) and torch.equal(quirk[b, 1], value)


def test_coda_layout_splits_a_prompt_into_key_and_value_halves():
    prompt = torch.randn(2, 8, 64)
    prefix = split_prompt_tokens(prompt, num_heads=4)
    assert prefix.shape == (2, 2, 4, 4, 16)
    assert torch.equal(prefix[:, 0].reshape(2, 4, 64), prompt[:, :4])
    assert torch.equal(prefix[:, 1].reshape(2, 4, 64), prompt[:, 4:])
    with pytest.raises(ValueError):
        split_prompt_tokens(torch.randn(1, 3, 64), num_heads=4)


def test_prefixed_blocks_feed_gradient_to_the_prefix_only():
    vit = make_tiny_vit()
    for parameter in vit.parameters():
        parameter.requires_grad_(False)
    wrappers = attach_prefix(vit, [1, 3])
    prefixes = [torch.randn(1, 2, 2, 4, 16, requires_grad=True) for _ in wrappers]
    images = torch.rand(2, 3, 32, 32)
    with prefixes_set(wrappers, prefixes):
        feature = cls_feature(vit, run_blocks(vit, embed_tokens(vit, images)))
    feature.sum().backward()
    assert all(prefix.grad is not None and prefix.grad.abs().sum() > 0 for prefix in prefixes)
    assert torch.allclose(cls_feature(vit, run_blocks(vit, embed_tokens(vit, images))), vit(images))
