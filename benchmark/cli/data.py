"""`bench data check|prepare`: what a dataset's tree lacks and how to get it; build a tree from downloaded files."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.data.streams import default_data_root


def command(args: argparse.Namespace) -> int:
    """``check``: print the report, exit 0 when the dataset is ready, 1 when not. ``prepare``: build the tree
    (or say it is already there), exit 0."""
    from benchmark.data.datasets.declared import declare_datasets
    from benchmark.registry import DATASETS

    root = Path(args.data_root)
    if args.dataset not in DATASETS:
        declare_datasets(root)
    spec = DATASETS.get(args.dataset)
    if args.action == "check":
        from benchmark.data.check import check_dataset_files

        report = check_dataset_files(spec, root)
        print("\n".join(report.lines))
        return 0 if report.ready else 1
    from benchmark.data.prepare import prepare

    print("\n".join(prepare(spec.name, Path(args.source), root, show_progress=not args.quiet)))
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    data = commands.add_parser("data", help="check a dataset's files, or prepare its tree from downloads")
    actions = data.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="what is missing from a dataset's tree and how to get it "
                                             "(exit 0: ready, 1: not)")
    prepare = actions.add_parser("prepare", help="build a dataset's tree from downloaded files (cub, domainnet)")
    prepare.add_argument("--from", dest="source", required=True, metavar="ARCHIVE_OR_DIR",
                         help="the downloaded archive or folder (never downloads)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    for parser in (check, prepare):
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--data-root", default=str(default_data_root()))
        parser.set_defaults(handler=command)
