"""Name registries for methods, benchmarks and backbones.

A decorator registers an object under a name (as timm's ``register_model`` does). Methods are found
automatically in the ``methods`` and ``baselines`` packages and in installed distributions that expose the
``clbench.methods`` entry-point group. An unknown name is a :class:`ClbenchError` listing the valid names
and suggesting the closest one.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from benchmark.errors import ClbenchError

T = TypeVar("T")

ENTRY_POINT_GROUP = "clbench.methods"
BUILTIN_METHOD_PACKAGES = ("methods", "baselines")


class Registry(Generic[T]):
    """A mapping from names to registered objects, filled by a decorator."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name may be registered once."""

        def decorate(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({existing!r} and {obj!r})")
            self._items[name] = obj
            if hasattr(obj, "__dict__") and not isinstance(obj, type(lambda: 0)):
                try:
                    setattr(obj, "registry_name", name)
                except (AttributeError, TypeError):
                    pass
            return obj

        return decorate

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name lists the valid ones."""
        self._ensure_loaded()
        if name not in self._items:
            raise ClbenchError(unknown_name_message(self.kind, name, self.names()))
        return self._items[name]


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """'unknown method 'x'; did you mean 'y'? valid: a, b, c'."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(valid)}"


def _import_builtin_and_plugin_methods() -> None:
    for package_name in BUILTIN_METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()


def _import_builtin_benchmarks() -> None:
    importlib.import_module("benchmark.datasets")


def _import_builtin_backbones() -> None:
    importlib.import_module("benchmark.backbones")


METHODS: Registry = Registry("method", _import_builtin_and_plugin_methods)
DATASETS: Registry = Registry("dataset", _import_builtin_benchmarks)
BACKBONES: Registry = Registry("backbone", _import_builtin_backbones)


def register_method(name: str):
    """Register a :class:`benchmark.method.Method` subclass under ``name`` (usable from plugins)."""
    return METHODS.register(name)


def register_dataset(name: str):
    """Register a :class:`benchmark.datasets.DatasetSpec` under ``name``."""
    return DATASETS.register(name)


def register_backbone(name: str):
    """Register a backbone factory ``f(pretrained: bool) -> VisionTransformer`` under ``name``."""
    return BACKBONES.register(name)
