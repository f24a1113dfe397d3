"""Streams: names, class orders (seed-1993 vectors of the data protocol §4), tasks, eval order, records."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmark.errors import ClbenchError, DataError
from benchmark.data.streams import (benchmark_family, build_stream, class_order, default_data_root, named_benchmarks,
                               parse_benchmark)
from fabricate import corrupt_file, write_all_datasets, write_dataset

ORDER_100 = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38, 58, 70, 77, 1, 85, 19,
             17, 50, 28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44, 91, 41, 72, 60, 79, 52, 20, 10, 31, 54, 37, 95,
             14, 71, 96, 98, 97, 2, 64, 66, 42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11, 12, 47, 25,
             30, 46, 62, 69, 36, 61, 7, 63, 75, 5, 32, 4, 51, 48, 73, 93, 39, 67, 29, 49, 57, 33]
ORDER_200 = [168, 136, 51, 9, 183, 101, 171, 99, 42, 159, 191, 70, 16, 188, 27, 10, 175, 26, 68, 187, 98, 6, 85, 35,
             112, 43, 100, 0, 103, 181, 88, 59, 4, 2, 116, 174, 94, 80, 106, 1, 147, 17, 141, 131, 72, 23, 173, 54,
             197, 118, 87, 32, 79, 104, 91, 19, 135, 107, 178, 36, 11, 199, 142, 8, 122, 3, 28, 57, 153, 172, 190,
             56, 49, 44, 97, 62, 151, 169, 194, 55, 192, 12, 189, 78, 66, 180, 15, 137, 109, 134, 92, 119, 126, 52,
             170, 40, 148, 65, 144, 64, 138, 45, 77, 89, 154, 90, 71, 193, 74, 30, 113, 143, 96, 84, 67, 50, 186,
             156, 69, 21, 18, 111, 108, 58, 125, 157, 150, 110, 182, 129, 166, 83, 81, 60, 13, 165, 14, 176, 63,
             117, 5, 22, 145, 121, 38, 41, 82, 127, 114, 20, 31, 53, 37, 163, 196, 130, 152, 162, 86, 76, 24, 34,
             184, 149, 33, 128, 198, 155, 146, 167, 139, 120, 140, 102, 47, 25, 158, 123, 46, 164, 61, 7, 115, 75,
             133, 160, 105, 132, 179, 124, 48, 73, 93, 39, 95, 195, 29, 177, 185, 161]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One fabricated root with all eight downloadable datasets (2 train / 1 test image per class; DomainNet's
    own fabricated counts)."""
    return write_all_datasets(tmp_path_factory.mktemp("data"), train_per_class=2, test_per_class=1)


# -- names and orders -------------------------------------------------------------------------------------
def test_class_order_matches_official_seed_1993_vectors():
    state = np.random.get_state()
    assert class_order(100, True, 1993) == ORDER_100
    assert class_order(200, True, 1993) == ORDER_200
    assert class_order(50, False, 1993) == list(range(50))
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


def test_parse_benchmark_and_family():
    spec, tasks = parse_benchmark("imr_t40")
    assert (spec.name, spec.num_classes, tasks, spec.shuffle) == ("imr", 200, 40, True)
    assert parse_benchmark("digits_t10")[1] == 10
    assert benchmark_family("vtab_t10") == "vtab"
    assert named_benchmarks() == ["cifar100_t10", "cifar100_t20", "cub_t10", "cub_t20", "digits_t5", "domainnet_t5",
                                  "domainnet_t15", "ima_t10", "ima_t20", "imr_t10", "imr_t20", "imr_t40",
                                  "objnet_t10", "objnet_t20", "omni_t10", "omni_t20", "vtab_t5", "vtab_t10"]


def test_bad_names_list_valid_choices():
    with pytest.raises(ClbenchError, match=r"Did you mean 'cifar100'\?.*Valid datasets: cifar100, cub, digits, domainnet, ima"):
        parse_benchmark("cifar10_t10")
    with pytest.raises(ClbenchError, match=r"valid N: 1, 2, 5, 10, 25, 50$"):
        parse_benchmark("vtab_t7")
    with pytest.raises(ClbenchError, match=r"valid N: 1, 2, 5, 10$"):
        parse_benchmark("digits_t0")
    with pytest.raises(ClbenchError, match=r"expected <dataset>_t<N> \(e.g. imr_t10\)"):
        parse_benchmark("imr")


def test_default_data_root(monkeypatch):
    monkeypatch.delenv("CLBENCH_DATA_ROOT", raising=False)
    assert str(default_data_root()) == "data"
    monkeypatch.setenv("CLBENCH_DATA_ROOT", "/somewhere/else")
    assert str(default_data_root()) == "/somewhere/else"


