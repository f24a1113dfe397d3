"""The result store's own files, one behaviour each: status, temporaries left by a killed writer, the log, the
per-task evaluations, the checkpoint, clearing a run and finding runs."""
import json
import os
import stat

import numpy as np
import pytest

from benchmark.store.integrity import IntegrityError
from benchmark.store.locking import LOCK_NAME
from benchmark.reporting.metrics import Evaluation
from benchmark.store.results import RunStore, atomic_write_json, find_runs


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "results", "digits_t5", "l2p", 7)


def test_layout_names_the_run_folder(store, tmp_path):
    assert store.path == tmp_path / "results" / "digits_t5" / "l2p" / "seed7"
    assert store.prediction_path(3) == store.path / "predictions" / "task3.npz"


def test_status_of_a_new_run_and_round_trip(store):
    assert store.status() == {"state": "new"}
    store.write_status("running", 2)
    assert json.loads(store.status_path.read_text()) == {"state": "running", "tasks_done": 2}
    store.write_status("failed", 2, "loss became nan")
    assert store.status() == {"state": "failed", "tasks_done": 2, "reason": "loss became nan"}


def test_json_is_sorted_keeps_nan_and_is_readable_by_the_group(tmp_path):
    path = tmp_path / "deep" / "er" / "file.json"
    previous = os.umask(0o022)
    try:
        atomic_write_json(path, {"b": float("nan"), "a": 1})
    finally:
        os.umask(previous)
    assert path.read_text() == '{\n  "a": 1,\n  "b": NaN\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(store):
    (store.path / "predictions").mkdir(parents=True)
    left = [store.path / ".config.json.x1.tmp", store.path / "predictions" / ".task0.npz.x2.tmp"]
    kept = [store.path / "notes.tmp", store.path / "config.json", store.path / LOCK_NAME,
            store.path / "predictions" / "task0.npz"]
    for path in left + kept:
        path.write_text("x")
    assert sorted(store.remove_temporaries()) == sorted(left)
    assert not any(path.exists() for path in left)
    assert all(path.exists() for path in kept)
    assert store.remove_temporaries() == []


def test_log_creates_the_folder_and_appends_whole_lines(store):
    store.append_log("first\n")
    store.append_log("second")
    assert (store.path / "log.txt").read_text() == "first\nsecond\n"


def test_evaluations_round_trip(store):
    evaluations = [Evaluation(labels=np.array([0, 1]), top5=np.array([[0, 1], [0, 1]])),
                   Evaluation(labels=np.array([2, 3, 1]), top5=np.array([[2, 0, 1, 3]] * 3))]
    for index, evaluation in enumerate(evaluations):
        store.save_evaluation(index, evaluation)
    loaded = store.load_evaluations(2)
    for stored, original in zip(loaded, evaluations):
        assert np.array_equal(stored.labels, original.labels) and np.array_equal(stored.top5, original.top5)


def test_checkpoint_round_trip_and_foreign_files(store):
    assert store.load_checkpoint() is None
    store.save_checkpoint({"tasks_done": 2, "method_state": {}})
    assert store.load_checkpoint() == {"tasks_done": 2, "method_state": {}}
    store.checkpoint_path.write_bytes(b"not a zip")
    with pytest.raises(IntegrityError, match="is not a checkpoint"):
        store.load_checkpoint()
    store.save_checkpoint({"method_state": {}})
    with pytest.raises(IntegrityError, match="no tasks_done"):
        store.load_checkpoint()


def test_clear_keeps_only_the_lock(store):
    store.save_evaluation(0, Evaluation(labels=np.array([0]), top5=np.array([[0]])))
    store.write_status("running", 1)
    (store.path / LOCK_NAME).write_text("")
    store.clear()
    assert [path.name for path in store.path.rglob("*")] == [LOCK_NAME]


def test_find_runs_lists_folders_with_a_config_or_a_status(tmp_path):
    root = tmp_path / "results"
    with_config, with_status = RunStore(root, "b", "m", 1), RunStore(root, "b", "m", 2)
    atomic_write_json(with_config.config_path, {})
    with_status.write_status("failed", 0, "no data")
    (root / "b" / "m" / "seed3").mkdir()
    assert find_runs(root) == [with_config.path, with_status.path]


def test_a_write_goes_through_a_dot_tmp_temporary_beside_the_target(tmp_path, monkeypatch):
    """The temporary is ``.<name>.<random>.tmp`` in the target's folder: what ``remove_temporaries`` finds when a
    killed writer leaves one."""
    import re

    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    atomic_write_json(tmp_path / "status.json", {})
    [(source, target)] = replaced
    assert os.path.dirname(source) == str(tmp_path) and target == tmp_path / "status.json"
    assert re.fullmatch(r"\.status\.json\..+\.tmp", os.path.basename(source))
