"""The registries: built-in discovery, entry-point plugins, unknown names, hyper-parameter overrides."""
import sys
import textwrap
from dataclasses import dataclass
from typing import Literal

import pytest

from benchmark.config import parse_overrides, resolve_hparams
from benchmark.errors import ClbenchError
from benchmark.registry import METHODS, Registry


def test_builtin_methods_are_discovered():
    assert {"simplecil", "finetune"} <= set(METHODS.names())


def test_unknown_name_lists_valid_names_and_suggests_closest():
    with pytest.raises(ClbenchError) as error:
        METHODS.get("simplecl")
    message = str(error.value)
    assert "Did you mean 'simplecil'" in message
    assert "finetune" in message


def test_register_twice_is_an_error():
    registry = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError):
        registry.register("a")(float)


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch):
    (tmp_path / "clbench_demo_plugin.py").write_text(textwrap.dedent('''
        from baselines.simplecil import SimpleCIL
        from benchmark.registry import register_method

        @register_method("demo_plugin")
        class DemoPlugin(SimpleCIL):
            """A plugin method from an installed distribution."""
    '''))
    dist = tmp_path / "clbench_demo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clbench-demo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clbench.methods]\ndemo_plugin = clbench_demo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        METHODS.load_entry_points()
        assert "demo_plugin" in METHODS.names()
        assert METHODS.get("demo_plugin").__doc__.startswith("A plugin method")
    finally:
        METHODS._items.pop("demo_plugin", None)
        sys.modules.pop("clbench_demo_plugin", None)


@dataclass
class DemoConfig:
    epochs: int = 3
    lr: float = 0.1
    use_kd: bool = True
    optimizer: Literal["sgd", "adam"] = "sgd"
    targets: tuple[str, ...] = ("q", "v")
    shared_blocks: int | None = None


def test_overrides_are_typed_and_layered():
    config = resolve_hparams(DemoConfig, {"epochs": 5}, parse_overrides(
        ["lr=0.5", "use_kd=false", "optimizer=adam", "targets=q,k,v", "shared_blocks=none"]))
    assert config == DemoConfig(epochs=5, lr=0.5, use_kd=False, optimizer="adam", targets=("q", "k", "v"),
                                shared_blocks=None)


@pytest.mark.parametrize("pair, fragment", [
    ("epoch=3", "unknown hyper-parameter 'epoch'"),
    ("epochs=three", "expected int"),
    ("use_kd=maybe", "expected a boolean"),
    ("optimizer=rmsprop", "must be one of"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides_are_clear_errors(pair, fragment):
    with pytest.raises(ClbenchError, match=fragment):
        resolve_hparams(DemoConfig, {}, parse_overrides([pair]))
