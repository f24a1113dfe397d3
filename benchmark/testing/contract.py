"""The method contract as code: each rule a small function that trains a method on a tiny ViT and fabricated data
and raises :class:`ContractViolation` (one sentence naming the method and the rule) when the method breaks it.

A trial trains three tasks of two classes (8 images each, one epoch where the method has ``epochs``) on a random
tiny ViT (32 px, patch 4, embed 64, depth 4), seeding as the runner does: the global RNG before the method is built
and before each task. Rules that need a trained method share one trial per (method class, overrides).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.checkpoints import checkpoint_state, restore_checkpoint
from benchmark.config import resolve_hparams
from benchmark.errors import ClbenchError
from benchmark.method import Method, Task
from benchmark.models.backbones import tiny_vit
from benchmark.precision import autocast
from benchmark.registry import METHODS
from benchmark.testing.data import make_tasks

NUM_TASKS, CLASSES_PER_TASK, PER_CLASS, BATCH_SIZE, SEED = 3, 2, 8, 8, 1993
FAST = {"epochs": "1", "batch_size": str(BATCH_SIZE)}
"""Overrides applied where the method has the field, so that a trial takes seconds."""


class ContractViolation(AssertionError):
    """A method broke a rule of the contract; the message names both in one sentence."""

    def __init__(self, method: str, rule: str, detail: str) -> None:
        self.method, self.rule = method, rule
        super().__init__(f"{method} breaks the rule '{RULES[rule]}': {detail}")


def method_name(method_class: type[Method]) -> str:
    """The name a method class is registered under (by itself, not a parent), else its class name."""
    return method_class.__dict__.get("registry_name") or method_class.__name__


# -- building and training as the runner does -------------------------------------------------------------
def build(method_class: type[Method], overrides: dict[str, str], global_seed: int | None = None) -> Method:
    """The method on a fresh random tiny ViT with its ``digits`` defaults, ``FAST`` and ``overrides``; the global RNG
    is seeded with the run seed before the method is built (or with ``global_seed``, to test for its use)."""
    fields = {field.name for field in dataclasses.fields(method_class.config_class)}
    settings = {**{key: value for key, value in FAST.items() if key in fields}, **overrides}
    hparams = resolve_hparams(method_class.config_class, method_class.family_defaults("digits"), settings)
    torch.manual_seed(0)
    backbone = tiny_vit().eval()
    torch.manual_seed(SEED if global_seed is None else global_seed)
    return method_class(backbone, hparams, num_classes=NUM_TASKS * CLASSES_PER_TASK, num_tasks=NUM_TASKS,
                        device="cpu", seed=SEED)


class Witness:
    """Which task's training data was read while which task was being learned."""

    def __init__(self) -> None:
        self.learning: int | None = None
        self.reads: set[tuple[int, int | None]] = set()


class WatchedDataset(Dataset):
    """A task's training set that reports every read to a :class:`Witness`."""

    def __init__(self, base: Dataset, owner: int, witness: Witness) -> None:
        self.base, self.owner, self.witness = base, owner, witness

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        self.witness.reads.add((self.owner, self.witness.learning))
        return self.base[index]


def fresh_tasks(witness: Witness | None = None, precision: str = "fp32") -> tuple[list[Task], torch.Tensor]:
    """The trial's tasks (identical on every call) and its probe images (every task's test images)."""
    tasks, tests = make_tasks(NUM_TASKS, CLASSES_PER_TASK, per_class=PER_CLASS, batch_size=BATCH_SIZE)
    for task in tasks:
        task.precision = precision
        if witness is not None:
            for name in ("train_loader", "train_eval_loader"):
                loader: DataLoader = getattr(task, name)
                setattr(task, name, DataLoader(WatchedDataset(loader.dataset, task.index, witness),
                                               batch_size=loader.batch_size, sampler=loader.sampler,
                                               generator=loader.generator))
    probe = torch.cat([test.tensors[0] for test in tests])
    return tasks, probe


def learn(method: Method, task: Task, witness: Witness | None = None) -> None:
    """One task as the runner trains it (global RNG seeded per task, train mode)."""
    torch.manual_seed(SEED * 1000 + task.index)
    if witness is not None:
        witness.learning = task.index
    method.train()
    try:
        method.learn(task)
    finally:
        if witness is not None:
            witness.learning = None


