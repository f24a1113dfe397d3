"""`bench report`: one self-contained HTML page of stored results (tables, figures, failures, provenance)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.common import default_results_dir, load_reported, split_list
from benchmark.errors import ClbenchError


def command(args: argparse.Namespace) -> int:
    """Write the page (default ``<results>/report.html``); it opens offline, figures are inline SVG."""
    from benchmark.registry import METHODS
    from benchmark.reporting.report import build_report
    from benchmark.store.results import atomic_write_bytes

    methods = split_list(args.methods)
    for method in methods:
        METHODS.get(method.partition("[")[0])  # an unknown name lists the valid ones
    results = load_reported(args)
    if results.empty:
        raise ClbenchError(f"no runs under {args.results_dir}" + (f" for {args.bench}" if args.bench else "")
                           + "; run `bench run` first")
    output = Path(args.output) if args.output else Path(args.results_dir) / "report.html"
    page = build_report(results, source=Path(args.results_dir).resolve().name, methods=methods or None)
    atomic_write_bytes(output, page.encode())
    print(f"written: {output}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    report = commands.add_parser("report", help="one self-contained HTML page of stored results")
    report.add_argument("--bench", help="only this benchmark (default: every one in the results dir)")
    report.add_argument("--methods", help="comma-separated methods to show (default: every one with results)")
    report.add_argument("-o", "--output", help="where to write the page (default: <results-dir>/report.html)")
    report.add_argument("--results-dir", default=str(default_results_dir()))
    report.set_defaults(handler=command)
