"""`bench describe`: a benchmark's stream without training, or a method's resolved hyper-parameters."""
from __future__ import annotations

import argparse

from benchmark.data.streams import default_data_root
from benchmark.errors import ClbenchError


def command(args: argparse.Namespace) -> int:
    """The stream of a benchmark without training; with ``--method``, the method's resolved hyper-parameters
    (``--bench`` then only selects the benchmark family of the defaults)."""
    if not args.bench and not args.method:
        raise ClbenchError("bench describe needs --bench B and/or --method M")
    if args.method:
        from benchmark.cli.hparams_doc import describe_hparams
        from benchmark.data.streams import benchmark_family
        from benchmark.registry import METHODS

        family = benchmark_family(args.bench, args.data_root) if args.bench else None
        print(describe_hparams(METHODS.get(args.method), family))
        return 0
    if args.bench:
        from benchmark.data.streams import build_stream

        stream = build_stream(args.bench, args.data_root, image_size=args.image_size, seed=args.seed)
        info = stream.describe()
        print(f"benchmark {args.bench}: {stream.num_classes} classes in {stream.num_tasks} tasks, "
              f"seed {stream.seed}, data root {args.data_root}")
        print(f"class order (raw label of new label 0, 1, ...): {stream.class_order}")
        for index, task in enumerate(stream.tasks):
            counts = info["tasks"][index]
            print(f"  task {index + 1:>2}: classes {task.classes[0]}-{task.classes[-1]}  "
                  f"train {counts['train_count']:>6}  test {counts['test_count']:>6}")
        if stream.spec.note:
            print(f"note: {stream.spec.note}")
        if info["dataset_fingerprint"]:
            print(f"dataset fingerprint (declaration file and image list): {info['dataset_fingerprint']}")
        for warning in stream.warnings:
            print(f"warning: {warning}")
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    describe = commands.add_parser("describe", help="a benchmark's stream, or a method's hyper-parameters")
    describe.add_argument("--bench")
    describe.add_argument("--method")
    describe.add_argument("--data-root", default=str(default_data_root()))
    describe.add_argument("--seed", type=int, default=1993)
    describe.add_argument("--image-size", type=int, default=224)
    describe.set_defaults(handler=command)
