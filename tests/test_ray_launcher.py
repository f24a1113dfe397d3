"""`bench run --launcher ray` on a local Ray instance (2 CPUs, no dashboard), shared by every test here.

The runs are small (digits_t5, `finetune` with 1 epoch, `simplecil`) so the module stays short on a small CPU.
"""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from benchmark.cli import main
from benchmark.store.locking import read_holder

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "finetune.epochs=1", "--quiet", "--workers", "0", "--bench", "digits_t5"]
METRIC_KEYS = ("acc_matrix", "accuracy_curve", "avg_acc", "last_acc", "forgetting_pilot", "forgetting_avalanche")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    """The reference: two methods x two seeds with the local launcher."""
    results = tmp_path_factory.mktemp("local")
    assert main(["run", "--methods", "simplecil,finetune", "--seeds", "1993..1994", "--results-dir", str(results),
                 *FAST]) == 0
    return results


def metrics(results: Path, method: str, seed: int = 1993) -> dict:
    stored = json.loads((results / "digits_t5" / method / f"seed{seed}" / "metrics.json").read_text())
    return {key: stored[key] for key in METRIC_KEYS}


def training_lines(results: Path, method: str, seed: int = 1993) -> list[str]:
    """The log lines written after each trained task (one per task and training)."""
    log = (results / "digits_t5" / method / f"seed{seed}" / "log.txt").read_text().splitlines()
    return [line for line in log if f"{method} task " in line]


def test_ray_gives_the_local_metrics(local_results, tmp_path, capsys):
    assert main(["run", "--methods", "simplecil,finetune", "--seeds", "1993..1994", "--results-dir", str(tmp_path),
                 "--launcher", "ray", *FAST]) == 0
    out = capsys.readouterr().out
    assert out.count("finished") >= 4 and "clbench run summary" in out
    for method in ("simplecil", "finetune"):
        for seed in (1993, 1994):
            assert metrics(tmp_path, method, seed) == metrics(local_results, method, seed), (method, seed)


def test_grid_2x2_makes_four_run_folders_and_table_rows(tmp_path, capsys):
    assert main(["run", "--methods", "finetune", "--grid", "finetune.lr=0.01,0.02", "--grid", "batch_size=64,128",
                 "--results-dir", str(tmp_path), "--launcher", "ray", "--max-tasks", "2", *FAST]) == 0
    names = [f"finetune[batch_size={b},lr={lr}]" for b in (128, 64) for lr in ("0.01", "0.02")]
    assert sorted(p.name for p in (tmp_path / "digits_t5").iterdir()) == sorted(names)
    config = json.loads((tmp_path / "digits_t5" / "finetune[batch_size=64,lr=0.02]" / "seed1993" / "config.json")
                        .read_text())
    assert config["variant"] == "batch_size=64,lr=0.02"
    assert (config["hparams"]["batch_size"], config["hparams"]["lr"], config["hparams"]["epochs"]) == (64, 0.02, 1)
    # finish them (resuming after task 2) and tabulate: one row per variant
    assert main(["run", "--methods", "finetune", "--grid", "finetune.lr=0.01,0.02", "--grid", "batch_size=64,128",
                 "--results-dir", str(tmp_path), "--launcher", "ray", *FAST]) == 0
    capsys.readouterr()
    assert main(["table", "--results-dir", str(tmp_path), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), index_col=0)
    assert sorted(table.index) == sorted(names)
    assert list(table["digits_t5 n"]) == [1, 1, 1, 1]


def test_killed_worker_is_retried_and_resumes_to_the_same_metrics(local_results, tmp_path):
    run_dir = tmp_path / "digits_t5" / "finetune" / "seed1993"
    codes = []
    driver = threading.Thread(target=lambda: codes.append(main(
        ["run", "--methods", "finetune", "--results-dir", str(tmp_path), "--launcher", "ray", "--max-retries", "2",
         "--fresh", *FAST])))  # --fresh: the retried task must resume all the same
    driver.start()
    deadline = time.time() + 300
    holder = None
    while time.time() < deadline:  # kill the worker (the lock holder) once the first task's checkpoint is written
        status = run_dir / "status.json"
        if status.exists() and json.loads(status.read_text()).get("tasks_done", 0) >= 1:
            holder = read_holder(run_dir)
            break
        time.sleep(0.05)
    assert holder and holder["pid"] != os.getpid()  # it runs in a Ray worker, not in the driver
    os.kill(holder["pid"], signal.SIGKILL)
    driver.join(timeout=600)
    assert codes == [0]
    log = (run_dir / "log.txt").read_text()
    assert "resuming digits_t5/finetune/seed1993 after task" in log
    assert metrics(tmp_path, "finetune") == metrics(local_results, "finetune")


def test_two_launchers_on_one_results_dir_never_train_a_run_twice(local_results, tmp_path):
    args = ["run", "--methods", "simplecil,finetune", "--seeds", "1993..1994", "--results-dir", str(tmp_path), *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    local = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert main([*args, "--launcher", "ray"]) == 0
    local_output, _ = local.communicate(timeout=600)
    assert local.returncode == 0, local_output[-2000:]
    # whichever launcher took a run trained it once; the other did not touch it (locked or already finished)
    assert main([*args]) == 0  # everything is finished now: all skipped
    for method in ("simplecil", "finetune"):
        for seed in (1993, 1994):
            lines = training_lines(tmp_path, method, seed)
            assert [line.split(f"{method} task ")[1][:3] for line in lines] == [f"{i}/5" for i in range(1, 6)], lines
            assert metrics(tmp_path, method, seed) == metrics(local_results, method, seed)
