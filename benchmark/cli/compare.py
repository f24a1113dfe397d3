"""`bench compare A B`: difference of Ā and A_T between two methods with a 95 % interval over seeds."""
from __future__ import annotations

import argparse

from benchmark.cli.common import DEFAULT_BENCH, default_results_dir, load_reported
from benchmark.errors import ClbenchError

LABELS = {"avg": ("avg_acc", "Ā"), "last": ("last_acc", "A_T")}


def command(args: argparse.Namespace) -> int:
    """Print A - B of each metric with its interval and verdict (paired t on shared seeds, Welch otherwise)."""
    from benchmark.reporting.figures import finished_runs
    from benchmark.reporting.statistics import compare

    finished = finished_runs(load_reported(args))
    available = sorted(finished["method"].unique()) if len(finished) else []
    for method in (args.a, args.b):
        if method not in available:
            raise ClbenchError(f"no finished run of '{method}' on {args.bench} under {args.results_dir}; "
                               f"finished: {', '.join(available) or 'none'}")
    if args.a == args.b:
        raise ClbenchError("compare two different methods (or variants)")
    metrics = [args.metric] if args.metric else ["avg", "last"]
    first = compare(finished, args.a, args.b, LABELS[metrics[0]][0])
    seeds = (f"seeds {_seeds(first.seeds_a)}" if first.test == "paired t"
             else f"seeds {_seeds(first.seeds_a)} vs {_seeds(first.seeds_b)}")
    print(f"{args.bench}: {args.a} − {args.b}, {first.test} over {seeds}")
    for metric in metrics:
        column, label = LABELS[metric]
        result = compare(finished, args.a, args.b, column)
        interval = (f"95 % CI [{result.low:+.2f}, {result.high:+.2f}]" if result.has_interval
                    else "95 % CI –")
        print(f"  {label:<4} {result.difference:+.2f}  {interval}  {result.verdict()}")
    return 0


def _seeds(seeds: tuple) -> str:
    return ", ".join(str(seed) for seed in seeds)


def add_parser(commands) -> None:
    """The subcommand's options."""
    parser = commands.add_parser("compare", help="difference of two methods with a 95 %% interval over seeds")
    parser.add_argument("a", help="method (or variant, e.g. cl_lora[kd+gr])")
    parser.add_argument("b", help="method to compare against")
    parser.add_argument("--bench", default=DEFAULT_BENCH)
    parser.add_argument("--metric", choices=tuple(LABELS), help="only this metric (default: both)")
    parser.add_argument("--results-dir", default=str(default_results_dir()))
    parser.set_defaults(handler=command)
