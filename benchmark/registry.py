"""Name registries for methods, benchmarks and backbones.

A decorator registers an object under a name (as timm's ``register_model`` does). A registry fills itself on
first use from its entry-point group, so it imports nothing of the packages that register into it (no import
circle): the built-in methods, datasets and backbones are declared in ``pyproject.toml`` under the groups
``clbench.methods``, ``clbench.datasets`` and ``clbench.backbones``, exactly as an installed plugin declares
its own. An entry point names a module; importing it registers what it defines (a package such as
``baselines`` imports each of its modules: :func:`import_submodules`). An unknown name is a
:class:`ClbenchError` listing the valid names and suggesting the closest one.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from benchmark.errors import ClbenchError

T = TypeVar("T")

METHOD_GROUP = "clbench.methods"
DATASET_GROUP = "clbench.datasets"
BACKBONE_GROUP = "clbench.backbones"
DISTRIBUTION = "clbench"


class Registry(Generic[T]):
    """A mapping from names to registered objects, filled by a decorator."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        """``group``: the entry-point group loaded on first use (None: only what is registered directly)."""
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._modules: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._loaded = group is None

    def register(self, name: str, origin: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a name may be registered once. ``origin`` says where it
        came from when it is not a module (a declaration file); otherwise :meth:`origin` derives it."""

        def decorate(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({existing!r} and {obj!r})")
            self._items[name] = obj
            self._modules[name] = sys._getframe(1).f_globals.get("__name__", "")  # the registering module
            if origin is not None:
                self._origins[name] = origin
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
            self.load_entry_points()

    def load_entry_points(self) -> None:
        """Import every module of this registry's entry-point group (each registers what it defines)."""
        if self.group is not None:
            for entry_point in metadata.entry_points(group=self.group):
                entry_point.load()

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a temporary registration such as the conformance kit's, or a declared dataset whose
        file is dropped); unknown names are ignored."""
        for table in (self._items, self._modules, self._origins):
            table.pop(name, None)

    def origin(self, name: str) -> str:
        """Where ``name`` came from: ``built-in``, ``entry point NAME = MODULE (DIST)``, the origin given at
        registration (a declaration file), or ``module M`` when registered by code outside any entry point."""
        self._ensure_loaded()
        if name in self._origins:
            return self._origins[name]
        module = self._modules.get(name, "")
        for entry_point in metadata.entry_points(group=self.group) if self.group else ():
            if module == entry_point.value or module.startswith(entry_point.value + "."):
                dist = entry_point.dist.name if entry_point.dist is not None else ""
                if dist == DISTRIBUTION:
                    return "built-in"
                return f"entry point {entry_point.name} = {entry_point.value}" + (f" ({dist})" if dist else "")
        return f"module {module}"

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


def import_submodules(package_name: str) -> None:
    """Import every public module of a package (what a package entry point such as ``baselines`` calls in its
    ``__init__``, so that a new method is one new file)."""
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package_name}.{module.name}")


METHODS: Registry = Registry("method", METHOD_GROUP)
DATASETS: Registry = Registry("dataset", DATASET_GROUP)
BACKBONES: Registry = Registry("backbone", BACKBONE_GROUP)


def register_method(name: str):
    """Register a :class:`benchmark.method.Method` subclass under ``name`` (usable from plugins)."""
    return METHODS.register(name)


def register_dataset(name: str, origin: str | None = None):
    """Register a :class:`benchmark.data.datasets.DatasetSpec` under ``name`` (``origin``: the declaration file
    of a dataset declared without code)."""
    return DATASETS.register(name, origin)


def register_backbone(name: str):
    """Register a backbone factory ``f(pretrained: bool) -> VisionTransformer`` under ``name``."""
    return BACKBONES.register(name)
