"""Human-readable documentation of methods and their hyper-parameters, read from their source.

A hyper-parameter's help text is the docstring written under its dataclass field (or a trailing ``#``
comment), so a method documents its switches once, beside their declaration.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from benchmark.config import resolve_hparams


def first_line(obj: Any) -> str:
    """The first line of an object's docstring."""
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def field_docs(config_class: type) -> dict[str, str]:
    """Field name -> help text for a config dataclass and its bases."""
    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        body = ast.parse(source).body[0].body
        for position, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name = node.target.id
                following = body[position + 1] if position + 1 < len(body) else None
                if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                        and isinstance(following.value.value, str)):
                    docs[name] = " ".join(following.value.value.split())
                else:
                    line = lines[node.lineno - 1]
                    if "#" in line:
                        docs[name] = line.split("#", 1)[1].strip()
    return docs


def describe_hparams(method_class: type, family: str | None) -> str:
    """The method's hyper-parameters: resolved value for ``family`` (or defaults), type and help."""
    config = resolve_hparams(method_class.config_class,
                             method_class.family_defaults(family) if family else {}, {})
    docs = field_docs(method_class.config_class)
    lines = [f"{method_class.registry_name}: {first_line(method_class)}",
             f"hyper-parameters ({'defaults for ' + family if family else 'class defaults'}; "
             "override with --set key=value):"]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        type_name = getattr(field.type, "__name__", str(field.type))
        lines.append(f"  {field.name} = {value!r}  [{type_name}]" + (f"  {docs[field.name]}" if field.name in docs
                                                                     else ""))
    if method_class.default_cfgs:
        lines.append("benchmark families with their own defaults: " + ", ".join(sorted(method_class.default_cfgs)))
    own_backbones = getattr(method_class, "default_backbones", {})
    if own_backbones:
        if family:
            lines.append(f"backbone ({family}): {own_backbones.get(family, 'the benchmark default')}; "
                         "change with --backbone")
        else:
            lines.append("own default backbones: " + ", ".join(f"{k}: {v}" for k, v in sorted(own_backbones.items())))
    return "\n".join(lines)
