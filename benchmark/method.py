"""The one method interface every continual learner implements.

The runner calls, per task: ``learn(task)`` (which calls the subclass's ``train_task``), then ``predict``
on batches of test images under ``torch.inference_mode()``. Methods also report their parameters and can be
saved and restored with ``state_dict``/``load_state_dict`` (they are ``nn.Module``s).

A method that grows per task (new adapters, heads, prompts) keeps its per-task tensors in child modules and
overrides :meth:`Method.restore_structure`, which rebuilds the structure for a list of task sizes on a freshly
constructed method. ``load_state_dict`` calls it before loading tensors (through ``set_extra_state``), so a
killed run can resume, and ``bench params`` can count parameters after T tasks without data.
"""
from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark.checkpoints import PretrainedWeights
from benchmark.errors import ClbenchError
from benchmark.precision import training_precision


@dataclass
class MethodConfig:
    """Hyper-parameters every method has. Subclass it (as a dataclass) to declare a method's own."""

    batch_size: int = 32
    """Train batch size; also the test batch size unless ``eval_batch_size`` is set (PILOT's test loaders)."""
    eval_batch_size: int | None = None
    defaults_source: str = ""
    """Where the benchmark family's defaults come from (an official config, or the method's ImageNet-R recipe
    where none exists; harness choices are labelled as such). Recorded in the saved config, not used in training,
    and not compared when a stored run is matched for resume."""

    signed_fields: ClassVar[frozenset[str]] = frozenset()
    """Numeric fields that may be negative; every other int/float field must be >= 0 (checked after
    :meth:`validate` by :func:`benchmark.config.refuse_negative_values`)."""

    def validate(self) -> None:
        """Raise :class:`benchmark.errors.ClbenchError` for inconsistent values (subclasses extend it)."""
        if self.batch_size < 1:
            raise ClbenchError("batch_size must be >= 1")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ClbenchError("eval_batch_size must be >= 1")


def imagenet_r_recipe(values: dict[str, Any], source: str, families: Iterable[str],
                      why: str = "") -> dict[str, dict[str, Any]]:
    """``default_cfgs`` entries for families without an official config: the method's ImageNet-R ``values``,
    each with ``defaults_source`` "ImageNet-R recipe (no official config for F[; why]): ``source``"."""
    return {family: {**values, "defaults_source": f"ImageNet-R recipe (no official config for {family}"
                                                  f"{'; ' + why if why else ''}): {source}"}
            for family in families}


class TrainingMonitor(Protocol):
    """Receives training progress; the runner shows it as progress bars or log lines."""

    def start_epochs(self, epochs: int, batches_per_epoch: int) -> None: ...

    def end_batch(self, loss: float) -> None: ...

    def end_epoch(self, epoch: int, mean_loss: float) -> None: ...


