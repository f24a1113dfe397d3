"""The live table of the Ray launcher reads run folders: states, tasks, latest A_i, ETA (no Ray needed)."""
import os
import time
from pathlib import Path

import numpy as np

from benchmark.runs.live import LiveTable
from benchmark.reporting.metrics import Evaluation
from benchmark.store.results import atomic_write_json
from benchmark.runs.runner import RunOutcome
from benchmark.runs.resolve import RunRequest, resolve_run


def test_rows_follow_the_run_folders(tmp_path: Path, capsys):
    runs = [resolve_run(RunRequest(bench="digits_t5", method="simplecil", seed=seed, results_dir=tmp_path))
            for seed in (1993, 1994, 1995)]
    old = runs[2].store
    old.write_status("running", 4)  # left by an earlier command: not running in this one
    os.utime(old.status_path, (time.time() - 3600,) * 2)
    began = time.time() - 1
    table = LiveTable(runs, quiet=True, since=began)
    running = runs[0].store
    running.write_status("running", 2)
    # after task 2: 3 of 4 test images right -> A_2 = 75 %
    running.save_evaluation(1, Evaluation(labels=np.array([0, 1, 2, 3]), top5=np.array([[0], [1], [2], [0]])))
    atomic_write_json(running.timing_path, [{"train_seconds": 8.0, "eval_seconds": 2.0},
                                            {"train_seconds": 10.0, "eval_seconds": 0.0}])
    with table:
        assert [row.state for row in table.rows] == ["running", "queued", "queued"]
        assert (table.rows[0].tasks_done, table.rows[0].accuracy, table.rows[0].task_seconds) == (2, 75.0, 10.0)
        # tasks left: 3 (running) + 5 + 5 (queued), 10 s each, one run running
        assert table.eta() == 130.0
        running.write_status("finished", 5)
        table.run_done(0, RunOutcome(runs[0], "finished", metrics={"accuracy_curve": [90.0, 80.0, 70.0, 60.0, 50.0]}))
        table.run_done(1, RunOutcome(runs[1], "failed", reason="boom"))
        table.refresh()
        assert [(row.state, row.tasks_done, row.accuracy) for row in table.rows] == [
            ("finished", 5, 50.0), ("failed", 0, None), ("queued", 0, None)]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("digits_t5/simplecil/seed1993: running, tasks 2/5, latest A_i 75.00")
    assert lines[1].startswith("digits_t5/simplecil/seed1993: finished, tasks 5/5, latest A_i 50.00")
    assert lines[2].startswith("digits_t5/simplecil/seed1994: failed: boom, tasks 0/5")
    assert len(lines) == 3
