"""End to end through the `bench` CLI on the built-in digits benchmark: run, table, plot, resume, bad input."""
import json
from pathlib import Path

import pytest

from benchmark.cli import main

FAST = ["--set", "finetune.epochs=1", "--quiet", "--workers", "0"]


def bench(*args: str) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def finished_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    assert bench("run", "--methods", "simplecil,finetune", "--bench", "digits_t5", "--results-dir", results,
                 *FAST) == 0
    return results


def read_metrics(results: Path, method: str, seed: int = 1993) -> dict:
    return json.loads((results / "digits_t5" / method / f"seed{seed}" / "metrics.json").read_text())


def test_run_records_metrics_config_and_predictions(finished_results):
    run_dir = finished_results / "digits_t5" / "simplecil" / "seed1993"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stream"]["class_order"] == list(range(10))
    assert config["hparams"]["batch_size"] == 128
    assert config["versions"]["torch"] and "commit" in config["git"]
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == [f"task{i}.npz" for i in range(5)]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert not (run_dir / "checkpoint.pt").exists()
    assert not list(run_dir.rglob("*.tmp"))


def test_simplecil_above_chance_and_finetune_forgets(finished_results):
    simplecil = read_metrics(finished_results, "simplecil")
    finetune = read_metrics(finished_results, "finetune")
    assert simplecil["last_acc"] > 40  # chance over 10 classes is 10 %
    assert len(simplecil["acc_matrix"]) == 5
    first_task_after_learning = finetune["acc_matrix"][0][0]
    first_task_at_end = finetune["acc_matrix"][-1][0]
    assert first_task_after_learning - first_task_at_end > 50
    assert finetune["forgetting_pilot"] > 30


def test_table_and_plot(finished_results, capsys):
    capsys.readouterr()
    assert bench("table", "--results-dir", finished_results, "--paper") == 0
    output = capsys.readouterr().out
    assert "simplecil" in output and "finetune" in output and "digits_t5" in output
    for suffix in ("md", "csv", "tex"):
        assert (finished_results / "tables" / f"summary.{suffix}").stat().st_size > 0
    assert bench("table", "--results-dir", finished_results, "--format", "latex", "--metric", "forgetting") == 0
    assert "tabular" in capsys.readouterr().out
    assert bench("plot", "--results-dir", finished_results) == 0
    plots = sorted(p.name for p in (finished_results / "plots").iterdir())
    figures = ("accuracy", "avg_vs_params", "forgetting", "last_vs_params", "matrices")
    assert plots == sorted(f"digits_t5_{figure}.{fmt}" for figure in figures for fmt in ("png", "svg"))


def test_finished_runs_are_skipped(finished_results, capsys):
    before = (finished_results / "digits_t5" / "finetune" / "seed1993" / "metrics.json").read_text()
    assert bench("run", "--methods", "finetune", "--bench", "digits_t5", "--results-dir", finished_results,
                 *FAST) == 0
    assert "skipped" in capsys.readouterr().out
    assert (finished_results / "digits_t5" / "finetune" / "seed1993" / "metrics.json").read_text() == before


def test_resume_gives_identical_metrics(finished_results, tmp_path):
    assert bench("run", "--methods", "finetune", "--bench", "digits_t5", "--results-dir", tmp_path,
                 "--max-tasks", "2", *FAST) == 0
    run_dir = tmp_path / "digits_t5" / "finetune" / "seed1993"
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()
    assert bench("run", "--methods", "finetune", "--bench", "digits_t5", "--results-dir", tmp_path, *FAST) == 0
    resumed, uninterrupted = read_metrics(tmp_path, "finetune"), read_metrics(finished_results, "finetune")
    assert resumed["acc_matrix"] == uninterrupted["acc_matrix"]
    assert "resuming" in (run_dir / "log.txt").read_text()


