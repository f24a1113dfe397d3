"""`bench speed`: CL-LoRA inference paths, or each method's training and inference speed."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.common import default_results_dir, selected_methods, split_list
from benchmark.errors import ClbenchError


def command(args: argparse.Namespace) -> int:
    """CL-LoRA inference: shared trunk once + task branches vs. one full pass per task (same inputs); with
    ``--train`` or ``--methods``: training and inference speed of each method, precisions side by side."""
    from benchmark.runs.resolve import resolve_device
    from benchmark.runs.speed import format_speed_report, speed_report

    device = resolve_device(args.device)
    if args.eval:
        return _eval_speed(args, device)
    if args.train or args.methods:
        return _method_speed(args, device)
    report = speed_report(backbone=args.backbone, num_tasks=args.tasks, batch_size=args.batch_size,
                          device=str(device), repeats=args.repeats, rank=args.rank)
    print(format_speed_report(report))
    return 0


def _method_speed(args: argparse.Namespace, device) -> int:
    import time

    from rich.console import Console

    from benchmark.precision import check_precision
    from benchmark.runs.speed import method_speed_report, render_method_speed
    from benchmark.store.results import atomic_write_json

    precisions = [check_precision(name) for name in split_list(args.precisions)]
    report = method_speed_report(selected_methods(args.methods), args.backbone, precisions, device, train=args.train,
                                 steps=args.steps, train_batch_size=args.train_batch_size, num_tasks=args.tasks,
                                 eval_batch_size=args.batch_size, repeats=args.repeats, family=args.family,
                                 echo=lambda line: print(line, file=sys.stderr))
    console = Console(width=None if sys.stdout.isatty() else 132)
    for table in render_method_speed(report):
        console.print(table)
    path = Path(args.results_dir) / "speed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{device.type}.json"
    atomic_write_json(path, report)
    print(f"written: {path}", file=sys.stderr)
    return 0


def _eval_speed(args: argparse.Namespace, device) -> int:
    import time

    from rich.console import Console

    from benchmark.runs.speed import device_name
    from benchmark.runs.speed_eval import eval_speed_report, render_eval_speed
    from benchmark.store.results import atomic_write_json

    if args.train:
        raise ClbenchError("--eval and --train are separate measurements; give one")
    if args.images_per_task < 1 or args.tasks < 1:
        raise ClbenchError("--tasks and --images-per-task must be >= 1")
    rows = eval_speed_report(selected_methods(args.methods), args.backbone, args.tasks, args.images_per_task,
                             args.batch_size, device, family=args.family,
                             echo=lambda line: print(line, file=sys.stderr))
    Console(width=None if sys.stdout.isatty() else 132).print(render_eval_speed(rows, args.backbone,
                                                                                  device_name(device)))
    path = Path(args.results_dir) / "speed" / f"{time.strftime('%Y%m%d-%H%M%S')}-eval-{device.type}.json"
    atomic_write_json(path, {"backbone": args.backbone, "device": device_name(device), "rows": rows})
    print(f"written: {path}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    speed = commands.add_parser("speed", help="CL-LoRA inference speed: shared trunk vs per-task full passes; "
                                   "--train / --methods: each method's training and inference speed")
    speed.add_argument("--backbone", default="vit_base_patch16_224.augreg_in21k")
    speed.add_argument("--tasks", type=int, default=10)
    speed.add_argument("--batch-size", type=int, default=32)
    speed.add_argument("--rank", type=int, default=10)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--device", default="auto")
    speed.add_argument("--train", action="store_true",
                       help="time each method's training step (with --methods; default: every method)")
    speed.add_argument("--methods", help="per-method speed table for these methods (comma-separated)")
    speed.add_argument("--eval", action="store_true", help="time a whole --tasks evaluation schedule per method, "
                       "without and with the evaluation cache (synthetic images)")
    speed.add_argument("--images-per-task", type=int, default=8, help="--eval: test images per task (default 8)")
    speed.add_argument("--precisions", default="fp32,bf16", help="comma-separated, side by side (default fp32,bf16)")
    speed.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step")
    speed.add_argument("--train-batch-size", type=int, help="training batch size (default: each method's own)")
    speed.add_argument("--family", default="imr", help="benchmark family of the methods' hyper-parameters "
                       "(default imr; digits for the tiny registered ViTs)")
    speed.add_argument("--results-dir", default=str(default_results_dir()), help="JSON goes to <dir>/speed/")
    speed.set_defaults(handler=command)
