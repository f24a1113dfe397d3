"""Contracts of the shared mechanics in ``benchmark/models/peft/`` that no method test reaches: seeded inits, the
errors that refuse a wrong use, and the rules a wrapper keeps between its components."""
import pytest
import torch
from torch import nn

from benchmark.models.peft.decoupled_lora import DecoupledLoRAQKV, Magnitudes, attach_decoupled_lora
from benchmark.models.peft.lora import attach_lora, gaussian_svd_init
from benchmark.models.peft.prompts import embed_with_prompts
from conftest import make_tiny_vit


def test_gaussian_svd_init_draws_from_the_given_generator_only():
    first = gaussian_svd_init(3, 16, torch.Generator().manual_seed(4))
    torch.manual_seed(99)
    second = gaussian_svd_init(3, 16, torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    torch.testing.assert_close(first @ first.T, torch.eye(3))  # orthonormal rows: U V_r^T


def test_input_prompts_refuse_a_vit_with_register_tokens():
    vit = make_tiny_vit(0)
    vit.num_reg_tokens = 1
    with pytest.raises(ValueError, match="^input prompts need a ViT with a CLS token, no register tokens and a "
                                         "fixed position table that includes the CLS row$"):
        embed_with_prompts(vit, torch.rand(1, 3, 32, 32), torch.zeros(1, 2, vit.embed_dim))


def decoupled(dim: int = 8) -> tuple[DecoupledLoRAQKV, Magnitudes]:
    magnitudes = Magnitudes()
    magnitudes.reset(2, 1.0)
    return DecoupledLoRAQKV(nn.Linear(dim, 3 * dim), magnitudes), magnitudes


def test_decoupled_components_must_target_the_same_slots():
    wrapper, _ = decoupled()
    wrapper.add_branch(2, ("q", "v"))
    wrapper.add_branch(2, ("q", "v"))
    with pytest.raises(ValueError, match="^every decoupled component must target the same slots$"):
        wrapper.add_branch(2, ("q", "k"))
    assert len(wrapper.branches) == 2 and tuple(wrapper.offsets.shape) == (2, 2)


def test_decoupled_component_inits_come_from_their_generator():
    first, _ = decoupled()
    second, _ = decoupled()
    torch.manual_seed(5)
    a = first.add_branch(2, ("q", "v"), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(6)
    b = second.add_branch(2, ("q", "v"), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.down, b.down)


def test_decoupled_wrapper_refuses_what_it_does_not_support():
    with pytest.raises(ValueError, match="^unknown direction_norm 'rows' \\(factors, product\\)$"):
        DecoupledLoRAQKV(nn.Linear(8, 24), Magnitudes(), "rows")
    wrapper, magnitudes = decoupled()
    for _ in range(3):
        wrapper.add_branch(2)
    with pytest.raises(ValueError, match="^3 components but only 2 magnitudes$"):
        wrapper.component_factors()
    wrapper, _ = decoupled()
    wrapper.add_branch(2)
    wrapper.dropout = 0.1
    with pytest.raises(ValueError, match="has no dropout"):
        wrapper(torch.rand(2, 8))
    vit = make_tiny_vit(0)
    attach_lora(vit, [1])
    with pytest.raises(ValueError, match="^block 1 already has a \\(non-decoupled\\) LoRA wrapper$"):
        attach_decoupled_lora(vit, Magnitudes())


def test_a_new_decoupled_wrapper_has_no_offsets():
    wrapper, _ = decoupled()
    assert tuple(wrapper.offsets.shape) == (0, 0)
    wrapper.add_branch(2, ("q", "k", "v"))
    assert tuple(wrapper.offsets.shape) == (1, 3)


def test_coda_refills_a_task_from_the_methods_own_generator(monkeypatch):
    from baselines.coda_prompt import CodaPrompt, CodaPromptConfig
    from benchmark.config import resolve_hparams
    from benchmark.learners.prompt import PromptLearner
    from conftest import make_tasks

    monkeypatch.setattr(PromptLearner, "train_task", lambda self, task: None)  # the refill alone
    states = []
    for global_seed in (1, 2):
        hparams = resolve_hparams(CodaPromptConfig, CodaPrompt.family_defaults("digits"), {})
        method = CodaPrompt(make_tiny_vit(0), hparams, num_classes=4, num_tasks=2, seed=1993)
        before = {key: value.clone() for key, value in method.state_dict().items() if torch.is_tensor(value)}
        torch.manual_seed(global_seed)
        method.train_task(make_tasks(2, 2, per_class=2, batch_size=4)[0][1])
        states.append({key: value for key, value in method.state_dict().items() if torch.is_tensor(value)})
        assert any(not torch.equal(before[key], states[-1][key]) for key in before)  # task 1's rows were filled
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_adapters_refuse_what_they_cannot_wrap():
    from benchmark.errors import ClbenchError
    from benchmark.models.peft.adapter import Adapter, add_adapter_set, attach_adapters

    Adapter(8, 1)
    with pytest.raises(ClbenchError, match="^adapter bottleneck must be >= 1, got 0$"):
        Adapter(8, 0)
    vit = make_tiny_vit(0)
    vit.blocks[2].norm2 = nn.Identity()
    with pytest.raises(ClbenchError, match="^block 2 has no norm2 to move into an adapter wrapper$"):
        attach_adapters(vit)
    wrappers = attach_adapters(make_tiny_vit(0))
    wrappers[0].add_adapter(4, 0.1, 0.0, None)
    with pytest.raises(ClbenchError, match=r"^wrappers hold different numbers of adapter sets: \[0, 1\]$"):
        add_adapter_set(wrappers, 4)
