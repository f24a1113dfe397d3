"""The plan of a ``bench run``: methods x benchmarks x seeds x grid variants expanded into run requests.

A grid variant is a named set of hyper-parameter overrides of one method. It gets its own run folder,
``<results>/<bench>/<method>[<variant>]/seed<k>/`` (``RunRequest.variant``), its own row in ``bench table``
and its own line in ``bench plot``. Variant names are readable and filesystem-safe: from ``--grid`` they
list the swept keys in sorted order (``rank=5,targets=q+v``, ``+`` joining the items of a list value);
presets name their rows as the paper does (``kd+gr`` in Table 2, ``../shared/specs/paper_tables.md`` §3).

This module also describes a plan without running it (``--dry-run``): whether each run is new, resumes
after task k or is finished, and the compute left, estimated from finished runs of the same method.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from benchmark.errors import ClbenchError
from benchmark.store.results import find_runs, read_json

SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class Variant:
    """A named set of hyper-parameter overrides (string values, as ``--set`` takes them)."""

    name: str
    overrides: dict[str, str] = field(default_factory=dict, hash=False)


def _preset(rows: Iterable[tuple[str, dict[str, str]]]) -> list[Variant]:
    return [Variant(name, overrides) for name, overrides in rows]


def _table2() -> list[Variant]:
    """CL-LoRA Table 2: KD (``kd``), GR (``grad_reassign``, acts on the KD gradient), BW (``block_weights``)."""
    rows = {"none": (False, False, False), "kd": (True, False, False), "kd+gr": (True, True, False),
            "bw": (False, False, True), "kd+gr+bw": (True, True, True)}
    return _preset((name, {"kd": str(kd).lower(), "grad_reassign": str(gr).lower(),
                           "block_weights": str(bw).lower()}) for name, (kd, gr, bw) in rows.items())


def _table3() -> list[Variant]:
    """CL-LoRA Table 3: LoRA targets (W_v; W_k,W_v; W_q,W_v; W_q,W_k,W_v) x ranks 1, 5, 10, 20, 64."""
    return [Variant(variant_name({"rank": str(rank), "targets": targets}),
                    {"rank": str(rank), "targets": targets.replace("+", ",")})
            for targets in ("v", "k+v", "q+v", "q+k+v") for rank in (1, 5, 10, 20, 64)]


PRESETS: dict[str, tuple[str, Callable[[], list[Variant]]]] = {
    "cl_lora.table2": ("cl_lora", _table2),
    "cl_lora.table3": ("cl_lora", _table3),
}


def parse_seeds(text: str) -> list[int]:
    """``1993,1994`` and inclusive ranges ``1993..2002`` (mixable: ``1993..1995,2000``), in order, no repeats."""
    seeds: list[int] = []
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        try:
            if ".." in item:
                first, last = (int(bound) for bound in item.split("..", 1))
                if last < first:
                    raise ClbenchError(f"--seeds {item}: empty range (the end is before the start)")
                values = range(first, last + 1)
            else:
                values = [int(item)]
        except ValueError:
            raise ClbenchError(f"--seeds must be integers or ranges like 1993..2002, got '{item}'") from None
        seeds.extend(seed for seed in values if seed not in seeds)
    if not seeds:
        raise ClbenchError("--seeds is empty")
    return seeds


def variant_name(values: dict[str, str]) -> str:
    """``key=value`` pairs in sorted key order, comma-joined; every value must be filesystem-safe."""
    for key, value in values.items():
        if not SAFE_VALUE.match(value):
            raise ClbenchError(f"--grid {key}={value}: grid values may only hold letters, digits and . _ + - "
                               "(join list items with +, e.g. targets=q+v)")
    return ",".join(f"{key}={values[key]}" for key in sorted(values))


def _field_types(method: str) -> dict[str, typing.Any]:
    from benchmark.registry import METHODS

    config_class = METHODS.get(method).config_class
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def _as_override(value: str, annotation: typing.Any) -> str:
    """A grid value as ``--set`` text: ``+`` joins list items in a grid (``,`` separates grid values)."""
    origins = {typing.get_origin(annotation)} | {typing.get_origin(a) for a in typing.get_args(annotation)}
    return value.replace("+", ",") if origins & {tuple, list} else value


def parse_grid(pairs: Sequence[str] | None, methods: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``--grid key=v1,v2`` items (scoped like ``--set``: ``method.key`` for one method) -> per method,
    key -> values. An unscoped key applies to every selected method that has it."""
    grid: dict[str, dict[str, list[str]]] = {method: {} for method in methods}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip()
        values = [value.strip() for value in text.split(",") if value.strip()]
        if not sep or not key or not values:
            raise ClbenchError(f"bad --grid '{pair}': expected key=v1,v2,... (or method.key=...)")
        if len(set(values)) != len(values):
            raise ClbenchError(f"--grid {pair}: repeated value")
        scope, _, name = key.rpartition(".")
        if scope and scope not in methods:
            raise ClbenchError(f"--grid {key}: '{scope}' is not one of the selected methods ({', '.join(methods)})")
        owners = [m for m in ([scope] if scope else methods) if name in _field_types(m)]
        if not owners:
            valid = sorted({name for m in methods for name in _field_types(m)})
            raise ClbenchError(f"--grid {key}: no selected method has a hyper-parameter '{name}'; "
                               f"valid: {', '.join(valid)}")
        for owner in owners:
            if name in grid[owner]:
                raise ClbenchError(f"--grid {name} is given twice for {owner}")
            grid[owner][name] = values
    return grid