# -- streams on fabricated trees ----------------------------------------------------------------------------
def test_cifar100_stream_tasks_and_eval_order(data_root):
    stream = build_stream("cifar100_t10", data_root, image_size=32)
    assert stream.class_order == ORDER_100 and stream.increments == [10] * 10
    raw_test = stream.raw.test.targets
    for index, task in enumerate(stream.tasks):
        assert task.classes == list(range(10 * index, 10 * index + 10))
        assert task.raw_classes == ORDER_100[10 * index: 10 * index + 10]
        assert len(task.train) == len(task.train_eval) == 20 and task.test_count == 10
    task = stream.tasks[3]
    image, label = task.train[0]
    assert isinstance(label, int) and image.shape == (3, 32, 32)
    labels = [task.train_eval[item][1] for item in range(len(task.train_eval))]
    assert labels == sorted(labels) and set(labels) == set(task.classes)
    # The fabricated pixels encode (position, raw label): check images really match their new labels.
    eval_set = stream.eval_dataset(2)
    assert len(eval_set) == 30
    expected = [position for label in range(30) for position in np.flatnonzero(raw_test == ORDER_100[label])]
    assert eval_set.indices.tolist() == expected
    image, label = eval_set[29]
    assert label == 29 and round(float(image[1].mean()) * 255) == ORDER_100[29]


def test_imr_stream_shuffled_by_seed(data_root):
    stream = build_stream("imr_t40", data_root, image_size=32, seed=1993)
    assert stream.num_tasks == 40 and stream.increments == [5] * 40 and stream.class_order == ORDER_200
    first = stream.eval_dataset(0)
    names = [stream.raw.test.paths[position].split("/test/")[1].split("/")[0] for position in first.indices]
    assert names == [stream.raw.class_names[raw] for raw in ORDER_200[:5]]
    assert [first[item][1] for item in range(len(first))] == [0, 1, 2, 3, 4]
    other = build_stream("imr_t40", data_root, image_size=32, seed=0)
    assert other.class_order != ORDER_200 and sorted(other.class_order) == list(range(200))


def test_vtab_stream_identity_order_string_sorted(data_root):
    stream = build_stream("vtab_t5", data_root, image_size=32, profile="coda")
    assert stream.class_order == list(range(50)) and stream.increments == [10] * 5
    assert stream.transforms.profile == "default"  # VTAB has no CODA-P variant
    first_task_folders = [stream.raw.class_names[raw] for raw in stream.tasks[0].raw_classes]
    assert first_task_folders == ["0", "1", "10", "11", "12", "13", "14", "15", "16", "17"]
    assert len(stream.eval_dataset(4)) == 50


def test_describe_is_json_record(data_root):
    stream = build_stream("cifar100_t20", data_root, image_size=32, profile="coda", normalize="half")
    record = json.loads(json.dumps(stream.describe()))
    assert record["benchmark"] == "cifar100_t20" and record["class_order"] == ORDER_100
    assert record["increments"] == [5] * 20 and record["seed"] == 1993
    assert (record["transform_profile"], record["normalize"], record["image_size"]) == ("coda", "half", 32)
    assert record["tasks"][0] == {"index": 0, "classes": [0, 1, 2, 3, 4], "raw_classes": ORDER_100[:5],
                                  "train_count": 10, "test_count": 5}
    assert record["checksums"]["meta"]["ok"] is False
    assert any("MD5" in warning for warning in record["warnings"]) and record["warnings"] == stream.warnings
    assert record["data_root"] == str(data_root.resolve())
    assert set(record) == {"benchmark", "dataset", "dataset_title", "num_classes", "num_tasks", "seed", "shuffle",
                           "requested_order", "class_order", "increments", "transform_profile", "requested_profile",
                           "normalize", "image_size", "transforms", "data_root", "train_count", "test_count",
                           "tasks", "class_names", "checksums", "dataset_fingerprint", "warnings"}
    assert (record["train_count"], record["test_count"]) == (len(stream.raw.train), len(stream.raw.test))
    assert record["class_names"] == list(stream.raw.class_names) and len(record["class_names"]) == 100
    assert (record["dataset"], record["num_classes"], record["num_tasks"]) == ("cifar100", 100, 20)
    assert record["shuffle"] is True and record["requested_order"] == "protocol"


def test_missing_tree_is_one_data_error(tmp_path):
    with pytest.raises(DataError, match=r"ImageNet-A: not found .*ina.zip"):
        build_stream("ima_t10", tmp_path, image_size=32)


def test_corrupt_image_fails_when_loaded(tmp_path):
    write_dataset(tmp_path, "vtab")
    stream = build_stream("vtab_t5", tmp_path, image_size=32)
    bad = stream.raw.test.paths[0]
    corrupt_file(bad)
    eval_set = stream.eval_dataset(0)
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        eval_set[0]


def test_digits_stream():
    stream = build_stream("digits_t5", "/nonexistent", image_size=32)
    assert stream.class_order == list(range(10)) and stream.increments == [2] * 5
    assert [len(task.train) for task in stream.tasks] == [287, 287, 289, 287, 283]
    assert [len(stream.eval_dataset(index)) for index in range(5)] == [73, 146, 220, 293, 364]
    assert stream.describe()["data_root"] is None and stream.warnings == []
    loader = torch.utils.data.DataLoader(stream.tasks[2].train, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 32, 32) and set(labels.tolist()) <= {4, 5}
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_stream_refusals_name_the_valid_values(data_root):
    with pytest.raises(ClbenchError, match="^unknown class order 'random'; valid: protocol, identity$"):
        build_stream("cifar100_t20", data_root, image_size=32, order="random")
    stream = build_stream("cifar100_t20", data_root, image_size=32)
    for method in (stream.eval_dataset, stream.eval_labels):
        with pytest.raises(IndexError, match="^task 20 outside 0..19$"):
            method(20)