@torch.inference_mode()
def predict(method: Method, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Float32 logits in eval mode, as the runner evaluates."""
    method.eval()
    with autocast(precision, method.device):
        return method.predict(images).float()


@dataclass
class Trial:
    """A method trained on all tasks, with its predictions after each task and the witness of its data reads."""

    method: Method
    logits: list[torch.Tensor]
    witness: Witness
    probe: torch.Tensor


@functools.lru_cache(maxsize=4)
def _trial(method_class: type[Method], overrides: tuple[tuple[str, str], ...]) -> Trial:
    witness = Witness()
    method = build(method_class, dict(overrides))
    tasks, probe = fresh_tasks(witness)
    logits = []
    for task in tasks:
        learn(method, task, witness)
        logits.append(predict(method, probe))
    return Trial(method, logits, witness, probe)


def trial(method_class: type[Method], overrides: dict[str, str]) -> Trial:
    """The shared trial of a method class (trained once per class and overrides)."""
    return _trial(method_class, tuple(sorted(overrides.items())))


# -- the rules ----------------------------------------------------------------------------------------------
def check_seen_class_logits(method_class: type[Method], overrides: dict[str, str]) -> None:
    """After each task, finite logits of shape (batch, seen classes): one column per class seen so far, in the
    stream's global class ids (a method scoring only the current task's classes, or all classes of the stream,
    gets another width)."""
    result, name = trial(method_class, overrides), method_name(method_class)
    for index, logits in enumerate(result.logits):
        seen = (index + 1) * CLASSES_PER_TASK
        if tuple(logits.shape) != (len(result.probe), seen):
            raise ContractViolation(name, "seen_class_logits", f"predict returned shape {tuple(logits.shape)} after "
                                    f"task {index + 1}, expected ({len(result.probe)}, {seen})")
        if not torch.isfinite(logits).all():
            raise ContractViolation(name, "seen_class_logits", f"predict returned non-finite logits after task "
                                    f"{index + 1}")


def check_current_task_only(method_class: type[Method], overrides: dict[str, str]) -> None:
    """While task t is learned, only task t's training data is read (rehearsal-free)."""
    result, name = trial(method_class, overrides), method_name(method_class)
    foreign = sorted((owner, learning) for owner, learning in result.witness.reads
                     if learning is not None and owner != learning)
    if foreign:
        owner, learning = foreign[0]
        raise ContractViolation(name, "current_task_only", f"while learning task {learning + 1} it read the training "
                                f"data of task {owner + 1}")


def check_same_seed_same_predictions(method_class: type[Method], overrides: dict[str, str]) -> None:
    """A second trial with the same seed gives identical logits after every task."""
    first, name = trial(method_class, overrides), method_name(method_class)
    method = build(method_class, overrides)
    tasks, probe = fresh_tasks()
    for task, expected in zip(tasks, first.logits):
        learn(method, task)
        if not torch.equal(predict(method, probe), expected):
            raise ContractViolation(name, "same_seed_same_predictions", f"two runs with the same seed differ after "
                                    f"task {task.index + 1}")


def check_resume(method_class: type[Method], overrides: dict[str, str]) -> None:
    """A checkpoint written after task 1 (as the runner writes it, through bytes) and restored into a freshly built
    method continues to the same logits as the method that was never stopped."""
    expected, name = trial(method_class, overrides).logits, method_name(method_class)
    stopped = build(method_class, overrides)
    tasks, probe = fresh_tasks()
    learn(stopped, tasks[0])
    buffer = io.BytesIO()
    torch.save(checkpoint_state(stopped), buffer)
    buffer.seek(0)
    resumed = build(method_class, overrides)
    try:
        restore_checkpoint(resumed, torch.load(buffer, weights_only=False))
    except Exception as error:  # any failure to load is the violation
        raise ContractViolation(name, "resume", f"its checkpoint after task 1 does not load into a fresh instance "
                                f"({type(error).__name__}: {error})") from None
    for task in tasks[1:]:
        learn(resumed, task)
        if not torch.equal(predict(resumed, probe), expected[task.index]):
            raise ContractViolation(name, "resume", f"restored after task 1, it predicts differently after task "
                                    f"{task.index + 1} than the run that was never stopped")


