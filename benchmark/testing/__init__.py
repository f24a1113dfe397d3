"""The conformance kit: the method contract as code, for this repository's tests and for plugin authors.

``check_method(MyMethod, **overrides)`` trains a tiny ViT on fabricated data and checks every rule in ``RULES``;
the first broken rule raises :class:`ContractViolation`, one sentence naming the method and the rule. In a
plugin's own test suite, one test per rule::

    import pytest
    from benchmark.testing import RULES, check_rule
    from my_plugin import MyMethod

    @pytest.mark.parametrize("rule", RULES)
    def test_contract(rule):
        check_rule(MyMethod, rule)

The kit sits above every other layer (it drives methods, checkpoints and the CLI); nothing in the harness
imports it. May import: everything.
"""
from benchmark.testing.contract import RULES, ContractViolation, check_method, check_rule
from benchmark.testing.data import make_tasks, synthetic_images

__all__ = ["RULES", "ContractViolation", "check_method", "check_rule", "make_tasks", "synthetic_images"]
