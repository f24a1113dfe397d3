"""`bench plot`: figures per benchmark under ``<results>/plots``."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.errors import ClbenchError
from benchmark.cli.common import default_results_dir, load_reported


def command(args: argparse.Namespace) -> int:
    """PNG plots per benchmark under ``<results>/plots`` (nothing is created when nothing finished)."""
    from benchmark.reporting.tables import plot_results

    results = load_reported(args)
    paths = plot_results(results, Path(args.results_dir) / "plots")
    if not paths:
        raise ClbenchError(f"no finished results under {args.results_dir} to plot; run `bench run` first")
    for path in paths:
        print(path)
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    plot = commands.add_parser("plot", help="PNG plots of stored results")
    plot.add_argument("--bench")
    plot.add_argument("--results-dir", default=str(default_results_dir()))
    plot.set_defaults(handler=command)