def check_structure_without_data(method_class: type[Method], overrides: dict[str, str]) -> None:
    """``restore_structure`` on a fresh method gives the trained method's tensor shapes and parameter report."""
    trained, name = trial(method_class, overrides).method, method_name(method_class)
    fresh = build(method_class, overrides)
    fresh.restore_structure(list(trained.task_sizes))
    fresh.task_sizes = list(trained.task_sizes)
    # Data-sized memories (InfLoRA's DualGPM bases, ``.basis_``) have a data-dependent width: only their count is
    # structure.
    shapes = {key: tuple(value.shape) for key, value in trained.state_dict().items()
              if torch.is_tensor(value) and ".basis_" not in key}
    fresh_shapes = {key: tuple(value.shape) for key, value in fresh.state_dict().items()
                    if torch.is_tensor(value) and ".basis_" not in key}
    if shapes != fresh_shapes:
        differ = sorted(set(shapes.items()) ^ set(fresh_shapes.items()))[0][0]
        raise ContractViolation(name, "structure_without_data", f"restore_structure does not rebuild the trained "
                                f"structure (first difference: {differ})")
    frozen = {key: p.requires_grad for key, p in trained.named_parameters()}
    if frozen != {key: p.requires_grad for key, p in fresh.named_parameters()}:
        raise ContractViolation(name, "structure_without_data", "restore_structure leaves other tensors trainable "
                                "than training does")
    report, rebuilt = trained.parameter_report().as_dict(), fresh.parameter_report().as_dict()
    if report != rebuilt:
        key = next(key for key in report if report[key] != rebuilt.get(key))
        raise ContractViolation(name, "structure_without_data", f"parameter_report without data gives {key} = "
                                f"{rebuilt.get(key)!r}, the trained method {report[key]!r}")


def check_no_global_rng(method_class: type[Method], overrides: dict[str, str]) -> None:
    """Two builds under different global RNG states are identical (initial tensors come from seeded generators),
    except the tensors the class declares in ``global_rng_tensors``."""
    name = method_name(method_class)
    first, second = (build(method_class, overrides, global_seed).state_dict() for global_seed in (1, 2))
    allowed = method_class.global_rng_tensors
    for key, value in first.items():
        if torch.is_tensor(value) and key not in allowed and not torch.equal(value, second[key]):
            raise ContractViolation(name, "no_global_rng", f"its initial tensor {key} depends on the global RNG "
                                    "(draw it from self.make_generator(), or declare it in global_rng_tensors)")


def check_validated_config(method_class: type[Method], overrides: dict[str, str]) -> None:
    """Every numeric hyper-parameter refuses a negative value (unless declared in ``signed_fields``) and the
    config's ``validate`` keeps its parents' rules (``batch_size=0`` is refused), each as ``--set`` reports it."""
    name, config_class = method_name(method_class), method_class.config_class
    defaults = {**method_class.family_defaults("digits"), **overrides}
    resolved = resolve_hparams(config_class, defaults, {})
    numeric = [field.name for field in dataclasses.fields(config_class)
               if isinstance(getattr(resolved, field.name), (int, float))
               and not isinstance(getattr(resolved, field.name), bool) and field.name not in config_class.signed_fields]
    for key, value, why in [*((key, "-1", "validate must refuse it, or the field must be declared in signed_fields")
                              for key in numeric),
                            ("batch_size", "0", "its validate must call super().validate()")]:
        try:
            resolve_hparams(config_class, defaults, {key: value})
        except ClbenchError:
            continue
        raise ContractViolation(name, "validated_config", f"--set {key}={value} is accepted ({why})")


def check_pretrained_untouched(method_class: type[Method], overrides: dict[str, str]) -> None:
    """Unless the method trains its backbone (``trains_backbone``), every pretrained tensor is still in its state,
    unchanged, after all tasks."""
    method, name = trial(method_class, overrides).method, method_name(method_class)
    if method.trains_backbone:
        return
    record = method.pretrained_weights
    # (tensors of equal contents share one digest: zero biases of a random ViT, for instance)
    kept = {record.digests[name] for name in checkpoint_state(method)["pretrained_refs"].values()}
    changed = sorted(name for name, digest in record.digests.items() if digest not in kept)
    if changed:
        raise ContractViolation(name, "pretrained_untouched", f"it changed the frozen pretrained tensor {changed[0]}"
                                " (set trains_backbone = True if it fine-tunes the backbone)")


