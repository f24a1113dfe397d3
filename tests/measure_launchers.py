"""Wall time of a digits_t5 sweep under `--launcher local` vs `--launcher ray`, and Ray's per-run overhead.

    python tests/measure_launchers.py [--seeds 1993..1994] [--methods a,b] [--cpus N] [--skip-sweep]

1. The sweep (every registered method x the seeds, default settings) is run twice from scratch through the
   `bench` CLI in a fresh process, each into its own temporary results dir; the wall time includes start-up (and,
   for Ray, starting a local Ray instance with `--cpus` CPUs). The metrics of the two sweeps are compared.
2. Dispatch overhead: on one warm local Ray instance, the finished runs of the sweep are executed again, one task
   at a time (submit, wait): the runner only takes the lock, reads the status and returns `skipped`. The same call
   in this process gives the runner's own share; the difference is what Ray adds per run (scheduling, pickling
   the run and its outcome, the round trip). Ray's start-up is reported separately.
Not a test: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(results: Path, methods: str | None, seeds: str, launcher: str) -> float:
    command = [sys.executable, "-m", "benchmark.cli", "run", "--bench", "digits_t5", "--seeds", seeds, "--quiet",
               "--results-dir", str(results), "--launcher", launcher] + (["--methods", methods] if methods else [])
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{launcher} sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def metrics_of(results: Path) -> dict[str, dict]:
    keys = ("acc_matrix", "avg_acc", "last_acc", "forgetting_pilot")
    return {str(path.parent.relative_to(results)): {k: v for k, v in json.loads(path.read_text()).items() if k in keys}
            for path in sorted(results.glob("*/*/seed*/metrics.json"))}


def dispatch_overhead(results: Path, methods: str | None, seeds: str, cpus: int, repeats: int) -> dict:
    import ray

    from benchmark.cli.common import selected_methods as _methods
    from benchmark.runs.launchers import _portable, execute_on_worker
    from benchmark.runs.plan import parse_seeds
    from benchmark.runs.resolve import RunRequest, resolve_run

    runs = [_portable(resolve_run(RunRequest(bench="digits_t5", method=method, seed=seed, results_dir=results)))
            for method in _methods(methods) for seed in parse_seeds(seeds)]
    began = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - began
    task = ray.remote(execute_on_worker).options(num_cpus=1, max_retries=3)
    ray.get([task.remote(run) for run in runs[:cpus]])  # warm the workers (imports)
    remote, local = [], []
    for _ in range(repeats):
        for run in runs:
            began = time.perf_counter()
            outcome = ray.get(task.remote(run))
            remote.append(time.perf_counter() - began)
            assert outcome.state == "skipped", outcome
            began = time.perf_counter()
            execute_on_worker(run)
            local.append(time.perf_counter() - began)
    ray.shutdown()
    return {"ray_startup_s": startup, "per_run_ray_ms": 1000 * statistics.median(remote),
            "per_run_local_ms": 1000 * statistics.median(local),
            "overhead_ms": 1000 * (statistics.median(remote) - statistics.median(local)), "samples": len(remote)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    parser.add_argument("--seeds", default="1993..1994")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray instance")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-sweep", action="store_true", help="only the dispatch overhead (runs one sweep)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        local_dir, ray_dir = Path(tmp) / "local", Path(tmp) / "ray"
        local_s = sweep(local_dir, args.methods, args.seeds, "local")
        print(f"local sweep: {local_s:.1f} s wall ({len(metrics_of(local_dir))} runs)", flush=True)
        if not args.skip_sweep:
            ray_s = sweep(ray_dir, args.methods, args.seeds, "ray")
            same = metrics_of(ray_dir) == metrics_of(local_dir)
            print(f"ray sweep:   {ray_s:.1f} s wall (local Ray instance started by `bench run`); "
                  f"metrics identical to local: {same}", flush=True)
        overhead = dispatch_overhead(local_dir, args.methods, args.seeds, args.cpus, args.repeats)
        print(f"ray start-up: {overhead['ray_startup_s']:.1f} s; per-run dispatch: {overhead['per_run_ray_ms']:.0f} ms "
              f"through Ray vs {overhead['per_run_local_ms']:.0f} ms in process -> overhead "
              f"{overhead['overhead_ms']:.0f} ms per run (median of {overhead['samples']})")


if __name__ == "__main__":
    main()
