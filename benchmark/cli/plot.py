"""`bench plot`: figures per benchmark under ``<results>/plots`` (PNG and SVG; PDF with ``--pdf``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.common import default_results_dir, load_reported
from benchmark.errors import ClbenchError


def command(args: argparse.Namespace) -> int:
    """Figures per benchmark under ``<results>/plots`` (nothing is created when nothing finished)."""
    from benchmark.reporting.figures import FORMATS, plot_results

    results = load_reported(args)
    formats = FORMATS + (("pdf",) if args.pdf else ())
    paths = plot_results(results, Path(args.results_dir) / "plots", formats)
    if not paths:
        raise ClbenchError(f"no finished results under {args.results_dir} to plot; run `bench run` first")
    for path in paths:
        print(path)
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    plot = commands.add_parser("plot", help="figures of stored results (PNG and SVG)")
    plot.add_argument("--bench")
    plot.add_argument("--pdf", action="store_true", help="also write each figure as PDF")
    plot.add_argument("--results-dir", default=str(default_results_dir()))
    plot.set_defaults(handler=command)
