"""``bench speed``: per-method training and inference timing, registry-driven, on the tiny ViT."""
import json

import torch

from benchmark.cli import main
from benchmark.runs.speed import inference_speed, train_speed

CPU = torch.device("cpu")


def test_train_speed_times_the_real_steps_and_skips_untrained_methods():
    row = train_speed("cl_lora", "vit_tiny_random", "bf16", CPU, steps=2, batch_size=4, num_tasks=3, family="digits")
    assert row["trains"] and row["timed_steps"] == 2 and row["batch_size"] == 4
    assert row["images_per_s"] > 0 and row["peak_memory_source"] == "cpu_rss_increase_sampled"
    frozen = train_speed("simplecil", "vit_tiny_random", "fp32", CPU, steps=2, num_tasks=3, family="digits")
    assert not frozen["trains"] and frozen["images_per_s"] is None


def test_inference_speed_times_every_predict_variant_with_equal_logits():
    rows = inference_speed("cl_lora", "vit_tiny_random", "fp32", CPU, num_tasks=3, batch_size=4, family="digits")
    assert [row["path"] for row in rows] == ["default", "per-task passes"]
    assert rows[1]["max_abs_logit_diff"] < 1e-5


def test_speed_command_writes_json(tmp_path, capsys):
    assert main(["speed", "--train", "--methods", "simplecil,l2p", "--backbone", "vit_tiny_random", "--family",
                 "digits", "--tasks", "2", "--steps", "1", "--batch-size", "4", "--train-batch-size", "4",
                 "--repeats", "1", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "training step" in out and "nothing trained" in out and "bf16/fp32" in out
    [path] = (tmp_path / "speed").glob("*.json")
    report = json.loads(path.read_text())
    assert {(row["method"], row["precision"]) for row in report["training"]} == {
        (m, p) for m in ("simplecil", "l2p") for p in ("fp32", "bf16")}
    assert {row["method"]: row["task"] for row in report["training"]} == {"simplecil": 1, "l2p": 2}


def test_first_task_only_methods_are_timed_on_their_first_task():
    from benchmark.runs.speed import method_speed_report

    report = method_speed_report(["aper"], "vit_tiny_random", ["fp32"], CPU, steps=1, train_batch_size=4,
                                 num_tasks=2, eval_batch_size=4, family="digits", echo=lambda line: None)
    [row] = report["training"]
    assert row["trains"] and row["task"] == 1 and row["timed_steps"] == 1


def test_every_registered_method_is_timed():
    from benchmark.registry import METHODS
    from benchmark.runs.speed import method_speed_report

    report = method_speed_report(METHODS.names(), "vit_tiny_random", ["fp32"], CPU, steps=1, train_batch_size=4,
                                 num_tasks=2, eval_batch_size=4, family="digits", echo=lambda line: None)
    trained = {row["method"] for row in report["training"] if row["trains"]}
    assert trained == set(METHODS.names()) - {"simplecil"}
    assert {row["method"] for row in report["inference"]} == set(METHODS.names())