class FrozenWork(Protocol):
    """What the harness's evaluation cache offers a method (``benchmark/runs/eval_cache.py``)."""

    def __call__(self, names: Sequence[str], since: Sequence[int], images: torch.Tensor,
                 compute: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> torch.Tensor: ...


class SilentMonitor:
    """A :class:`TrainingMonitor` that ignores everything (tests, parameter reports)."""

    def start_epochs(self, epochs: int, batches_per_epoch: int) -> None:
        pass

    def end_batch(self, loss: float) -> None:
        pass

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        pass


@dataclass
class Task:
    """What a method sees of one task: never earlier tasks' training data, never test data.

    ``train_loader`` yields ``(images, labels)`` with train transforms, shuffled; ``train_eval_loader``
    yields the same images with test transforms, in a fixed order (for prototypes and statistics).
    Labels are global class ids of the stream; this task holds ``classes`` = ``[known_classes, seen_classes)``.
    """

    index: int
    classes: list[int]
    known_classes: int
    seen_classes: int
    num_tasks: int
    train_loader: DataLoader
    train_eval_loader: DataLoader
    monitor: TrainingMonitor = field(default_factory=SilentMonitor)
    precision: str = "fp32"
    """Autocast precision of the task's training (``fp32``, ``bf16``, ``fp16``); applied by :meth:`Method.learn`."""

    @property
    def num_classes(self) -> int:
        """Number of classes in this task."""
        return len(self.classes)


@dataclass
class ParameterReport:
    """Parameter counts of a method as it stands after its last learned task.

    - ``trainable_task``: parameters that can receive non-zero gradient in the last task, backbone side
      (adapters, prompts, block weights ...), without a throw-away training head;
    - ``head``: the classifier parameters trained in the last task (reported separately);
    - ``trainable_total``: every tensor with ``requires_grad`` in the last task, counted whole (the official
      ``count_parameters``; e.g. L2P's full C_total-row head);
    - ``stored``: method-specific tensors kept across tasks for inference (adapters, prototypes, memories);
    - ``backbone``: the headless backbone size, the denominator of every percentage.
    """

    backbone: int
    trainable_task: int
    head: int
    trainable_total: int
    stored: int
    notes: str = ""

    def percent(self, count: int) -> float:
        """``count`` as % of the backbone size."""
        return 100.0 * count / self.backbone if self.backbone else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Counts and percentages, JSON-friendly."""
        data = dataclasses.asdict(self)
        for key in ("trainable_task", "head", "trainable_total", "stored"):
            data[f"{key}_pct"] = round(self.percent(getattr(self, key)), 4)
        return data


def count_parameters(tensors: Iterable[torch.Tensor]) -> int:
    """Total number of elements, each distinct tensor counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel()
    return total


def backbone_size(backbone: nn.Module) -> int:
    """Parameters of the headless backbone (ViT-B/16: 85,798,656)."""
    return count_parameters(backbone.parameters())


class Method(nn.Module, metaclass=ABCMeta):
    """Base class of every continual learner.

    Subclasses set ``config_class`` (a :class:`MethodConfig` dataclass) and ``default_cfgs`` (hyper-parameter
    defaults per benchmark family: ``cifar100``, ``imr``, ``ima``, ``vtab``, ``cub``, ``objnet``, ``omni``,
    ``domainnet``, ``digits``; the key ``default`` applies to families without an entry; every entry names its
    ``defaults_source``), implement :meth:`train_task` and :meth:`predict`, and register with
    :func:`benchmark.registry.register_method`.
    """

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    default_cfgs: ClassVar[dict[str, dict[str, Any]]] = {}
    default_backbones: ClassVar[dict[str, str]] = {}
    """Backbone (timm name with tag, or a registered backbone) per benchmark family, when not given."""
    transform_profile: ClassVar[str] = "default"
    trains_backbone: ClassVar[bool] = False
    """True only for methods that update pretrained backbone tensors (e.g. sequential fine-tuning)."""
    predict_variants: ClassVar[dict[str, dict[str, Any]]] = {}
    """Other ways to compute the same logits, as keyword arguments of :meth:`predict` (e.g. the official code's
    one full pass per task adapter); ``bench speed`` times each against the default path and checks the logits."""
    registry_name: ClassVar[str] = ""
    global_rng_tensors: ClassVar[frozenset[str]] = frozenset()
    """State keys whose initial values come from the global RNG (which the runner seeds with the run seed before
    building the method); every other initial tensor must come from :meth:`make_generator`."""

    def __init__(self, backbone: nn.Module, hparams: MethodConfig, *, num_classes: int, num_tasks: int,
                 device: torch.device | str = "cpu", seed: int = 1993) -> None:
        """``num_classes``/``num_tasks``: of the whole stream (e.g. 200 and 40 on ``imr_t40``).

        The backbone is moved to ``device``; subclasses build their modules and call ``self.to(self.device)``.
        """
        super().__init__()
        self.backbone = backbone.to(device)
        self.pretrained_weights = PretrainedWeights(self.backbone)
        """Digests of the pretrained tensors as built: checkpoints leave those out (``benchmark/checkpoints.py``)."""
        self.hparams = hparams
        self.num_classes = num_classes
        self.num_tasks = num_tasks
        self.device = torch.device(device)
        self.seed = seed
        self.task_sizes: list[int] = []
        self.frozen_work: FrozenWork | None = None
        """Set by the harness during evaluation only (its cache of frozen computations); see :meth:`frozen`."""

    @classmethod
    def requested_class_order(cls, hparams: MethodConfig) -> str:
        """The class order this method asks the stream for (the runner reads it when it builds the stream):
        ``protocol``, the benchmark's own rule (``data_protocol.md`` §4), or ``identity`` (e.g. CODA-P's default).
        The order used is recorded in the run's config."""
        return "protocol"

    @classmethod
    def family_defaults(cls, family: str) -> dict[str, Any]:
        """Hyper-parameter defaults for a benchmark family (``default`` when the family has none)."""
        return dict(cls.default_cfgs.get(family, cls.default_cfgs.get("default", {})))

    # -- the interface the runner calls -------------------------------------------------------------
    def learn(self, task: Task) -> None:
        """Train on ``task`` (runner entry point): calls :meth:`train_task` under the task's precision (autocast,
        fp16 loss scaling: ``benchmark/precision.py``), then records the task size."""
        with training_precision(task.precision, self.device):
            self.train_task(task)
        self.task_sizes.append(task.num_classes)

    @abstractmethod
    def train_task(self, task: Task) -> None:
        """Learn one task from its training data."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (or scores) over all classes seen so far, shape (B, seen_classes), global class ids."""

    @abstractmethod
    def parameter_report(self) -> ParameterReport:
        """Parameter counts after the last learned task (see :class:`ParameterReport`)."""

    # -- frozen per-image work (served from the harness's evaluation cache) --------------------------
    def frozen(self, name: str, since: int, images: torch.Tensor,
               compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``compute(images)`` (B, ...), a per-image computation that no longer changes once ``since`` tasks are
        learned (0: never changes, e.g. a pass of the frozen pretrained ViT). During evaluation the harness keeps
        and serves such values instead of recomputing them; elsewhere this is ``compute(images)``."""
        return self.frozen_stack([name], [since], images, lambda subset, _: compute(subset).unsqueeze(0))[0]

    def frozen_stack(self, names: Sequence[str], since: Sequence[int], images: torch.Tensor,
                     compute: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> torch.Tensor:
        """(S, B, ...) for several frozen computations at once; ``compute(images, indices)`` returns those of
        ``names[i]`` for i in ``indices``, stacked (it runs with every index unless some values are kept)."""
        if self.frozen_work is None:
            return compute(images, list(range(len(names))))
        return self.frozen_work(names, since, images, compute)

    # -- state -------------------------------------------------------------------------------------
    @property
    def seen_classes(self) -> int:
        """Number of classes learned so far."""
        return sum(self.task_sizes)

    @property
    def known_classes(self) -> int:
        """Number of classes learned before the last task."""
        return sum(self.task_sizes[:-1])

    @property
    def eval_batch_size(self) -> int:
        """Batch size of the test loader (the train batch size unless configured)."""
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def restore_structure(self, task_sizes: list[int]) -> None:
        """Grow modules/buffers to the shape they have after learning tasks of ``task_sizes`` classes.

        Called on a fresh method before its tensors are loaded, and by ``bench params``. Methods whose
        structure does not change over tasks keep this default.
        """

    def get_extra_state(self) -> dict[str, Any]:
        return {"task_sizes": list(self.task_sizes)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Runs before child modules are loaded (torch loads a module, then its children), so the
        # structure rebuilt here receives the saved tensors.
        if state["task_sizes"] != self.task_sizes:
            self.restore_structure(list(state["task_sizes"]))
        self.task_sizes = list(state["task_sizes"])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (what an optimiser of this task gets)."""
        return [p for p in self.parameters() if p.requires_grad]

    def freeze_backbone(self) -> None:
        """Set ``requires_grad=False`` on every pretrained backbone tensor."""
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)

    def make_generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed (for initialisations that must not touch global RNG)."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1000 + offset)
        return generator