def grid_variants(method: str, axes: dict[str, list[str]]) -> list[Variant]:
    """The cross product of one method's grid axes (empty axes: no variants)."""
    if not axes:
        return []
    types = _field_types(method)
    keys = list(axes)
    variants = []
    for combination in itertools.product(*(axes[key] for key in keys)):
        values = dict(zip(keys, combination))
        variants.append(Variant(variant_name(values),
                                {key: _as_override(value, types[key]) for key, value in values.items()}))
    return variants


def preset_variants(names: Sequence[str] | None) -> dict[str, list[Variant]]:
    """Variants of each ``--grid-preset``, by method."""
    by_method: dict[str, list[Variant]] = {}
    for name in names or []:
        if name not in PRESETS:
            raise ClbenchError(f"unknown --grid-preset '{name}'; valid: {', '.join(sorted(PRESETS))}")
        method, build = PRESETS[name]
        known = {variant.name for variant in by_method.get(method, [])}
        by_method.setdefault(method, []).extend(v for v in build() if v.name not in known)
    return by_method


def method_variants(methods: Sequence[str], grid: Sequence[str] | None,
                    presets: Sequence[str] | None) -> dict[str, list[Variant | None]]:
    """Per method, the variants to run; ``[None]`` for a method without grid (its plain run folder)."""
    axes = parse_grid(grid, methods)
    from_presets = preset_variants(presets)
    for method in from_presets:
        if method not in methods:
            raise ClbenchError(f"--grid-preset for {method}, but --methods does not select it")
    plan: dict[str, list[Variant | None]] = {}
    for method in methods:
        if axes[method] and method in from_presets:
            raise ClbenchError(f"{method}: use either --grid or --grid-preset, not both")
        variants = grid_variants(method, axes[method]) or from_presets.get(method, [])
        plan[method] = list(variants) or [None]
    return plan


def merge_overrides(method: str, base: dict[str, str], variant: Variant | None) -> dict[str, str]:
    """``--set`` overrides plus the variant's; a key set by both is an error (which one should win?)."""
    if variant is None:
        return dict(base)
    clash = sorted(set(base) & set(variant.overrides))
    if clash:
        raise ClbenchError(f"{method}[{variant.name}]: {', '.join(clash)} is both in --set and in the grid")
    return {**base, **variant.overrides}


# -- dry run -----------------------------------------------------------------------------------------------
def run_state(run) -> tuple[str, int]:
    """``("new"|"resumes"|"finished", tasks_done)`` of a resolved run, read from its folder (nothing written)."""
    store = run.store
    if run.request.fresh or not store.path.exists():
        return "new", 0
    status = store.status()
    if status.get("state") == "finished" and store.metrics_path.exists():
        return "finished", run.num_tasks
    if store.checkpoint_path.exists():
        return "resumes", int(status.get("tasks_done", 0))
    return "new", 0


def finished_seconds(results_dir: Path) -> dict[tuple[str, str], list[float]]:
    """Train + eval seconds of every finished run under ``results_dir``, by (benchmark, method)."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for path in find_runs(results_dir):
        metrics_path = path / "metrics.json"
        if not metrics_path.exists():
            continue
        config, metrics = read_json(path / "config.json"), read_json(metrics_path)
        if "train_seconds" in metrics:
            seconds.setdefault((config["bench"], config["method"]), []).append(
                float(metrics["train_seconds"]) + float(metrics.get("eval_seconds", 0.0)))
    return seconds


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def describe_plan(runs: Sequence, results_dir: Path) -> list[str]:
    """Lines of ``--dry-run``: every planned run with its state, then the estimated compute left."""
    history = finished_seconds(results_dir)
    lines = [f"{'benchmark':<14} {'method':<12} {'variant':<24} {'seed':>5}  {'backbone':<40} {'state':<20} "
             f"{'estimate':>9}"]
    total, estimated, unknown = 0.0, 0, 0
    for run in runs:
        request = run.request
        state, done = run_state(run)
        label = {"new": "new", "finished": "finished", "resumes": f"resumes after task {done}"}[state]
        estimate = "–"
        if state != "finished":
            past = history.get((request.bench, request.method))
            if past:
                seconds = sum(past) / len(past) * (run.num_tasks - done) / run.num_tasks
                total, estimated, estimate = total + seconds, estimated + 1, format_seconds(seconds)
            else:
                unknown += 1
        lines.append(f"{request.bench:<14} {request.method:<12} {request.variant or '–':<24} {request.seed:>5}  "
                     f"{run.backbone:<40} {label:<20} {estimate:>9}")
    todo = estimated + unknown
    lines.append(f"{len(runs)} planned runs, {len(runs) - todo} finished, {todo} to run")
    if estimated:
        lines.append(f"estimated compute left: {format_seconds(total)} for {estimated} runs (mean train+eval "
                     "time of finished runs of the same benchmark and method, one run at a time)")
    if unknown:
        lines.append(f"no estimate for {unknown} runs (no finished run of the same benchmark and method)")
    return lines
