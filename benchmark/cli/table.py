"""`bench table`: summary table of stored results, and the runs that did not finish."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.common import default_results_dir, load_reported, split_list
from benchmark.errors import ClbenchError


def command(args: argparse.Namespace) -> int:
    """Summary table of every stored result (methods x benchmarks, mean ± std over seeds), then the runs that
    did not finish with their reasons (also when none finished; the exit status is then 2)."""
    from benchmark.reporting.tables import failed_runs, render, summary_table, write_tables

    metrics = split_list(args.metric) or ["avg", "last"]
    for metric in metrics:
        if metric not in ("avg", "last", "forgetting"):
            raise ClbenchError(f"--metric {metric}: valid metrics are avg, last, forgetting")
    results = load_reported(args)
    table = summary_table(results, metrics, with_paper=args.paper)
    paths = []
    if not table.empty:
        print(render(table, args.format), end="")
        paths = write_tables(table, Path(args.results_dir) / "tables")
    problems = failed_runs(results)
    if len(problems):
        print(("\n" if paths else "") + "unfinished runs:")
        for _, row in problems.iterrows():
            print(f"  {row['bench']}/{row['method']}/seed{row['seed']}: {row['state']}")
            if row["reason"]:
                print(f"    {row['reason']}")
    if table.empty:
        raise ClbenchError(f"no finished results under {args.results_dir}" + (f" for {args.bench}" if args.bench
                                                                               else "") + "; run `bench run` first")
    print(f"\nwritten: {', '.join(str(path) for path in paths)}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    table = commands.add_parser("table", help="summary table of stored results")
    table.add_argument("--bench")
    table.add_argument("--metric", help="comma-separated: avg, last, forgetting (default: avg,last)")
    table.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    table.add_argument("--paper", action="store_true", help="put the published number beside each measured one")
    table.add_argument("--results-dir", default=str(default_results_dir()))
    table.set_defaults(handler=command)
