"""Property-based tests (hypothesis) where the input space is large and the rules are crisp: metrics on random
predictions with unequal task sizes, stream construction for every valid ``<dataset>_t<N>``, and ``--set``
parsing round trips for every registered method's hyper-parameters."""
from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.config import as_dict, parse_overrides, resolve_hparams
from benchmark.reporting.metrics import Evaluation, compute_metrics
from benchmark.registry import DATASETS, METHODS
from benchmark.data.streams import build_stream, parse_benchmark
from fabricate import write_all_datasets


# -- metrics ------------------------------------------------------------------------------------------------------
@st.composite
def runs(draw, equal_sizes: bool = False):
    """(evaluations, increments): T tasks of 1-3 classes, 1-6 test images per class, random top-1 predictions."""
    num_tasks = draw(st.integers(1, 5))
    increments = draw(st.lists(st.integers(1, 3), min_size=num_tasks, max_size=num_tasks))
    total = sum(increments)
    if equal_sizes:
        per_class = [draw(st.integers(1, 6))] * total
        increments = [increments[0]] * num_tasks
        total = sum(increments)
        per_class = [per_class[0]] * total
    else:
        per_class = draw(st.lists(st.integers(1, 6), min_size=total, max_size=total))
    evaluations = []
    for step in range(num_tasks):
        seen = sum(increments[: step + 1])
        labels = np.repeat(np.arange(seen), per_class[:seen])
        predictions = np.array(draw(st.lists(st.integers(0, seen - 1), min_size=len(labels),
                                             max_size=len(labels))))
        evaluations.append(Evaluation(labels=labels, top5=predictions[:, None]))
    return evaluations, increments


@settings(max_examples=60, deadline=None)
@given(runs())
def test_metric_bounds_and_definitions(run):
    evaluations, increments = run
    metrics = compute_metrics(evaluations, increments)
    curve = metrics["accuracy_curve_rounded"]
    assert min(curve) - 1e-9 <= metrics["avg_acc"] <= max(curve) + 1e-9
    assert metrics["last_acc"] == curve[-1]
    assert metrics["forgetting_pilot"] >= 0.0
    for step, evaluation in enumerate(evaluations):
        correct = int((evaluation.top1 == evaluation.labels).sum())
        assert metrics["accuracy_curve"][step] == pytest.approx(correct * 100 / len(evaluation.labels), abs=1e-9)
        row = np.array(metrics["acc_matrix"][step][: step + 1])
        assert np.all((row >= 0) & (row <= 100))
        assert all(value is None for value in metrics["acc_matrix"][step][step + 1:])


@settings(max_examples=40, deadline=None)
@given(runs(equal_sizes=True))
def test_task_mean_equals_sample_weighted_when_tasks_are_equal(run):
    evaluations, increments = run
    metrics = compute_metrics(evaluations, increments)
    assert metrics["avg_acc_task_mean"] == pytest.approx(metrics["avg_acc_unrounded"], abs=1e-9)
    assert metrics["last_acc_task_mean"] == pytest.approx(metrics["last_acc_unrounded"], abs=1e-9)


# -- streams ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """All eight fabricated trees, 2 train and 2 test images per class (DomainNet: 2 train, 1 test)."""
    return write_all_datasets(tmp_path_factory.mktemp("data"), train_per_class=2, test_per_class=2)


VALID_BENCHMARKS = [f"{name}_t{n}" for name in DATASETS.names()
                    for n in DATASETS.get(name).valid_task_counts()]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(VALID_BENCHMARKS))
def test_every_valid_benchmark_partitions_its_data(data_root, name):
    spec, num_tasks = parse_benchmark(name)
    stream = build_stream(name, data_root, image_size=32)
    assert stream.increments == [spec.num_classes // num_tasks] * num_tasks
    assert sorted(stream.class_order) == list(range(spec.num_classes))
    classes = [c for task in stream.tasks for c in task.classes]
    assert classes == list(range(spec.num_classes))  # tasks partition the new labels, in order
    assert sum(len(task.train) for task in stream.tasks) == len(stream.raw.train)
    assert sum(task.test_count for task in stream.tasks) == len(stream.raw.test)
    expected_order = np.lexsort((np.arange(len(stream.test_labels)), stream.test_labels))
    previous = np.array([], dtype=np.int64)
    for index in range(num_tasks):
        indices = stream.eval_dataset(index).indices
        assert np.array_equal(indices[: len(previous)], previous)  # nested evaluation sets
        seen = sum(stream.increments[: index + 1])
        assert np.array_equal(indices, expected_order[: int((stream.test_labels < seen).sum())])
        previous = indices


# -- --set round trips --------------------------------------------------------------------------------------------
def _value_strategy(annotation):
    """Values of a hyper-parameter type and how the command line writes them; None if not generated."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        strategy = _value_strategy(inner[0]) if len(inner) == 1 else None
        return None if strategy is None else st.one_of(st.just((None, "none")), strategy)
    if origin is typing.Literal:
        return st.sampled_from([(value, str(value)) for value in args])
    if annotation is bool:
        return st.sampled_from([(True, "true"), (False, "false"), (True, "1"), (False, "off")])
    if annotation is int:
        return st.integers(-10**6, 10**6).map(lambda v: (v, str(v)))
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False, width=64).map(lambda v: (v, repr(v)))
    if annotation is str:
        text = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-+."),
                       min_size=1, max_size=12).filter(lambda s: s.lower() not in ("none", "null"))
        return text.map(lambda v: (v, v))
    if origin in (tuple, list) and args and args[0] is str:
        item = st.sampled_from(["q", "k", "v", "a1", "b_2"])
        container = tuple if origin is tuple else list
        return st.lists(item, min_size=1, max_size=3).map(lambda v: (container(v), ",".join(v)))
    return None


FIELDS = [(method, field.name) for method in METHODS.names()
          for field in dataclasses.fields(METHODS.get(method).config_class)]


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_set_values_round_trip_through_parsing(data):
    method, name = data.draw(st.sampled_from(FIELDS))
    config_class = METHODS.get(method).config_class
    annotation = typing.get_type_hints(config_class)[name]
    strategy = _value_strategy(annotation)
    if strategy is None:
        return
    value, text = data.draw(strategy)
    overrides = parse_overrides([f"{name}={text}"])
    assert overrides == {name: text.strip()}
    try:
        config = resolve_hparams(config_class, {}, overrides)
    except Exception as error:  # a value the method's own validation rejects: must be a clear ClbenchError
        from benchmark.errors import ClbenchError
        assert isinstance(error, ClbenchError), error
        return
    if value is None and getattr(config, name) is not None:
        return  # None asks for the method's own default (e.g. APER's recipe fills its batch size)
    assert getattr(config, name) == value
    assert as_dict(config)[name] == (list(value) if isinstance(value, tuple) else value)
