"""The conformance kit as a plugin author uses it: an example plugin installed through the ``clbench.methods``
entry point passes every rule, and deliberately broken variants fail with the sentence naming their rule."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from benchmark.registry import METHODS
from benchmark.testing import RULES, ContractViolation, check_method, check_rule

PLUGIN = Path(__file__).parent / "example_plugin" / "clbench_example_plugin.py"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The example plugin installed as a distribution (a dist-info with its entry point on sys.path)."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(PLUGIN, site / PLUGIN.name)
    dist = site / "clbench_example_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clbench-example-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clbench.methods]\nexample = clbench_example_plugin\n")
    sys.path.insert(0, str(site))
    try:
        METHODS.load_entry_points()
        yield sys.modules["clbench_example_plugin"]
    finally:
        sys.path.remove(str(site))
        METHODS.unregister("example_nearest_mean")
        sys.modules.pop("clbench_example_plugin", None)


def test_entry_point_plugin_passes_the_kit(plugin):
    assert METHODS.get("example_nearest_mean") is plugin.NearestMeanCIL
    check_method(plugin.NearestMeanCIL)


@pytest.mark.parametrize("rule", RULES)
def test_plugin_test_file_form(plugin, rule):
    check_rule(plugin.NearestMeanCIL, rule, temperature=2.0)


def test_logits_over_all_classes_break_the_seen_class_rule(plugin):
    with pytest.raises(ContractViolation) as error:
        check_method(plugin.AllClassesCIL)
    assert str(error.value) == ("AllClassesCIL breaks the rule 'logits over exactly the seen classes, in global "
                                "class ids': predict returned shape (24, 6) after task 1, expected (24, 2)")
    assert error.value.rule == "seen_class_logits"


def test_global_rng_initialisation_is_caught(plugin):
    with pytest.raises(ContractViolation) as error:
        check_method(plugin.GlobalRandomCIL)
    assert str(error.value) == ("GlobalRandomCIL breaks the rule 'no use of the global RNG for initialisation': its "
                                "initial tensor projection depends on the global RNG (draw it from "
                                "self.make_generator(), or declare it in global_rng_tensors)")


def test_unvalidated_field_is_caught(plugin):
    with pytest.raises(ContractViolation) as error:
        check_rule(plugin.UncheckedTemperatureCIL, "validated_config")
    assert str(error.value) == ("UncheckedTemperatureCIL breaks the rule 'every hyper-parameter is validated': "
                                "--set batch_size=0 is accepted (its validate must call super().validate())")


def test_the_cli_rule_registers_an_unregistered_class_only_for_its_check(plugin):
    check_rule(plugin.AllClassesCIL, "cli")
    assert not any(name.startswith("contract_") for name in METHODS.names())
    assert "registry_name" not in plugin.AllClassesCIL.__dict__
