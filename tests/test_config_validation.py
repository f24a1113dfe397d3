"""Every hyper-parameter rule of every method, as a user meets it (``--set KEY=VALUE`` strings): the value
just outside a rule is refused with the rule's message, the value on its edge is accepted."""
import re

import pytest

from benchmark.config import resolve_hparams
from benchmark.errors import ClbenchError
from benchmark.registry import METHODS

TASK_LORA = "epochs and rank must be >= 1 and lr > 0"
FIRST_TASK = "need epochs >= 0, bottleneck >= 1, lr > 0 and 0 <= adapter_dropout < 1"
EASE_TUNING = "need epochs >= 1, bottleneck >= 1, lr > 0 and 0 <= adapter_dropout < 1"
REFUSED = [
    ("cl_lora", {"rank": "0"}, "rank must be >= 1"),
    ("cl_lora", {"targets": "q;q"}, "targets must be distinct slots among q, k, v"),
    ("cl_lora", {"targets": "q;x"}, "targets must be distinct slots among q, k, v"),
    ("cl_lora", {"shared_blocks": "-1"}, "shared_blocks must be >= 0"),
    ("cl_lora", {"epochs": "0"}, "epochs must be >= 1, lr > 0 and max_branch_batch >= 0"),
    ("cl_lora", {"lr": "0"}, "epochs must be >= 1, lr > 0 and max_branch_batch >= 0"),
    ("cl_lora", {"max_branch_batch": "-1"}, "epochs must be >= 1, lr > 0 and max_branch_batch >= 0"),
    ("coda_prompt", {"epochs": "0"}, "CODA-Prompt needs epochs >= 1, lr > 0 and ortho_mu >= 0"),
    ("coda_prompt", {"lr": "0"}, "CODA-Prompt needs epochs >= 1, lr > 0 and ortho_mu >= 0"),
    ("coda_prompt", {"ortho_mu": "-0.1"}, "CODA-Prompt needs epochs >= 1, lr > 0 and ortho_mu >= 0"),
    ("coda_prompt", {"prompt_length": "3"}, "prompt_length must be even (key and value halves), got 3"),
    ("coda_prompt", {"prompt_length": "0"}, "prompt_length must be even (key and value halves), got 0"),
    ("coda_prompt", {"prompt_blocks": "1;1"}, "prompt_blocks must be distinct block indices, got (1, 1)"),
    ("dualprompt", {"e_pool_size": "0"}, "e_pool_size must be a positive integer or 'auto', got '0'"),
    ("dualprompt", {"e_pool_size": "many"}, "e_pool_size must be a positive integer or 'auto', got 'many'"),
    ("dualprompt", {"g_prompt_blocks": "0;2"}, "g_prompt_blocks and e_prompt_blocks must not share a block"),
    ("ease", {"epochs": "0"}, EASE_TUNING),
    ("ease", {"lr": "0"}, EASE_TUNING),
    ("ease", {"bottleneck": "0"}, EASE_TUNING),
    ("ease", {"adapter_dropout": "1"}, EASE_TUNING),
    ("ease", {"alpha": "-0.1"}, "alpha and max_sets_per_pass must be >= 0"),
    ("ease", {"max_sets_per_pass": "-1"}, "alpha and max_sets_per_pass must be >= 0"),
    ("inflora", {"lamb": "0"}, "InfLoRA needs 0 < lamb <= lame <= 1"),
    ("inflora", {"lamb": "0.9", "lame": "0.8"}, "InfLoRA needs 0 < lamb <= lame <= 1"),
    ("inflora", {"lame": "1.01"}, "InfLoRA needs 0 < lamb <= lame <= 1"),
    ("inflora", {"rank": "0"}, TASK_LORA),
    ("olora", {"epochs": "0"}, TASK_LORA),
    ("olora", {"lr": "0"}, TASK_LORA),
    ("olora", {"targets": "q;q"}, "targets must be distinct slots from ('q', 'k', 'v')"),
    ("olora", {"targets": "x"}, "targets must be distinct slots from ('q', 'k', 'v')"),
    ("olora", {"dropout": "1"}, "O-LoRA needs 0 <= dropout < 1 and non-negative lambdas"),
    ("olora", {"dropout": "-0.1"}, "O-LoRA needs 0 <= dropout < 1 and non-negative lambdas"),
    ("olora", {"lambda_orth": "-1"}, "O-LoRA needs 0 <= dropout < 1 and non-negative lambdas"),
    ("olora", {"lambda_l2": "-1"}, "O-LoRA needs 0 <= dropout < 1 and non-negative lambdas"),
    ("lae_lora", {"epochs": "0"}, "epochs and rank must be >= 1 and lr > 0"),
    ("lae_lora", {"rank": "0"}, "epochs and rank must be >= 1 and lr > 0"),
    ("lae_lora", {"lr": "0"}, "epochs and rank must be >= 1 and lr > 0"),
    ("lae_lora", {"num_freeze_epochs": "-1"}, "num_freeze_epochs must be >= 0"),
    ("lae_lora", {"ema_decay": "-0.1"}, "ema_decay must be in [0, 1]"),
    ("lae_lora", {"ema_decay": "1.1"}, "ema_decay must be in [0, 1]"),
    ("lae_lora", {"adapt_blocks": "1;1"}, "adapt_blocks must be distinct block indices >= 0, got (1, 1)"),
    ("lae_lora", {"adapt_blocks": "-1"}, "adapt_blocks must be distinct block indices >= 0, got (-1,)"),
    ("aper", {"epochs": "-1"}, FIRST_TASK),
    ("aper", {"bottleneck": "0"}, FIRST_TASK),
    ("aper", {"lr": "0"}, FIRST_TASK),
    ("ranpac", {"adapter_dropout": "1"}, FIRST_TASK),
    ("ranpac", {"projection_dim": "0"}, "projection_dim must be >= 1"),
    ("sd_lora", {"epochs": "0"}, "sd_lora needs epochs >= 1, lr > 0 and rank >= 1"),
    ("sd_lora", {"init_epochs": "0"}, "sd_lora needs epochs >= 1, lr > 0 and rank >= 1"),
    ("sd_lora", {"lr": "0"}, "sd_lora needs epochs >= 1, lr > 0 and rank >= 1"),
    ("sd_lora", {"init_lr": "0"}, "sd_lora needs epochs >= 1, lr > 0 and rank >= 1"),
    ("sd_lora", {"rank": "0"}, "sd_lora needs epochs >= 1, lr > 0 and rank >= 1"),
    ("sd_lora", {"rr_milestones": "4", "rr_ranks": "8;4"},
     "sd_lora: rr_milestones and rr_ranks need the same length and ranks >= 1"),
    ("sd_lora", {"rr_ranks": "8;0"}, "sd_lora: rr_milestones and rr_ranks need the same length and ranks >= 1"),
    ("sd_lora", {"rr_milestones": "8;4"}, "sd_lora: rr_milestones must be increasing"),
    ("sd_lora", {"kd_threshold": "-0.1"}, "sd_lora: kd_threshold must be >= 0"),
    ("finetune", {"weight_decay": "-1"}, "finetune needs epochs >= 1, lr > 0 and weight_decay >= 0"),
]
ACCEPTED = [
    ("cl_lora", {"rank": "1", "targets": "v", "shared_blocks": "0", "max_branch_batch": "0", "epochs": "1"}),
    ("coda_prompt", {"ortho_mu": "0", "prompt_length": "2", "epochs": "1"}),
    ("dualprompt", {"e_pool_size": "1"}),
    ("dualprompt", {"e_pool_size": "auto"}),
    ("ease", {"bottleneck": "1", "adapter_dropout": "0", "alpha": "0", "max_sets_per_pass": "0", "epochs": "1"}),
    ("inflora", {"lamb": "0.9", "lame": "0.9"}),
    ("inflora", {"lamb": "0.5", "lame": "1"}),
    ("olora", {"targets": "k", "dropout": "0", "lambda_orth": "0", "lambda_l2": "0", "rank": "1"}),
    ("lae_lora", {"rank": "1", "num_freeze_epochs": "0", "ema_decay": "0", "adapt_blocks": "0"}),
    ("lae_lora", {"ema_decay": "1"}),
    ("aper", {"epochs": "0", "bottleneck": "1", "adapter_dropout": "0"}),
    ("ranpac", {"projection_dim": "1"}),
    ("sd_lora", {"rank": "1", "init_epochs": "1", "rr_milestones": "1;1", "rr_ranks": "1;1", "kd_threshold": "0"}),
]


def resolve(name: str, overrides: dict[str, str]):
    method_class = METHODS.get(name)
    return resolve_hparams(method_class.config_class, method_class.family_defaults("digits"), overrides)


@pytest.mark.parametrize("name,overrides,message", REFUSED)
def test_value_outside_a_rule_is_refused_with_its_message(name, overrides, message):
    with pytest.raises(ClbenchError, match=f"^{re.escape(message)}"):
        resolve(name, overrides)


@pytest.mark.parametrize("name,overrides", ACCEPTED)
def test_values_on_the_edge_of_each_rule_are_accepted(name, overrides):
    config = resolve(name, overrides)
    assert config is not None
