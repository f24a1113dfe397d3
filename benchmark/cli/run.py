"""`bench run`: plan, preflight, then execute runs with the chosen launcher."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.cli.common import DEFAULT_BENCH, default_results_dir, overrides_for, selected_methods, split_list
from benchmark.data.streams import default_data_root
from benchmark.errors import ClbenchError


def _on_any_device(run):
    """``run`` with ``--device auto``, for checks made on a driver that is not where the run executes."""
    import dataclasses

    return dataclasses.replace(run, request=dataclasses.replace(run.request, device="auto"))


def command(args: argparse.Namespace) -> int:
    """Plan the runs (methods x benchmarks x seeds x grid variants), check them all (preflight), then execute
    them with the chosen launcher; print a summary; non-zero if a run failed. ``--dry-run`` lists the plan."""
    from benchmark.reporting.trackers import tracker_settings
    from benchmark.runs.plan import describe_plan, merge_overrides, method_variants, parse_seeds
    from benchmark.runs.preflight import PreflightError, preflight, resolve_requests
    from benchmark.runs.progress import RunProgress
    from benchmark.runs.resolve import RunRequest

    if args.grid_preset and not args.methods:
        from benchmark.runs.plan import PRESETS

        args.methods = ",".join(dict.fromkeys(PRESETS[name][0] for name in args.grid_preset if name in PRESETS))
    methods = selected_methods(args.methods)
    benches = split_list(args.bench) or [DEFAULT_BENCH]
    seeds = parse_seeds(args.seeds)
    variants = method_variants(methods, args.grid, args.grid_preset)
    if args.launcher == "ray":
        from benchmark.runs.launchers import RayOptions, check_ray_options, import_ray

        ray_options = RayOptions(address=args.address, cpus_per_run=args.cpus_per_run,
                                 gpus_per_run=args.gpus_per_run, max_retries=args.max_retries)
        check_ray_options(ray_options, args.device)
        if not args.dry_run:
            import_ray()
    elif args.address or args.gpus_per_run or args.cpus_per_run != 1.0:
        raise ClbenchError("--address, --gpus-per-run and --cpus-per-run need --launcher ray")
    trackers = tracker_settings(args.log_to, args.mlflow_uri, args.wandb_project)
    runs = resolve_requests(RunRequest(
        bench=bench, method=method, seed=seed, backbone=args.backbone, weights=args.weights,
        device=args.device, data_root=Path(args.data_root),
        overrides=merge_overrides(method, overrides_for(method, args.set, methods), variant),
        results_dir=Path(args.results_dir), workers=args.workers, fresh=args.fresh, max_tasks=args.max_tasks,
        precision=args.precision, eval_cache=not args.no_eval_cache, trackers=trackers,
        variant=variant.name if variant else None)
        for bench in benches for method in methods for variant in variants[method] for seed in seeds)
    if args.dry_run:
        print("\n".join(describe_plan(runs, Path(args.results_dir))))

    # Preflight: every run is checked before any trains; any problem exits 2 with nothing written. The Ray
    # driver need not have the workers' GPUs: Ray gives a run its GPU (--gpus-per-run), so the device is not
    # checked here.
    checked = runs if args.launcher == "local" else [_on_any_device(run) for run in runs]
    try:
        preflight(checked)
    except PreflightError as error:
        if not args.dry_run:
            raise
        print(f"preflight: {error}")
        return 2
    if args.dry_run:
        print("preflight: ok")
        return 0
    if args.launcher == "ray":
        from benchmark.runs.launchers import launch_ray

        outcomes = launch_ray(runs, ray_options, quiet=args.quiet)
    else:
        from benchmark.runs.launchers import launch_local

        outcomes = launch_local(runs, quiet=args.quiet)
    RunProgress.print_summary(outcomes)
    return 1 if any(outcome.state == "failed" for outcome in outcomes) else 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    run = commands.add_parser("run", help="train and evaluate methods on benchmarks")
    run.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    run.add_argument("--bench", help=f"comma-separated benchmarks (default: {DEFAULT_BENCH})")
    run.add_argument("--seeds", default="1993", help="comma-separated seeds or ranges, e.g. 1993..2002 (default: 1993)")
    run.add_argument("--backbone", help="timm name.tag or registered backbone (default: per method/benchmark)")
    run.add_argument("--weights", help="local .pth/.safetensors weights for the backbone")
    run.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--data-root", default=str(default_data_root()),
                     help="dataset root (default ./data, or $CLBENCH_DATA_ROOT)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="hyper-parameter override, repeatable; METHOD.KEY=VALUE for one method")
    run.add_argument("--results-dir", default=str(default_results_dir()))
    run.add_argument("--workers", type=int, help="data-loader workers (default: 0 on digits, else min(8, CPUs))")
    run.add_argument("--fresh", action="store_true", help="discard stored results/checkpoints of these runs")
    run.add_argument("--max-tasks", type=int, help="stop after this many tasks (resumable later)")
    run.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    run.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                     help="sweep a hyper-parameter (repeatable, cross product; METHOD.KEY for one method; "
                          "+ joins list items, e.g. targets=q+v): each variant is its own run folder")
    run.add_argument("--grid-preset", action="append", metavar="NAME",
                     help="a paper's ablation rows: cl_lora.table2 (KD/GR/BW), cl_lora.table3 (targets x ranks)")
    run.add_argument("--dry-run", action="store_true", help="list the planned runs and their state; write nothing")
    run.add_argument("--launcher", choices=("local", "ray"), default="local",
                     help="local: in this process, one run after another (default); ray: one Ray task per run")
    run.add_argument("--address", help="Ray: address of a running cluster (e.g. auto); default: start one here")
    run.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs reserved per run (default 1)")
    run.add_argument("--gpus-per-run", type=float, default=0.0,
                     help="Ray: GPUs per run, fractions below 1 pack runs on a GPU (default 0)")
    run.add_argument("--max-retries", type=int, default=3,
                     help="Ray: restarts of a run whose worker died; it resumes from its checkpoint (default 3)")
    run.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                     help="autocast precision of training and evaluation (default fp32, the published setting)")
    run.add_argument("--no-eval-cache", action="store_true",
                     help="recompute frozen per-image work at every evaluation (results are identical either way)")
    run.add_argument("--log-to", action="append", metavar="TRACKER",
                     help="also log to an experiment tracker: tensorboard, mlflow, wandb (repeatable; offline by "
                          "default, see README 'Experiment trackers')")
    run.add_argument("--mlflow-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else SQLite under "
                                          "<results-dir>/mlruns)")
    run.add_argument("--wandb-project", help="W&B project (default $WANDB_PROJECT, else clbench); online only with "
                                             "WANDB_API_KEY set")
    run.set_defaults(handler=command)