def check_bf16(method_class: type[Method], overrides: dict[str, str]) -> None:
    """Trained and evaluated under ``--precision bf16``, it gives finite logits over the seen classes."""
    name = method_name(method_class)
    method = build(method_class, overrides)
    tasks, probe = fresh_tasks(precision="bf16")
    for task in tasks:
        try:
            learn(method, task)
            logits = predict(method, probe, "bf16")
        except Exception as error:
            raise ContractViolation(name, "bf16", f"task {task.index + 1} under bf16 fails "
                                    f"({type(error).__name__}: {error})") from None
        if tuple(logits.shape) != (len(probe), task.seen_classes) or not torch.isfinite(logits).all():
            raise ContractViolation(name, "bf16", f"under bf16 its logits after task {task.index + 1} are not finite "
                                    "over the seen classes")


@contextlib.contextmanager
def registered(method_class: type[Method]):
    """The method class under its registered name, registering it for the duration when it is not."""
    name = method_class.__dict__.get("registry_name")
    if name and name in METHODS and METHODS.get(name) is method_class:
        yield name
        return
    name = f"contract_{method_class.__name__.lower()}"
    METHODS.register(name)(method_class)
    try:
        yield name
    finally:
        METHODS.unregister(name)
        del method_class.registry_name


def check_cli(method_class: type[Method], overrides: dict[str, str]) -> None:
    """``bench params`` and ``bench describe --method`` work for it (exit 0, a line naming it)."""
    from benchmark.cli import main

    with registered(method_class) as name:
        sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
        for command in (["params", "--methods", name, "--bench", "digits_t5", *sets],
                        ["describe", "--method", name, "--bench", "digits_t5"]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(command)
            if status != 0 or name not in out.getvalue():
                detail = (err.getvalue().strip() or out.getvalue().strip()).splitlines()
                raise ContractViolation(name, "cli", f"`bench {' '.join(command)}` exits {status}"
                                        + (f" ({detail[-1]})" if detail else ""))


CHECKS: dict[str, Callable[[type[Method], dict[str, str]], None]] = {
    "seen_class_logits": check_seen_class_logits,
    "current_task_only": check_current_task_only,
    "same_seed_same_predictions": check_same_seed_same_predictions,
    "resume": check_resume,
    "structure_without_data": check_structure_without_data,
    "no_global_rng": check_no_global_rng,
    "validated_config": check_validated_config,
    "pretrained_untouched": check_pretrained_untouched,
    "bf16": check_bf16,
    "cli": check_cli,
}
RULES: dict[str, str] = {
    "seen_class_logits": "logits over exactly the seen classes, in global class ids",
    "current_task_only": "train_task sees only the current task",
    "same_seed_same_predictions": "the same seed gives identical predictions",
    "resume": "a checkpoint restored into a fresh instance continues to identical results",
    "structure_without_data": "restore_structure and parameter_report without data match the trained method",
    "no_global_rng": "no use of the global RNG for initialisation",
    "validated_config": "every hyper-parameter is validated",
    "pretrained_untouched": "frozen pretrained tensors stay unchanged",
    "bf16": "it runs under --precision bf16",
    "cli": "bench params and bench describe work for it",
}


def check_rule(method_class: type[Method], rule: str, **overrides: Any) -> None:
    """Check one rule of the contract (``RULES``); ``overrides`` are ``--set``-style hyper-parameters."""
    if rule not in CHECKS:
        raise ValueError(f"unknown rule '{rule}'; rules: {', '.join(CHECKS)}")
    CHECKS[rule](method_class, {key: str(value) for key, value in overrides.items()})


def check_method(method_class: type[Method], **overrides: Any) -> None:
    """Check every rule of the contract; the first broken rule raises :class:`ContractViolation`."""
    for rule in CHECKS:
        check_rule(method_class, rule, **overrides)
