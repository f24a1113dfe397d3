"""One process per run: the run folder's lock (filelock) names its holder; a second command skips the run (and its
--fresh deletes nothing); a lock left by a process killed with SIGKILL is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.store.locking import RunLocked, lock_path, read_holder, run_lock

HOLD = ("import sys, time; from benchmark.store.locking import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)\n")


def bench(*args) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture
def holder(tmp_path):
    """Start a process holding a folder's lock; yields a function(folder) -> Popen; kills it afterwards."""
    processes = []

    def start(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        processes.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_second_taker_is_told_pid_and_host(tmp_path, holder):
    process = holder(tmp_path / "run")
    record = json.loads(lock_path(tmp_path / "run").read_text())
    assert record["pid"] == process.pid and record["host"] == socket.gethostname()
    with pytest.raises(RunLocked) as caught:
        with run_lock(tmp_path / "run"):
            pass
    assert f"is in use by pid {process.pid} on host {socket.gethostname()} since " in str(caught.value)


def test_lock_of_killed_process_is_taken_over(tmp_path, holder):
    process = holder(tmp_path / "run")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_holder(tmp_path / "run")["pid"] == process.pid  # the dead holder's record is still there
    with run_lock(tmp_path / "run"):
        assert read_holder(tmp_path / "run")["pid"] == os.getpid()
    assert read_holder(tmp_path / "run") is None  # cleared on release


def test_bench_run_skips_a_locked_run_and_fresh_deletes_nothing(tmp_path, holder, capsys):
    folder = tmp_path / "digits_t5" / "simplecil" / "seed1993"
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text("a live run's log\n")
    (folder / "checkpoint.pt").write_bytes(b"being written by the holder")  # never read while locked
    process = holder(folder)
    for extra in ([], ["--fresh"]):
        capsys.readouterr()
        assert bench("run", "--methods", "simplecil", "--results-dir", tmp_path, "--quiet", *extra) == 0
        output = capsys.readouterr().out
        assert f"skipped digits_t5/simplecil/seed1993: {folder} is in use by pid {process.pid} on host " in output
        assert "│ locked" in output or " locked " in output
    assert sorted(path.name for path in folder.iterdir()) == [".lock", "checkpoint.pt", "log.txt"]
    assert (folder / "log.txt").read_text() == "a live run's log\n"


def test_run_after_holder_was_killed_trains(tmp_path, holder, capsys):
    folder = tmp_path / "digits_t5" / "simplecil" / "seed1993"
    process = holder(folder)
    process.send_signal(signal.SIGKILL)
    process.wait()
    started = time.time()
    assert bench("run", "--methods", "simplecil", "--results-dir", tmp_path, "--quiet", "--max-tasks", "1") == 0
    assert json.loads((folder / "status.json").read_text()) == {"state": "partial", "tasks_done": 1}
    assert (folder / "predictions" / "task0.npz").stat().st_mtime >= started - 1
    assert read_holder(folder) is None


def test_table_shows_a_killed_running_run_as_stopped(tmp_path, holder):
    from benchmark.reporting.tables import load_results
    from benchmark.store.results import atomic_write_json

    folders = {name: tmp_path / "results" / "digits_t5" / name / "seed1993" for name in ("alive", "killed")}
    processes = {name: holder(folder) for name, folder in folders.items()}
    for folder in folders.values():
        atomic_write_json(folder / "status.json", {"state": "running", "tasks_done": 1})
    processes["killed"].send_signal(signal.SIGKILL)
    processes["killed"].wait()
    rows = load_results(tmp_path / "results").set_index("method")
    assert rows.loc["alive", "state"] == "running"
    assert rows.loc["killed", "state"] == "stopped"
    assert "no process holds the run" in rows.loc["killed", "reason"]