def test_changed_config_does_not_resume_silently(tmp_path, capsys):
    assert bench("run", "--methods", "finetune", "--bench", "digits_t5", "--results-dir", tmp_path,
                 "--max-tasks", "1", *FAST) == 0
    assert bench("run", "--methods", "finetune", "--bench", "digits_t5", "--results-dir", tmp_path,
                 "--set", "finetune.lr=0.5", "--quiet") == 2
    assert "different config (hparams)" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["run", "--methods", "simplecill"], "Did you mean 'simplecil'"),
    (["run", "--bench", "digits_t3"], "valid"),
    (["run", "--bench", "mnist_t5"], "unknown"),
    (["run", "--methods", "finetune", "--set", "finetune.epoch=2"], "no selected method has a hyper-parameter"),
    (["run", "--methods", "finetune", "--set", "epochs=two"], "expected int"),
    (["run", "--seeds", "1,x"], "--seeds"),
    (["run", "--methods", "simplecil", "--max-tasks", "9"], "--max-tasks"),
    (["table", "--metric", "speed"], "valid metrics"),
])
def test_bad_input_is_one_clear_error(args, message, tmp_path, capsys):
    assert bench(*args, "--results-dir", tmp_path) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_nan_loss_is_recorded_as_failed_run(tmp_path, capsys):
    code = bench("run", "--methods", "finetune,simplecil", "--bench", "digits_t5", "--results-dir", tmp_path,
                 "--set", "finetune.lr=1e38", *FAST[2:])
    assert code == 1
    run_dir = tmp_path / "digits_t5" / "finetune" / "seed1993"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "loss became" in status["reason"]
    assert not (run_dir / "metrics.json").exists()
    assert (tmp_path / "digits_t5" / "simplecil" / "seed1993" / "metrics.json").exists()  # others continue


def test_list_and_params(capsys):
    assert bench("list") == 0
    output = capsys.readouterr().out
    assert "simplecil" in output and "digits_t5" in output and "imr_t40" in output
    assert bench("params", "--methods", "simplecil,finetune", "--backbone", "vit_base_patch16_224",
                 "--bench", "cifar100_t20") == 0
    output = capsys.readouterr().out
    assert "85,798,656" in output and "76,800" in output  # backbone size; SimpleCIL stores 100 x 768


@pytest.mark.parametrize("bench_name, tasks, first_classes", [
    ("cifar100_t20", 20, "classes 0-4"),
    ("imr_t40", 40, "classes 0-4"),
    ("ima_t10", 10, "classes 0-19"),
    ("vtab_t5", 5, "classes 0-9"),
])
def test_describe_fabricated_trees(bench_name, tasks, first_classes, tmp_path, capsys):
    from fabricate import write_dataset

    write_dataset(tmp_path, bench_name.split("_")[0], train_per_class=1, test_per_class=1)
    assert bench("describe", "--bench", bench_name, "--data-root", tmp_path) == 0
    output = capsys.readouterr().out
    task_lines = [line for line in output.splitlines() if line.strip().startswith("task")]
    assert len(task_lines) == tasks
    assert first_classes in task_lines[0]
    if bench_name.startswith("vtab"):
        assert "[0, 1, 2, 3" in output  # identity order
    elif bench_name.startswith("cifar"):
        assert "[68, 56, 78, 8, 23" in output  # seed-1993 permutation
    else:
        assert "[168, 136, 51, 9, 183" in output


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    assert bench("describe", "--bench", "imr_t10", "--data-root", tmp_path) == 2
    error = capsys.readouterr().err
    assert "imagenet-r" in error and "imagenet-r.zip" in error and "Traceback" not in error


def test_corrupt_image_is_named_before_any_run_starts(tmp_path, capsys, monkeypatch):
    from fabricate import corrupt_file, write_dataset

    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    write_dataset(tmp_path / "data", "vtab", train_per_class=1, test_per_class=1)
    victim = sorted((tmp_path / "data" / "vtab" / "train" / "0").iterdir())[0]
    corrupt_file(victim)
    code = bench("run", "--methods", "simplecil", "--bench", "vtab_t5", "--backbone", "vit_tiny_random",
                 "--data-root", tmp_path / "data", "--results-dir", tmp_path / "results", "--quiet", "--workers", "0")
    assert code == 2  # preflight (tests/test_preflight.py): nothing was run or written
    assert f"{victim}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
