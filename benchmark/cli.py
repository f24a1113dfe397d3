"""The ``bench`` command line: it parses, resolves names through the registries, and calls the harness."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from benchmark.errors import ClbenchError

DEFAULT_BENCH = "digits_t5"


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in _split(text)]
    except ValueError:
        raise ClbenchError(f"--seeds must be comma-separated integers, got '{text}'") from None


def _default_results_dir() -> Path:
    return Path(os.environ.get("CLBENCH_RESULTS_DIR", "results"))


# -- bench list ------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    """Methods, benchmarks and backbones, one line each."""
    from benchmark.hparams_doc import first_line
    from benchmark.registry import BACKBONES, METHODS
    from benchmark.streams import named_benchmarks

    print("methods:")
    for name in METHODS.names():
        print(f"  {name:<12} {first_line(METHODS.get(name))}")
    print("benchmarks (<dataset>_t<N>, any N dividing the class count):")
    for name in named_benchmarks():
        print(f"  {name}")
    print("backbones: any timm ViT as name.tag (e.g. vit_base_patch16_224.augreg_in21k), or:")
    for name in BACKBONES.names():
        print(f"  {name:<16} {first_line(BACKBONES.get(name))}")
    print("hyper-parameters and switches of a method: bench describe --method NAME [--bench B]")
    return 0


# -- bench describe --------------------------------------------------------------------------------------
def cmd_describe(args: argparse.Namespace) -> int:
    """The stream of a benchmark without training; with ``--method``, the method's resolved hyper-parameters
    (``--bench`` then only selects the benchmark family of the defaults)."""
    if not args.bench and not args.method:
        raise ClbenchError("bench describe needs --bench B and/or --method M")
    if args.method:
        from benchmark.hparams_doc import describe_hparams
        from benchmark.registry import METHODS
        from benchmark.streams import benchmark_family

        family = benchmark_family(args.bench) if args.bench else None
        print(describe_hparams(METHODS.get(args.method), family))
        return 0
    if args.bench:
        from benchmark.streams import build_stream

        stream = build_stream(args.bench, args.data_root, image_size=args.image_size, seed=args.seed)
        info = stream.describe()
        print(f"benchmark {args.bench}: {stream.num_classes} classes in {stream.num_tasks} tasks, "
              f"seed {stream.seed}, data root {args.data_root}")
        print(f"class order (raw label of new label 0, 1, ...): {stream.class_order}")
        for index, task in enumerate(stream.tasks):
            counts = info["tasks"][index]
            print(f"  task {index + 1:>2}: classes {task.classes[0]}-{task.classes[-1]}  "
                  f"train {counts['train_count']:>6}  test {counts['test_count']:>6}")
        for warning in stream.warnings:
            print(f"warning: {warning}")
    return 0


# -- bench params ----------------------------------------------------------------------------------------
def cmd_params(args: argparse.Namespace) -> int:
    """Parameter report after all tasks, from shapes only (no data, no weights)."""
    from benchmark.runner import RunRequest, describe_parameters, resolve_run

    methods = _methods(args.methods)
    header = (f"{'method':<12} {'backbone':<44} {'trainable/task':>15} {'%':>7} {'head':>9} "
              f"{'trainable total':>16} {'%':>7} {'stored':>11} {'%':>7}")
    print(f"benchmark {args.bench}")
    print(header)
    for method in methods:
        run = resolve_run(RunRequest(bench=args.bench, method=method, backbone=args.backbone,
                                     overrides=_overrides_for(method, args.set, methods)))
        report = describe_parameters(run)
        # % from the counts, not from the 4-decimal ``*_pct`` (rounding twice prints 0.0895 as 0.089)
        pct = {key: 100 * report[key] / report["backbone"] for key in ("trainable_task", "trainable_total", "stored")}
        print(f"{method:<12} {run.backbone:<44} {report['trainable_task']:>15,} {pct['trainable_task']:>7.3f} "
              f"{report['head']:>9,} {report['trainable_total']:>16,} {pct['trainable_total']:>7.3f} "
              f"{report['stored']:>11,} {pct['stored']:>7.3f}")
        if report.get("notes"):
            print(f"{'':<12} note: {report['notes']}")
    print(f"backbone size: {report['backbone']:,} parameters (percentages are of this)")
    return 0


# -- bench run -------------------------------------------------------------------------------------------
def _methods(text: str | None) -> list[str]:
    from benchmark.registry import METHODS

    names = _split(text) or METHODS.names()
    for name in names:
        METHODS.get(name)  # unknown name: error listing the valid ones
    return names


def _overrides_for(method: str, pairs: list[str] | None, methods: list[str]) -> dict[str, str]:
    """``--set key=value`` applies to every method having the key; ``--set method.key=value`` to one."""
    import dataclasses

    from benchmark.config import parse_overrides
    from benchmark.registry import METHODS

    overrides = parse_overrides(pairs)
    for key in overrides:
        scope, _, field = key.rpartition(".")
        if scope and scope not in methods:
            raise ClbenchError(f"--set {key}: '{scope}' is not one of the selected methods ({', '.join(methods)})")
        owners = [m for m in ([scope] if scope else methods)
                  if field in {f.name for f in dataclasses.fields(METHODS.get(m).config_class)}]
        if not owners:
            valid = sorted({f.name for m in methods for f in dataclasses.fields(METHODS.get(m).config_class)})
            raise ClbenchError(f"--set {key}: no selected method has a hyper-parameter '{field}'; "
                               f"valid: {', '.join(valid)}")
    fields = {f.name for f in dataclasses.fields(METHODS.get(method).config_class)}
    selected = {}
    for key, value in overrides.items():
        scope, _, field = key.rpartition(".")
        if (not scope or scope == method) and field in fields:
            selected[field] = value
    return selected


def cmd_run(args: argparse.Namespace) -> int:
    """Train and evaluate every (benchmark, method, seed); print a summary; non-zero if a run failed."""
    from benchmark.preflight import preflight, resolve_requests
    from benchmark.progress import RunProgress
    from benchmark.runner import RunRequest, execute

    methods = _methods(args.methods)
    benches = _split(args.bench) or [DEFAULT_BENCH]
    seeds = _seeds(args.seeds)
    runs = resolve_requests(RunRequest(
        bench=bench, method=method, seed=seed, backbone=args.backbone, weights=args.weights,
        device=args.device, data_root=Path(args.data_root), overrides=_overrides_for(method, args.set, methods),
        results_dir=Path(args.results_dir), workers=args.workers, fresh=args.fresh, max_tasks=args.max_tasks)
        for bench in benches for method in methods for seed in seeds)

    # Preflight: every run is checked before any trains; any problem exits 2 with nothing written.
    preflight(runs)

    outcomes = []
    with RunProgress(quiet=args.quiet, total_runs=len(runs)) as progress:
        for run in runs:
            outcome = execute(run, monitor_factory=progress.monitor_factory(run), echo=progress.echo)
            progress.run_done(outcome)
            outcomes.append(outcome)
    RunProgress.print_summary(outcomes)
    return 1 if any(outcome.state == "failed" for outcome in outcomes) else 0


# -- bench table / plot ----------------------------------------------------------------------------------
def cmd_table(args: argparse.Namespace) -> int:
    """Summary table of every stored result (methods x benchmarks, mean ± std over seeds), then the runs that
    did not finish with their reasons (also when none finished; the exit status is then 2)."""
    from benchmark.report import failed_runs, render, summary_table, write_tables

    metrics = _split(args.metric) or ["avg", "last"]
    for metric in metrics:
        if metric not in ("avg", "last", "forgetting"):
            raise ClbenchError(f"--metric {metric}: valid metrics are avg, last, forgetting")
    results = _load_reported(args)
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


def _load_reported(args: argparse.Namespace):
    """The stored results for ``bench table``/``plot``; a missing dir is an error, an unreadable run a warning."""
    from benchmark.report import load_results

    if not Path(args.results_dir).is_dir():
        raise ClbenchError(f"results dir {args.results_dir} does not exist; run `bench run` first "
                           "or pass --results-dir")
    skipped: list[str] = []
    results = load_results(Path(args.results_dir), args.bench, skipped=skipped)
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    return results


def cmd_plot(args: argparse.Namespace) -> int:
    """PNG plots per benchmark under ``<results>/plots`` (nothing is created when nothing finished)."""
    from benchmark.report import plot_results

    results = _load_reported(args)
    paths = plot_results(results, Path(args.results_dir) / "plots")
    if not paths:
        raise ClbenchError(f"no finished results under {args.results_dir} to plot; run `bench run` first")
    for path in paths:
        print(path)
    return 0


# -- bench speed -----------------------------------------------------------------------------------------
def cmd_speed(args: argparse.Namespace) -> int:
    """CL-LoRA inference: shared trunk once + task branches vs. one full pass per task (same inputs)."""
    from benchmark.runner import resolve_device
    from benchmark.speed import format_speed_report, speed_report

    device = resolve_device(args.device)
    report = speed_report(backbone=args.backbone, num_tasks=args.tasks, batch_size=args.batch_size,
                          device=str(device), repeats=args.repeats, rank=args.rank)
    print(format_speed_report(report))
    return 0


# -- parser ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``bench``."""
    from benchmark.streams import default_data_root

    parser = argparse.ArgumentParser(prog="bench", description="clbench: rehearsal-free class-incremental "
                                     "learning on pretrained ViTs")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="methods, benchmarks and backbones")
    listing.set_defaults(handler=cmd_list)

    describe = commands.add_parser("describe", help="a benchmark's stream, or a method's hyper-parameters")
    describe.add_argument("--bench")
    describe.add_argument("--method")
    describe.add_argument("--data-root", default=str(default_data_root()))
    describe.add_argument("--seed", type=int, default=1993)
    describe.add_argument("--image-size", type=int, default=224)
    describe.set_defaults(handler=cmd_describe)

    params = commands.add_parser("params", help="parameter report after all tasks (no data needed)")
    params.add_argument("--methods", help="comma-separated (default: all)")
    params.add_argument("--bench", default=DEFAULT_BENCH)
    params.add_argument("--backbone", help="timm name.tag or registered backbone (default: per method/benchmark)")
    params.add_argument("--set", action="append", metavar="KEY=VALUE", help="hyper-parameter override")
    params.set_defaults(handler=cmd_params)

    run = commands.add_parser("run", help="train and evaluate methods on benchmarks")
    run.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    run.add_argument("--bench", help=f"comma-separated benchmarks (default: {DEFAULT_BENCH})")
    run.add_argument("--seeds", default="1993", help="comma-separated seeds (default: 1993)")
    run.add_argument("--backbone", help="timm name.tag or registered backbone (default: per method/benchmark)")
    run.add_argument("--weights", help="local .pth/.safetensors weights for the backbone")
    run.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--data-root", default=str(default_data_root()),
                     help="dataset root (default ./data, or $CLBENCH_DATA_ROOT)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="hyper-parameter override, repeatable; METHOD.KEY=VALUE for one method")
    run.add_argument("--results-dir", default=str(_default_results_dir()))
    run.add_argument("--workers", type=int, help="data-loader workers (default: 0 on digits, else min(8, CPUs))")
    run.add_argument("--fresh", action="store_true", help="discard stored results/checkpoints of these runs")
    run.add_argument("--max-tasks", type=int, help="stop after this many tasks (resumable later)")
    run.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    run.set_defaults(handler=cmd_run)

    table = commands.add_parser("table", help="summary table of stored results")
    table.add_argument("--bench")
    table.add_argument("--metric", help="comma-separated: avg, last, forgetting (default: avg,last)")
    table.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    table.add_argument("--paper", action="store_true", help="put the published number beside each measured one")
    table.add_argument("--results-dir", default=str(_default_results_dir()))
    table.set_defaults(handler=cmd_table)

    plot = commands.add_parser("plot", help="PNG plots of stored results")
    plot.add_argument("--bench")
    plot.add_argument("--results-dir", default=str(_default_results_dir()))
    plot.set_defaults(handler=cmd_plot)

    speed = commands.add_parser("speed", help="CL-LoRA inference speed: shared trunk vs per-task full passes")
    speed.add_argument("--backbone", default="vit_base_patch16_224.augreg_in21k")
    speed.add_argument("--tasks", type=int, default=10)
    speed.add_argument("--batch-size", type=int, default=32)
    speed.add_argument("--rank", type=int, default=10)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--device", default="auto")
    speed.set_defaults(handler=cmd_speed)
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
