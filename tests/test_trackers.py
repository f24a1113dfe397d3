"""Experiment trackers (`bench run --log-to`): what each tracker received, read back with the tracker's own
reader, equals the run's metrics.json; a resumed run continues the same tracker runs; a tracker that raises never
changes or loses a result; bad input is one clear line."""
import json
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.reporting.trackers import hub
from benchmark.reporting.trackers.base import flat_params, scalars

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

# One epoch of large batches: the cheapest finetune run that still has an epoch loss per task.
FINETUNE = ["--methods", "finetune", "--bench", "digits_t5", "--set", "finetune.epochs=1",
            "--set", "finetune.batch_size=256", "--quiet", "--workers", "0"]
SIMPLECIL = ["--methods", "simplecil", "--bench", "digits_t5", "--quiet", "--workers", "0"]
TIMING_KEYS = {"train_seconds", "eval_seconds", "peak_memory_mb"}


def bench(*args) -> int:
    return main([str(arg) for arg in args])


def offline_wandb(patch: pytest.MonkeyPatch, root: Path) -> None:
    """W&B offline, silent, its caches in ``root``, and any network attempt pointed at a closed local port."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": root,
                       "WANDB_CACHE_DIR": root / "cache", "WANDB_CONFIG_DIR": root / "config",
                       "WANDB_DATA_DIR": root / "data", "WANDB_BASE_URL": "http://127.0.0.1:9"}.items():
        patch.setenv(key, str(value))
    for key in ("WANDB_API_KEY", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        patch.delenv(key, raising=False)


class FailsInLogTask:
    """A tracker that raises at its first task (in each session of a run)."""

    name = "failing"

    def start(self, context, config, parameters, resume_id):
        return None

    def log_task(self, task, values):
        raise RuntimeError("event file gone\nsecond line")

    def log_epoch(self, step, loss):
        pass

    def finish(self, state, metrics):
        pass


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """finetune on digits_t5 logged to all three trackers and to one that raises: stopped after task 2
    (--max-tasks), then resumed."""
    results = tmp_path_factory.mktemp("results")
    run_dir = results / "digits_t5" / "finetune" / "seed1993"
    with pytest.MonkeyPatch.context() as patch:
        offline_wandb(patch, tmp_path_factory.mktemp("wandb"))
        patch.setitem(hub.TRACKERS, "failing", (__name__, "FailsInLogTask", "pytest"))
        assert bench("run", *FINETUNE, "--results-dir", results, "--max-tasks", "2",
                     "--log-to", "tensorboard", "--log-to", "mlflow,wandb,failing") == 0
        first_ids = json.loads((run_dir / "trackers.json").read_text())["ids"]
        assert bench("run", *FINETUNE, "--results-dir", results, "--log-to", "tensorboard,mlflow,wandb,failing") == 0
    return results, run_dir, first_ids


def read_json(path: Path):
    return json.loads(path.read_text())


def test_tensorboard_scalars_equal_metrics_json(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = tracked
    metrics, timing = read_json(run_dir / "metrics.json"), read_json(run_dir / "timing.json")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()

    def series(tag):
        return [(event.step, event.value) for event in events.Scalars(tag)]

    as_float32 = np.float32
    assert series("task/accuracy") == [(t, as_float32(a)) for t, a in
                                       enumerate(metrics["accuracy_curve_rounded"], start=1)]
    assert series("task/avg_acc")[-1] == (5, as_float32(metrics["avg_acc"]))
    assert series("task/forgetting_pilot")[-1] == (5, as_float32(metrics["forgetting_pilot"]))
    assert series("task/train_seconds") == [(entry["task"] + 1, as_float32(entry["train_seconds"]))
                                            for entry in timing]
    for key in ("avg_acc", "last_acc", "forgetting_pilot", "forgetting_avalanche"):
        assert series(f"final/{key}") == [(0, as_float32(metrics[key]))]
    assert series("final/parameters/trainable_task") == [(0, metrics["parameters"]["trainable_task"])]
    # one epoch per task; the resumed session's epochs continue at the global epoch index 2
    losses = series("train/loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(loss) and loss > 0 for _, loss in losses)


def test_mlflow_run_is_resumed_and_reads_back_through_the_client(tracked):
    from mlflow.tracking import MlflowClient

    results, run_dir, first_ids = tracked
    metrics = read_json(run_dir / "metrics.json")
    run_id = read_json(run_dir / "trackers.json")["ids"]["mlflow"]
    assert run_id == first_ids["mlflow"]  # the resumed session reopened the same MLflow run
    client = MlflowClient(tracking_uri=f"sqlite:///{(results / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("digits_t5")
    assert [run.info.run_id for run in client.search_runs([experiment.experiment_id])] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "digits_t5/finetune/seed1993"
    assert run.data.params["method"] == "finetune" and run.data.params["hparams.epochs"] == "1"
    assert run.data.tags["clbench.state"] == "finished"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "task/accuracy"))
    assert history == list(enumerate(metrics["accuracy_curve_rounded"], start=1))
    assert run.data.metrics["final/avg_acc"] == metrics["avg_acc"]
    assert run.data.metrics["final/forgetting_pilot"] == metrics["forgetting_pilot"]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [0, 1, 2, 3, 4]
    assert {item.path for item in client.list_artifacts(run_id)} == {"config.json", "metrics.json"}


def test_wandb_offline_run_files_written_and_resumed(tracked):
    _, run_dir, first_ids = tracked
    run_id = read_json(run_dir / "trackers.json")["ids"]["wandb"]
    assert run_id == first_ids["wandb"]
    sessions = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(sessions) == 2  # one per session, the same run id: `wandb sync` joins them
    for session in sessions:
        assert (session / f"run-{run_id}.wandb").stat().st_size > 0


def test_a_tracker_that_raises_leaves_the_run_finished_and_its_metrics_identical(tracked, tmp_path):
    # finetune: shuffling and a head initialised from the global RNG, which the trackers must not disturb
    _, run_dir, _ = tracked
    assert bench("run", *FINETUNE, "--results-dir", tmp_path) == 0
    plain_dir = tmp_path / "digits_t5" / "finetune" / "seed1993"
    assert read_json(run_dir / "status.json")["state"] == "finished"
    with_trackers, without = read_json(run_dir / "metrics.json"), read_json(plain_dir / "metrics.json")
    assert with_trackers["acc_matrix"][0][0] > 0  # a run that learned something, so equality says something
    assert {k: v for k, v in with_trackers.items() if k not in TIMING_KEYS} == \
        {k: v for k, v in without.items() if k not in TIMING_KEYS}
    warnings = [line for line in (run_dir / "log.txt").read_text().splitlines() if "warning: tracker" in line]
    assert len(warnings) == 2  # once in each session, then disabled
    assert all(line.endswith("warning: tracker failing failed in log_task (RuntimeError: event file gone); "
                             "disabled for the rest of this run (results are unaffected)") for line in warnings)
    assert not (plain_dir / "trackers.json").exists() and not (plain_dir / "tensorboard").exists()


@pytest.mark.parametrize("args, message", [
    (["--log-to", "tensorbord"], "--log-to tensorbord: unknown tracker (choose from tensorboard, mlflow, wandb)"),
    (["--log-to", "mlflow", "--wandb-project", "p"], "--wandb-project needs --log-to wandb"),
    (["--mlflow-uri", "sqlite:///x.db"], "--mlflow-uri needs --log-to mlflow"),
])
def test_bad_tracker_options_are_one_clear_error(args, message, tmp_path, capsys):
    assert bench("run", *SIMPLECIL, "--results-dir", tmp_path, *args) == 2
    assert capsys.readouterr().err == f"bench: error: {message}\n"


def test_a_tracker_not_installed_is_one_preflight_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    real = hub.importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert bench("run", *SIMPLECIL, "--results-dir", tmp_path / "results", "--log-to", "wandb,tensorboard") == 2
    assert capsys.readouterr().err == ("bench: error: --log-to wandb: wandb is not installed: "
                                       "pip install 'clbench[wandb]'\n")
    assert not (tmp_path / "results").exists()


def test_trackers_travel_to_ray_workers_but_not_into_the_resume_fingerprint():
    import pickle

    from benchmark.reporting.trackers import tracker_settings
    from benchmark.runs.launchers import _portable
    from benchmark.runs.resolve import RunRequest, resolve_run
    from benchmark.runs.stored import resume_fields

    settings = tracker_settings(["mlflow,wandb"], "sqlite:///x.db", "proj")
    plain = resolve_run(RunRequest(bench="digits_t5", method="simplecil"))
    logged = resolve_run(RunRequest(bench="digits_t5", method="simplecil", trackers=settings))
    assert resume_fields(logged) == resume_fields(plain)
    assert pickle.loads(pickle.dumps(_portable(logged))).request.trackers == settings
    assert settings.names == ("mlflow", "wandb")


def test_scalars_and_params_flatten_nested_records():
    record = {"avg_acc": 86.91, "tasks": 5, "ok": True, "curve": [1.0], "name": "x",
              "parameters": {"head": 640, "notes": ""}}
    assert scalars(record) == {"avg_acc": 86.91, "tasks": 5.0, "parameters/head": 640.0}
    assert flat_params({"seed": 1993, "hparams": {"lr": 0.01, "targets": ["q", "v"]}, "weights": None, "x": {}}) == \
        {"seed": "1993", "hparams.lr": "0.01", "hparams.targets": '["q", "v"]', "weights": "null", "x": "{}"}


def test_tracker_options_default_to_the_trackers_own_variables_only_when_requested(monkeypatch):
    from benchmark.reporting.trackers import tracker_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("WANDB_PROJECT", "team")
    assert tracker_settings(["tensorboard"]).mlflow_uri is None
    assert tracker_settings(["mlflow"]).mlflow_uri == "sqlite:///elsewhere.db"
    assert tracker_settings(["mlflow"], "http://host:5000").mlflow_uri == "http://host:5000"
    assert (tracker_settings(["wandb"]).wandb_project, tracker_settings(["mlflow"]).wandb_project) == ("team", None)


class Recording:
    """A tracker that records its calls (``fail_in``: the call that raises)."""
    fail_in = None
    instances: list = []

    def __init__(self):
        self.calls = []
        self.instances.append(self)

    def _record(self, call, *args):
        if call == self.fail_in:
            raise OSError("disk full")
        self.calls.append((call, *args))

    def start(self, context, config, parameters, resume_id):
        self._record("start", context.first_task, resume_id)
        return f"id-{type(self).__name__}"

    def log_task(self, task, values):
        self._record("log_task", task, values["task/accuracy"])

    def log_epoch(self, step, loss):
        self._record("log_epoch", step, loss)

    def finish(self, state, metrics):
        self._record("finish", state)


class FailsInStart(Recording):
    name, fail_in = "bad", "start"


class Works(Recording):
    name = "good"


def test_hub_isolates_a_failing_tracker_and_continues_epoch_steps_on_resume(tmp_path, monkeypatch):
    from benchmark.method import SilentMonitor
    from benchmark.reporting.trackers import Trackers, TrackerSettings

    monkeypatch.setitem(hub.TRACKERS, "bad", (__name__, "FailsInStart", "pytest"))
    monkeypatch.setitem(hub.TRACKERS, "good", (__name__, "Works", "pytest"))
    warnings = []

    def session(first_task, tasks, epochs):
        trackers = Trackers(TrackerSettings(("bad", "good")), tmp_path, tmp_path, "b/m/seed1", warnings.append)
        trackers.start({"bench": "b"}, lambda: {"backbone": 10}, first_task)
        factory = trackers.monitor_factory(lambda label, index: SilentMonitor())
        for index in tasks:
            monitor = factory("task", index)
            for epoch in range(epochs):
                monitor.end_epoch(epoch, 0.5)
            trackers.log_task(index, {"accuracy_curve_rounded": [90.0], "avg_acc": 90.0, "forgetting_pilot": 0.0},
                              1.0, 0.5)
        trackers.finish("partial")
        return trackers

    monkeypatch.setattr(Recording, "instances", [])
    session(0, [0, 1], epochs=2)
    assert warnings == ["warning: tracker bad failed in start (OSError: disk full); disabled for the rest of this "
                        "run (results are unaffected)"]
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"ids": {"good": "id-Works"},
                                                                    "epochs_per_task": [2, 2]}
    session(2, [2], epochs=3)
    assert len(warnings) == 2  # the failing tracker fails again in the resumed session, once
    first, resumed = [tracker for tracker in Recording.instances if isinstance(tracker, Works)]
    assert first.calls == [("start", 0, None), ("log_epoch", 0, 0.5), ("log_epoch", 1, 0.5), ("log_task", 1, 90.0),
                           ("log_epoch", 2, 0.5), ("log_epoch", 3, 0.5), ("log_task", 2, 90.0), ("finish", "partial")]
    assert resumed.calls == [("start", 2, "id-Works"), ("log_epoch", 4, 0.5), ("log_epoch", 5, 0.5),
                             ("log_epoch", 6, 0.5), ("log_task", 3, 90.0), ("finish", "partial")]
    assert json.loads((tmp_path / "trackers.json").read_text())["epochs_per_task"] == [2, 2, 3]
