"""One look per method, the same in every figure and in the report: colour, marker and line style.

A method's slot is its index in the sorted list of every registered method name (names found only in results,
e.g. of an uninstalled plugin, come after), so which methods a figure shows never changes a method's look.
Colours: tab20's ten dark shades first, then its ten light ones (neighbouring slots differ in hue); markers cycle
with a period (7) prime to the palette's (20), so two slots share colour and marker only 140 apart. A grid variant
(``cl_lora[kd+gr]``) keeps its base method's colour and marker and takes a dashed line style picked from its name.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from matplotlib import colormaps
from matplotlib.colors import to_hex

from benchmark.registry import METHODS

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
VARIANT_DASHES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
_TAB20 = [to_hex(colour) for colour in colormaps["tab20"].colors]
PALETTE = tuple(_TAB20[0::2] + _TAB20[1::2])


@dataclass(frozen=True)
class MethodStyle:
    """How a method (or variant) is drawn: ``colour`` (hex), matplotlib ``marker`` and ``linestyle``."""

    colour: str
    marker: str
    linestyle: str | tuple


def base_name(method: str) -> tuple[str, str | None]:
    """``"cl_lora[kd+gr]"`` -> ``("cl_lora", "kd+gr")``; ``"aper"`` -> ``("aper", None)``."""
    if method.endswith("]") and "[" in method:
        base, _, variant = method[:-1].partition("[")
        return base, variant
    return method, None


def method_order(extra: Iterable[str] = ()) -> list[str]:
    """Every registered method name, sorted, then base names of ``extra`` that are not registered, sorted."""
    registered = METHODS.names()
    unknown = sorted({base_name(name)[0] for name in extra} - set(registered))
    return registered + unknown


def method_style(method: str, order: list[str]) -> MethodStyle:
    """The look of ``method`` (a name or ``name[variant]``) given the slot order of :func:`method_order`."""
    base, variant = base_name(method)
    slot = order.index(base)
    linestyle = "-"
    if variant is not None:
        linestyle = VARIANT_DASHES[int(hashlib.sha256(variant.encode()).hexdigest(), 16) % len(VARIANT_DASHES)]
    return MethodStyle(colour=PALETTE[slot % len(PALETTE)], marker=MARKERS[slot % len(MARKERS)],
                       linestyle=linestyle)


def styles_for(methods: Iterable[str]) -> dict[str, MethodStyle]:
    """``{method: style}`` for the given names (the slot order also counts every registered method)."""
    methods = list(methods)
    order = method_order(methods)
    return {method: method_style(method, order) for method in methods}
