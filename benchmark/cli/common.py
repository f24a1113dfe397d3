"""What several commands share: list options, the default results dir, method selection and ``--set`` scoping.

Command modules import the harness inside their ``command`` function, so ``bench --help`` starts quickly."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from benchmark.config import parse_overrides
from benchmark.errors import ClbenchError
from benchmark.registry import METHODS

DEFAULT_BENCH = "digits_t5"


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def default_results_dir() -> Path:
    """``$CLBENCH_RESULTS_DIR``, else ``results``."""
    return Path(os.environ.get("CLBENCH_RESULTS_DIR", "results"))


def selected_methods(text: str | None) -> list[str]:
    """The methods of a ``--methods`` list (default: every registered one); an unknown name lists the valid ones."""
    names = split_list(text) or METHODS.names()
    for name in names:
        METHODS.get(name)
    return names


def overrides_for(method: str, pairs: list[str] | None, methods: list[str]) -> dict[str, str]:
    """``--set key=value`` applies to every method having the key; ``--set method.key=value`` to one."""
    overrides = parse_overrides(pairs)
    for key in overrides:
        scope, _, field = key.rpartition(".")
        if scope and scope not in methods:
            raise ClbenchError(f"--set {key}: '{scope}' is not one of the selected methods ({', '.join(methods)})")
        owners = [m for m in ([scope] if scope else methods)
                  if field in {f.name for f in dataclasses.fields(METHODS.get(m).config_class)}]
        if not owners:
            valid = sorted({f.name for m in methods for f in dataclasses.fields(METHODS.get(m).config_class)})
            raise ClbenchError(f"--set {key}: no selected method has a hyper-parameter '{field}'; "
                               f"valid: {', '.join(valid)}")
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).config_class)}
    selected = {}
    for key, value in overrides.items():
        scope, _, field = key.rpartition(".")
        if (not scope or scope == method) and field in fields:
            selected[field] = value
    return selected


def load_reported(args: argparse.Namespace):
    """The stored results for ``bench table``/``plot``; a missing dir is an error, an unreadable run a warning."""
    from benchmark.reporting.tables import load_results

    if not Path(args.results_dir).is_dir():
        raise ClbenchError(f"results dir {args.results_dir} does not exist; run `bench run` first "
                           "or pass --results-dir")
    skipped: list[str] = []
    results = load_results(Path(args.results_dir), args.bench, skipped=skipped)
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    return results
