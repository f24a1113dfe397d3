"""Run requests and their resolution: names, hyper-parameters, backbone, device and workers, checked before any
data is loaded. Shared by the preflight and the runner (neither imports the other)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.checkpoints import checkpoint_state, serialized_size
from benchmark.config import resolve_hparams
from benchmark.data.image_check import available_workers
from benchmark.data.streams import parse_benchmark
from benchmark.errors import ClbenchError
from benchmark.method import Method
from benchmark.models.backbones import build_backbone
from benchmark.precision import check_precision
from benchmark.registry import METHODS
from benchmark.reporting.trackers.base import TrackerSettings
from benchmark.store.results import RunStore

IN21K = "vit_base_patch16_224.augreg_in21k"
DEFAULT_BACKBONES = {
    "cifar100": IN21K,
    "imr": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "ima": IN21K,
    "vtab": IN21K,
    # PILOT (README, "backbone_type") and APER run CUB, ObjectNet and OmniBenchmark on the in21k ViT-B/16.
    "cub": IN21K,
    "objnet": IN21K,
    "omni": IN21K,
    # InfLoRA's models/sinet_inflora.py builds 'vit_base_patch16_224_in21k' (timm's augreg_in21k today).
    "domainnet": IN21K,
    "digits": "vit_tiny_shapes",
}
"""A family's backbone when neither ``--backbone`` nor the method names one; a dataset without an entry
(declared in a TOML file or by a plugin) gets :data:`IN21K`, the ViT-B/16 the non-ImageNet families use."""


DEFAULT_SEED = 1993


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU. An unavailable CUDA request is an error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ClbenchError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClbenchError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


@dataclass
class RunRequest:
    """Everything that describes one run; the CLI fills it from its options."""

    bench: str
    method: str
    seed: int = DEFAULT_SEED
    backbone: str | None = None
    weights: str | None = None
    device: str | None = "auto"
    data_root: Path = Path("data")
    overrides: dict[str, str] = field(default_factory=dict)
    results_dir: Path = Path("results")
    workers: int | None = None
    fresh: bool = False
    max_tasks: int | None = None
    variant: str | None = None  # a grid variant's name: the run folder is ``<method>[<variant>]``
    precision: str = "fp32"
    """Autocast precision of training and evaluation: fp32 (default), bf16, fp16 (``benchmark/precision.py``)."""
    eval_cache: bool = True
    """Serve frozen per-image computations from the evaluation cache (``benchmark/runs/eval_cache.py``); results
    are identical either way, so it is not part of the resume fingerprint."""
    trackers: TrackerSettings = field(default_factory=TrackerSettings)
    """Experiment trackers to log to (``--log-to``); not in the resume fingerprint: logging changes no result."""


@dataclass
class ResolvedRun:
    """A validated request: method class, hyper-parameters and backbone name (no data loaded yet)."""

    request: RunRequest
    method_class: type[Method]
    family: str
    num_classes: int
    num_tasks: int
    hparams: Any
    backbone: str

    @property
    def name(self) -> str:
        """The method, with its grid variant: ``cl_lora`` or ``cl_lora[rank=5,targets=q+v]``."""
        variant = self.request.variant
        return f"{self.request.method}[{variant}]" if variant else self.request.method

    @property
    def store(self) -> RunStore:
        return RunStore(self.request.results_dir, self.request.bench, self.name, self.request.seed)


def resolve_run(request: RunRequest) -> ResolvedRun:
    """Check names and options (clear errors before any training) and resolve hyper-parameters."""
    spec, num_tasks = parse_benchmark(request.bench, request.data_root)
    family = spec.name
    method_class = METHODS.get(request.method)
    hparams = _resolve_method_hparams(request.method, method_class, family, request.overrides)
    backbone = (request.backbone or method_class.default_backbones.get(family)
                or DEFAULT_BACKBONES.get(family, IN21K))
    check_precision(request.precision)
    if request.max_tasks is not None and not 1 <= request.max_tasks <= num_tasks:
        raise ClbenchError(f"--max-tasks must be between 1 and {num_tasks} for {request.bench}")
    return ResolvedRun(request, method_class, family, spec.num_classes, num_tasks, hparams, backbone)


def _resolve_method_hparams(name: str, method_class: type[Method], family: str, overrides: dict[str, str]) -> Any:
    """Hyper-parameters of a method; an error names the method and the ``--set`` key(s) that caused it
    (``cl_lora: --set rank=-3: rank must be >= 1``)."""
    defaults = method_class.family_defaults(family)
    try:
        return resolve_hparams(method_class.config_class, defaults, overrides)
    except ClbenchError as error:
        message = str(error)
    if message.startswith("--set "):  # a parse error already names key and value
        raise ClbenchError(f"{name}: {message}") from None
    culprits = []
    for key, value in overrides.items():  # which override fails on its own names the key
        try:
            resolve_hparams(method_class.config_class, defaults, {key: value})
        except ClbenchError:
            culprits.append(f"{key}={value}")
    settings = ", ".join(culprits or [f"{key}={value}" for key, value in overrides.items()])
    raise ClbenchError(f"{name}: --set {settings}: {message}" if settings else f"{name}: {message}") from None


def build_method(run: ResolvedRun, device: torch.device, pretrained: bool = True) -> Method:
    """Seed torch as the official code does (before the model is built), then build backbone and method."""
    torch.manual_seed(run.request.seed)
    backbone = build_backbone(run.backbone, run.request.weights, pretrained=pretrained)
    return run.method_class(backbone, run.hparams, num_classes=run.num_classes, num_tasks=run.num_tasks,
                            device=device, seed=run.request.seed)


def describe_parameters(run: ResolvedRun) -> dict:
    """Parameter report after all tasks of the benchmark, built from shapes only (no data, no weights)."""
    method = build_method(run, torch.device("cpu"), pretrained=False)
    spec, num_tasks = parse_benchmark(run.request.bench, run.request.data_root)
    per_task = spec.num_classes // num_tasks
    method.restore_structure([per_task] * num_tasks)
    method.task_sizes = [per_task] * num_tasks
    report = method.parameter_report().as_dict()
    report["checkpoint_bytes"] = serialized_size(checkpoint_state(method))
    report["checkpoint_full_bytes"] = serialized_size(method.state_dict())
    return report


def default_workers(family: str) -> int:
    """DataLoader workers when ``--workers`` is not given: 0 for the in-memory digits, else min(8, CPUs
    available to this process)."""
    return 0 if family == "digits" else available_workers()
