"""The ``bench`` command line: it parses, resolves names through the registries, and calls the harness.

One module per command (``listing``, ``describe``, ``params``, ``run``, ``table``, ``plot``, ``report``,
``compare``, ``speed``, ``data``), each with ``add_parser(commands)`` and ``command(args) -> int``; :func:`main`
turns a :class:`ClbenchError` into one line and exit status 2. The CLI sits on top of everything: it may import
any layer, and nothing imports it.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from benchmark.cli import compare, data, describe, listing, params, plot, report, run, speed, table
from benchmark.errors import ClbenchError

COMMANDS = (listing, describe, params, run, table, plot, report, compare, speed, data)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``bench``."""
    parser = argparse.ArgumentParser(prog="bench", description="clbench: rehearsal-free class-incremental "
                                     "learning on pretrained ViTs")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bench`` console script; user errors print one line and exit 2."""
    warnings.filterwarnings("ignore", message=r".*no QP solver.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ClbenchError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished tasks are kept, run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
