"""`bench params`: parameter report after all tasks, from shapes only (no data, no weights)."""
from __future__ import annotations

import argparse

from benchmark.cli.common import DEFAULT_BENCH, overrides_for, selected_methods


def command(args: argparse.Namespace) -> int:
    """Parameter report after all tasks, from shapes only (no data, no weights)."""
    from benchmark.runs.resolve import RunRequest, describe_parameters, resolve_run

    methods = selected_methods(args.methods)
    header = (f"{'method':<12} {'backbone':<44} {'trainable/task':>15} {'%':>7} {'head':>9} "
              f"{'trainable total':>16} {'%':>7} {'stored':>11} {'%':>7} {'ckpt MB':>9} {'% full':>7}")
    print(f"benchmark {args.bench}")
    print(header)
    for method in methods:
        run = resolve_run(RunRequest(bench=args.bench, method=method, backbone=args.backbone,
                                     overrides=overrides_for(method, args.set, methods)))
        report = describe_parameters(run)
        # % from the counts, not from the 4-decimal ``*_pct`` (rounding twice prints 0.0895 as 0.089)
        pct = {key: 100 * report[key] / report["backbone"] for key in ("trainable_task", "trainable_total", "stored")}
        print(f"{method:<12} {run.backbone:<44} {report['trainable_task']:>15,} {pct['trainable_task']:>7.3f} "
              f"{report['head']:>9,} {report['trainable_total']:>16,} {pct['trainable_total']:>7.3f} "
              f"{report['stored']:>11,} {pct['stored']:>7.3f} {report['checkpoint_bytes'] / 1e6:>9.2f} "
              f"{100 * report['checkpoint_bytes'] / report['checkpoint_full_bytes']:>7.2f}")
        if report.get("notes"):
            print(f"{'':<12} note: {report['notes']}")
    print(f"backbone size: {report['backbone']:,} parameters (percentages are of this); ckpt MB: the lean "
          f"checkpoint after the last task, % full: of a checkpoint that also holds the frozen backbone")
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    params = commands.add_parser("params", help="parameter report after all tasks (no data needed)")
    params.add_argument("--methods", help="comma-separated (default: all)")
    params.add_argument("--bench", default=DEFAULT_BENCH)
    params.add_argument("--backbone", help="timm name.tag or registered backbone (default: per method/benchmark)")
    params.add_argument("--set", action="append", metavar="KEY=VALUE", help="hyper-parameter override")
    params.set_defaults(handler=command)
