"""Error paths through the CLI: read-only and full disks (small tmpfs mounts where the machine allows them),
Ctrl-C, leftover temporaries, file permissions, validation messages, whole failure reasons, partial reports."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmark.cli import main

REPO = Path(__file__).resolve().parents[1]


def bench(*args) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only=False) -> a fresh tmpfs folder; skipped where mounting is not allowed."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root on Linux): {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_read_only_results_dir_is_one_line_before_training(tmpfs, capsys):
    target = tmpfs("1m", read_only=True)
    assert bench("run", "--methods", "simplecil", "--results-dir", target / "results", "--quiet") == 2
    error = capsys.readouterr().err
    assert error == (f"bench: error: --results-dir {target / 'results'}: {target} is not writable "
                     "(read-only filesystem)\n")


def test_full_disk_is_one_line_before_training(tmpfs, capsys):
    target = tmpfs("1m")
    assert bench("run", "--methods", "simplecil", "--results-dir", target, "--quiet") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"bench: error: --results-dir {target}: 1.0 MiB free, the runs' checkpoints need about")
    assert list(target.iterdir()) == []


def fill(target: Path) -> None:
    """Write to ``target`` until the filesystem is full."""
    try:
        with open(target / "filler", "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
    except OSError:
        pass  # full


def test_failure_recorder_survives_a_disk_filling_mid_run(tmpfs, capsys):
    target = tmpfs("24m")
    first = target / "digits_t5" / "simplecil" / "seed1993" / "predictions" / "task0.npz"

    def fill_after_first_task():
        deadline = time.time() + 600
        while not first.exists() and time.time() < deadline:
            time.sleep(0.05)
        fill(target)

    filler = threading.Thread(target=fill_after_first_task, daemon=True)
    filler.start()
    code = bench("run", "--methods", "simplecil", "--results-dir", target, "--quiet", "--workers", "0")
    filler.join()
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.out + captured.err
    lines = captured.out.splitlines()
    reason = lines[lines.index("failed digits_t5/simplecil/seed1993:") + 1]
    assert "No space left on device" in reason
    assert f"(not recorded in {target / 'digits_t5' / 'simplecil' / 'seed1993' / 'status.json'}: " in reason


def test_ctrl_c_leaves_the_run_interrupted(tmp_path, capsys):
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "run", "--methods", "finetune", "--set", "finetune.epochs=30",
         "--results-dir", str(tmp_path), "--quiet", "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    status = tmp_path / "digits_t5" / "finetune" / "seed1993" / "status.json"
    deadline = time.time() + 600
    while not status.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "bench: interrupted" in err and "Traceback" not in err
    assert json.loads(status.read_text()) == {"state": "interrupted", "tasks_done": 0,
                                              "reason": "interrupted (Ctrl-C)"}
    assert (status.parent / ".lock").read_text() == ""  # released, no holder recorded
    assert bench("table", "--results-dir", tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.out == ("unfinished runs:\n  digits_t5/finetune/seed1993: interrupted\n"
                            "    interrupted (Ctrl-C)\n")
    assert captured.err == f"bench: error: no finished results under {tmp_path}; run `bench run` first\n"


def test_leftover_temporaries_are_removed_and_files_are_0644(tmp_path):
    folder = tmp_path / "digits_t5" / "simplecil" / "seed1993"
    (folder / "predictions").mkdir(parents=True)
    leftovers = [folder / ".status.json.k2j3.tmp", folder / "predictions" / ".task0.npz.x9q1.tmp"]
    for path in leftovers:
        path.write_bytes(b"left by a killed writer")
    previous = os.umask(0o022)
    try:
        assert bench("run", "--methods", "simplecil", "--results-dir", tmp_path, "--quiet", "--max-tasks", "1") == 0
    finally:
        os.umask(previous)
    assert not any(path.exists() for path in leftovers)
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"config.json", "status.json", "timing.json", "checkpoint.pt",
                                             "task0.npz", "log.txt", ".lock"}
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {
        path.name: "0o644" for path in files}


def test_validation_error_names_method_and_key(tmp_path, capsys):
    assert bench("run", "--methods", "cl_lora", "--set", "rank=-3", "--results-dir", tmp_path) == 2
    assert capsys.readouterr().err == "bench: error: cl_lora: --set rank=-3: rank must be >= 1\n"
    assert bench("run", "--methods", "cl_lora", "--set", "cl_lora.rank=x", "--results-dir", tmp_path) == 2
    assert capsys.readouterr().err == "bench: error: cl_lora: --set rank=x: expected int\n"


def test_failure_reasons_whole_and_table_lists_runs_failed_before_their_config(tmp_path, capsys):
    code = bench("run", "--methods", "finetune,cl_lora", "--set", "finetune.lr=1e38", "--set", "finetune.epochs=1",
                 "--set", "cl_lora.shared_blocks=99", "--results-dir", tmp_path, "--quiet", "--workers", "0")
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    reasons = {}
    for method in ("finetune", "cl_lora"):
        folder = tmp_path / "digits_t5" / method / "seed1993"
        reasons[method] = json.loads((folder / "status.json").read_text())["reason"]
        assert lines[lines.index(f"failed digits_t5/{method}/seed1993:") + 1] == f"  {reasons[method]}"
    assert "loss became" in reasons["finetune"]
    assert reasons["cl_lora"] == "shared_blocks=99 exceeds the backbone's 4 blocks"
    assert not (tmp_path / "digits_t5" / "cl_lora" / "seed1993" / "config.json").exists()  # failed before it
    assert bench("table", "--results-dir", tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.out == ("unfinished runs:\n"
                            f"  digits_t5/cl_lora/seed1993: failed\n    {reasons['cl_lora']}\n"
                            f"  digits_t5/finetune/seed1993: failed\n    {reasons['finetune']}\n")


def test_plot_and_table_on_missing_or_empty_dir(tmp_path, capsys):
    missing = tmp_path / "missing"
    for command in ("plot", "table"):
        assert bench(command, "--results-dir", missing) == 2
        assert capsys.readouterr().err == (f"bench: error: results dir {missing} does not exist; run `bench run` "
                                           "first or pass --results-dir\n")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bench("plot", "--results-dir", empty) == 2
    assert capsys.readouterr().err == (f"bench: error: no finished results under {empty} to plot; "
                                       "run `bench run` first\n")
    assert list(empty.iterdir()) == []


def test_default_workers_are_min_8_and_available_cpus(monkeypatch):
    from benchmark.runs.resolve import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers("imr") == 2 and default_workers("digits") == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers("cifar100") == 8
