"""Integrity of stored state through the CLI: a damaged or foreign file of a run is one line naming it and the fix
(--fresh), exit 2, before anything trains; never a traceback, never a wrong metric; table/plot skip such runs."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch

from benchmark.cli import main

RUN = ("digits_t5", "simplecil", "seed1993")
ARGS = ["--methods", "simplecil", "--bench", "digits_t5", "--quiet"]


def bench(*args) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """A run stopped after 2 of 5 tasks: config, status, timing, checkpoint, predictions of tasks 0 and 1."""
    results = tmp_path_factory.mktemp("partial")
    assert bench("run", *ARGS, "--max-tasks", "2", "--results-dir", results) == 0
    return results


@pytest.fixture
def results(partial_run, tmp_path):
    """A private copy of the partial run, to damage."""
    copy = tmp_path / "results"
    shutil.copytree(partial_run, copy)
    return copy


def run_dir(results):
    return results.joinpath(*RUN)


def snapshot(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_fingerprint_is_stored(partial_run):
    config = json.loads((run_dir(partial_run) / "config.json").read_text())
    fingerprint = config["fingerprint"]
    assert fingerprint["eval_counts"] == [73, 146, 220, 293, 364]  # 364 digits test images, 2 classes a task
    from benchmark.store.integrity import labels_digest

    with np.load(run_dir(partial_run) / "predictions" / "task1.npz") as data:
        assert labels_digest(data["labels"]) == fingerprint["eval_labels_sha256"][1]
    assert json.loads((run_dir(partial_run) / "status.json").read_text()) == {"state": "partial", "tasks_done": 2}


def checkpoint_with(tasks_done: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"tasks_done": tasks_done, "method_state": {}}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name, damage, message", [
    ("predictions/task0.npz", lambda d: (d / "predictions" / "task1.npz").read_bytes(),
     "holds labels that are not this task's evaluation labels"),
    ("predictions/task1.npz", lambda d: b"garbage", "is not a predictions file"),
    ("status.json", lambda d: b"{not json", "is not valid JSON"),
    ("status.json", lambda d: b'{"state": "running", "tasks_done": 9}', "is not a run status"),
    ("config.json", lambda d: b"\x00\x01", "is not valid JSON"),
    ("config.json", lambda d: (d / "config.json").read_bytes().replace(b'"batch_size": 128', b'"batch_size": 64'),
     "does not match its own fingerprint"),
    ("timing.json", lambda d: b"[1, 2", "is not valid JSON"),
    ("checkpoint.pt", lambda d: (d / "checkpoint.pt").read_bytes()[:100], "is not a checkpoint"),
    ("checkpoint.pt", lambda d: checkpoint_with(9), "records 9 tasks done; digits_t5 has 5"),
])
def test_damaged_file_is_one_line_naming_it_and_fresh(results, name, damage, message, capsys):
    folder = run_dir(results)
    (folder / name).write_bytes(damage(folder))
    before = snapshot(folder)
    assert bench("run", *ARGS, "--results-dir", results) == 2
    error = capsys.readouterr().err
    assert error == (f"bench: error: {folder / name}: {error.split(f'{folder / name}: ', 1)[1]}")
    assert message in error and error.rstrip().endswith("rerun this run with --fresh to discard its stored results")
    assert len(error.strip().splitlines()) == 1
    assert snapshot(folder) == before  # nothing trained, nothing written


def test_copied_predictions_without_stored_fingerprint_caught_by_the_stream(results, capsys):
    """A run stored before fingerprints existed: the runner checks predictions against the stream itself."""
    folder = run_dir(results)
    config = json.loads((folder / "config.json").read_text())
    del config["fingerprint"]
    (folder / "config.json").write_text(json.dumps(config))
    # Same count and classes, other order: only the stream's label sequence can tell.
    with np.load(folder / "predictions" / "task0.npz") as data:
        labels, top5 = data["labels"][::-1], data["top5"][::-1]
    np.savez_compressed(folder / "predictions" / "task0.npz", labels=labels, top5=top5)
    assert bench("run", *ARGS, "--results-dir", results) == 1
    output = capsys.readouterr().out
    assert (f"{folder / 'predictions' / 'task0.npz'}: holds 73 labels that are not this task's evaluation "
            "labels (73 expected)") in output
    assert not (folder / "metrics.json").exists() and not (folder / "predictions" / "task2.npz").exists()


def test_table_and_plot_skip_unreadable_runs_with_a_warning(results, capsys):
    folder = run_dir(results)
    (folder / "status.json").write_text("garbage")
    assert bench("table", "--results-dir", results) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (f"warning: run skipped: {folder / 'status.json'}: is not valid JSON "
                                            "(Expecting value: line 1 column 1 (char 0)); rerun this run with "
                                            "--fresh to discard its stored results")
    assert "Traceback" not in captured.err
    assert bench("plot", "--results-dir", results) == 2
    assert "warning: run skipped:" in capsys.readouterr().err
    assert not (results / "plots").exists()


def test_fresh_discards_a_damaged_run(results, capsys):
    folder = run_dir(results)
    (folder / "config.json").write_text("garbage")
    assert bench("run", *ARGS, "--results-dir", results, "--max-tasks", "1", "--fresh") == 0
    assert json.loads((folder / "status.json").read_text()) == {"state": "partial", "tasks_done": 1}
    assert sorted(path.name for path in (folder / "predictions").iterdir()) == ["task0.npz"]
