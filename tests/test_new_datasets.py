"""CUB-200, ObjectNet, OmniBenchmark and DomainNet on fabricated trees in their real layouts: streams through
``bench describe``, DomainNet's pooling and list files, default backbones, and short runs of two methods."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.data.datasets.domainnet import DOMAINNET, LISTS_ENV
from benchmark.errors import DataError
from benchmark.registry import DATASETS
from benchmark.runs.resolve import IN21K, RunRequest, resolve_run
from fabricate import DOMAINS, domainnet_class, write_dataset, write_domainnet


def bench(*args) -> int:
    return main([str(arg) for arg in args])


def task_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip().startswith("task")]


@pytest.mark.parametrize("name, tasks, first_task, order_start", [
    # seed-1993 permutations of numpy's legacy RNG (the ImageNet-R order for 200 classes, data protocol §1)
    ("cub_t10", 10, "classes 0-19  train     20  test     20", "[168, 136, 51, 9, 183"),
    ("cub_t20", 20, "classes 0-9  train     10  test     10", "[168, 136, 51, 9, 183"),
    ("objnet_t10", 10, "classes 0-19  train     20  test     20", "[168, 136, 51, 9, 183"),
    ("objnet_t20", 20, "classes 0-9  train     10  test     10", "[168, 136, 51, 9, 183"),
    ("omni_t10", 10, "classes 0-29  train     30  test     30", "[169, 221, 146, 296, 92"),
    ("omni_t20", 20, "classes 0-14  train     15  test     15", "[169, 221, 146, 296, 92"),
    # DomainNet fabricated with 2 train images (two domains) and 1 test image per class
    ("domainnet_t5", 5, "classes 0-68  train    138  test     69", "[214, 80, 343, 268, 224"),
    ("domainnet_t15", 15, "classes 0-22  train     46  test     23", "[214, 80, 343, 268, 224"),
])
def test_describe_gives_class_order_and_task_counts(name, tasks, first_task, order_start, tmp_path, capsys):
    write_dataset(tmp_path, name.split("_")[0])
    assert bench("describe", "--bench", name, "--data-root", tmp_path) == 0
    output = capsys.readouterr().out
    lines = task_lines(output)
    assert len(lines) == tasks
    assert first_task in lines[0]
    assert f"class order (raw label of new label 0, 1, ...): {order_start}" in output
    assert ("InfLoRA's own split files are not reachable here" in output) == name.startswith("domainnet")


def test_domainnet_pools_every_domain_of_a_class(tmp_path):
    write_domainnet(tmp_path)
    raw = DOMAINNET.load(tmp_path)
    assert len(raw.class_names) == 345 and raw.class_names[7] == domainnet_class(7)
    assert np.bincount(raw.train.targets).tolist() == [2] * 345
    assert np.bincount(raw.test.targets).tolist() == [1] * 345
    # train = the six train lists in domain order, lines in file order: clipart's first line is class 0's
    first = [path for path, label in zip(raw.train.paths, raw.train.targets) if label == 7]
    assert [p.split("/")[-3] for p in first] == [DOMAINS[7 % 6], DOMAINS[8 % 6]]
    assert raw.train.paths[0].endswith("domainnet/clipart/c000_thing/clipart_000_000000.jpg")
    assert set(raw.checksums) == {f"{d}_{s}.txt" for d in DOMAINS for s in ("train", "test")}


def test_domainnet_other_list_files_replace_the_split(tmp_path, monkeypatch):
    write_domainnet(tmp_path)
    lists = tmp_path / "my_lists"
    lists.mkdir()
    for path in (tmp_path / "domainnet").glob("*.txt"):
        shutil.copy(path, lists / path.name)
    # move class 0's clipart test image into the train split
    test_lines = (lists / "clipart_test.txt").read_text().splitlines(keepends=True)
    moved = [line for line in test_lines if line.endswith(" 0\n")]
    (lists / "clipart_test.txt").write_text("".join(line for line in test_lines if line not in moved))
    (lists / "clipart_train.txt").write_text((lists / "clipart_train.txt").read_text() + "".join(moved))
    monkeypatch.setenv(LISTS_ENV, str(lists))
    with pytest.raises(DataError, match="test split has no image of class"):
        DOMAINNET.load(tmp_path)  # class 0 has no test image left: the lists were read from my_lists
    (lists / "clipart_test.txt").write_text("".join(test_lines))
    raw = DOMAINNET.load(tmp_path)
    assert len(raw.train) == 691 and raw.checksums["clipart_train.txt"]["folder"] == str(lists)


def test_domainnet_malformed_list_line_is_named(tmp_path):
    write_domainnet(tmp_path)
    path = tmp_path / "domainnet" / "sketch_test.txt"
    path.write_text(path.read_text() + "sketch/c005_thing/x.jpg five\n")
    with pytest.raises(DataError, match=r"sketch_test.txt:\d+: expected '<domain>/<class>/<file> <label>'"):
        DOMAINNET.load(tmp_path)


def test_domainnet_label_naming_two_classes_is_an_error(tmp_path):
    write_domainnet(tmp_path)
    path = tmp_path / "domainnet" / "real_test.txt"
    path.write_text(path.read_text() + "real/c001_thing/odd.jpg 2\n")
    with pytest.raises(DataError, match="label 2 is class 'c002_thing' elsewhere but 'c001_thing'"):
        DOMAINNET.load(tmp_path)


@pytest.mark.parametrize("bench_name", ["cub_t10", "objnet_t10", "omni_t10", "domainnet_t5"])
def test_new_families_default_to_the_in21k_vit(bench_name):
    assert DATASETS.origin(bench_name.split("_")[0]) == "built-in"
    assert resolve_run(RunRequest(bench_name, "finetune")).backbone == IN21K == "vit_base_patch16_224.augreg_in21k"


@pytest.mark.parametrize("name", ["cub_t2", "objnet_t2", "omni_t2", "domainnet_t3"])
def test_simplecil_and_l2p_run_on_each_new_tree(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    write_dataset(tmp_path / "data", name.split("_")[0])
    code = bench("run", "--methods", "simplecil,l2p", "--bench", name, "--backbone", "vit_tiny_random",
                 "--data-root", tmp_path / "data", "--results-dir", tmp_path / "results", "--workers", "0",
                 "--quiet", "--set", "l2p.epochs=1")
    assert code == 0, capsys.readouterr().err
    for method in ("simplecil", "l2p"):
        run_dir = tmp_path / "results" / name / method / "seed1993"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert len(metrics["accuracy_curve"]) == int(name.split("_t")[1])
        config = json.loads((run_dir / "config.json").read_text())
        assert config["stream"]["dataset"] == name.split("_")[0] and config["fingerprint"]["dataset_sha256"] is None


def test_incomplete_domainnet_tree_is_one_line_and_nothing_is_written(tmp_path, capsys):
    write_domainnet(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "domainnet" / "sketch")
    code = bench("run", "--methods", "simplecil", "--bench", "domainnet_t5", "--backbone", "vit_tiny_random",
                 "--data-root", tmp_path / "data", "--results-dir", tmp_path / "results", "--workers", "0", "--quiet")
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert f"DomainNet: not found under {tmp_path / 'data'} (missing {tmp_path / 'data' / 'domainnet' / 'sketch'})" \
        in error and "bench data prepare --dataset domainnet" in error
    assert not (tmp_path / "results").exists()
