"""Preflight: everything a ``bench run`` command needs is checked once, before any run trains or anything is
written; every problem is reported at once, one line each naming the file or option.

Checked for every run the command will execute:
- names, ``--set`` values and options (:func:`resolve_requests` collects every resolution error);
- the device of each run;
- each backbone: a registered one, or a timm model whose pretrained weights are in the Hugging Face cache,
  or the ``--weights`` file (exists, readable, and its tensors fit the model);
- each dataset tree (layout, class folders, pickles) and that every image file of it decodes
  (:func:`benchmark.data.image_check.check_images`, verdicts cached across commands);
- each results dir: writable, and room for the runs' checkpoints;
- each requested experiment tracker (``--log-to``): its package is installed (else the extra to install);
- the stored state of each run that will resume (status, config and its fingerprint, timing, predictions
  against the stored fingerprint, checkpoint against the task count), unless another live process holds the
  run (it will be skipped as ``locked``).

The only thing written is the image-verdict cache (``benchmark/data/image_check.py``), never inside a run folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from benchmark.data.datasets import FileImages
from benchmark.data.image_check import check_images
from benchmark.errors import ClbenchError, DataError, WeightsError
from benchmark.models.backbones import _cached_hub_file
from benchmark.registry import BACKBONES, DATASETS
from benchmark.reporting.trackers import missing_packages
from benchmark.runs.resolve import ResolvedRun, RunRequest, resolve_device, resolve_run
from benchmark.runs.stored import check_stored_run
from benchmark.store.locking import live_holder

# Room kept free per run for predictions, timing and logs, on top of the checkpoints.
PER_RUN_BYTES = 16 * 2**20


class PreflightError(ClbenchError):
    """Problems found before any run started; ``problems`` holds one line per problem."""
    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(dict.fromkeys(problems))  # unique, in order found
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{len(self.problems)} problems found before training (nothing was run or written):"
                             "\n" + "\n".join(f"  {problem}" for problem in self.problems))


# -- resolution ------------------------------------------------------------------------------------------
def resolve_requests(requests: Iterable[RunRequest]) -> list[ResolvedRun]:
    """Resolve every request; all resolution errors (names, ``--set`` values, options) in one
    :class:`PreflightError` (a single problem keeps its own message)."""

    runs, problems = [], []
    for request in requests:
        try:
            runs.append(resolve_run(request))
        except ClbenchError as error:
            problems.append(str(error))
    if problems:
        raise PreflightError(problems)
    return runs


# -- the checks ------------------------------------------------------------------------------------------
def preflight(runs: Sequence[ResolvedRun]) -> None:
    """Check everything the runs need (see the module docstring); raise :class:`PreflightError` listing every
    problem. Writes nothing but the image-verdict cache."""
    problems: list[str] = []
    for device in dict.fromkeys(run.request.device for run in runs):
        problems += _check_device(device)
    checkpoint_bytes: dict[tuple[str, str | None], int] = {}
    for backbone, weights in dict.fromkeys((run.backbone, run.request.weights) for run in runs):
        found, size = check_backbone(backbone, weights)
        problems += found
        checkpoint_bytes[(backbone, weights)] = size
    datasets = dict.fromkeys((run.family, Path(run.request.data_root)) for run in runs)
    for dataset, root in datasets:
        problems += check_dataset(dataset, root)
    for results_dir in dict.fromkeys(Path(run.request.results_dir) for run in runs):
        mine = [run for run in runs if Path(run.request.results_dir) == results_dir]
        needed = max(checkpoint_bytes[(run.backbone, run.request.weights)] for run in mine) * 2 \
            + PER_RUN_BYTES * len(mine)
        problems += check_results_dir(results_dir, needed)
    for settings in dict.fromkeys(run.request.trackers for run in runs):
        problems += missing_packages(settings)
    for run in runs:
        problems += check_stored_state(run)
    if problems:
        raise PreflightError(problems)


def _check_device(device: str | None) -> list[str]:
    try:
        resolve_device(device)
    except ClbenchError as error:
        return [str(error)]
    return []


def check_backbone(name: str, weights: str | Path | None) -> tuple[list[str], int]:
    """Problems with a backbone and its weights, and an estimate of a checkpoint's size in bytes (the
    backbone's float32 parameters: an upper bound for what a method stores)."""
    import timm
    import torch


    try:
        with torch.device("meta"):  # shapes only: no memory, no weights
            if name in BACKBONES:
                model = BACKBONES.get(name)(pretrained=False)
            elif timm.is_model(name.split(".")[0]):
                model = timm.create_model(name, pretrained=False, num_classes=0)
            else:
                return [f"--backbone {name}: unknown backbone, neither registered "
                        f"({', '.join(BACKBONES.names())}) nor a timm model"], 0
    except Exception as error:  # a timm name with a tag it does not know, ...
        return [f"--backbone {name}: cannot be built ({error})"], 0
    size = 4 * sum(parameter.numel() for parameter in model.parameters())
    if weights is not None:
        return _check_weights_file(Path(weights), model), size
    if name in BACKBONES:
        try:
            BACKBONES.get(name)(pretrained=True)  # registered backbones are small; their loader checks files
        except WeightsError as error:
            return [f"--backbone {name}: {error}"], size
        return [], size
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not hub_id:
        return [f"--backbone {name}: timm has no pretrained weights for it; pass a file with --weights"], size
    if _cached_hub_file(hub_id) is None:
        from huggingface_hub.constants import HF_HUB_CACHE

        return [f"--backbone {name}: pretrained weights ({hub_id}) are not in the Hugging Face cache "
                f"{HF_HUB_CACHE}; download them (`huggingface-cli download {hub_id}`) or pass --weights FILE"], size
    return [], size


def _check_weights_file(path: Path, model) -> list[str]:
    """The file exists, reads as a state dict, and its tensors (classifier heads aside) fit ``model``."""
    import torch

    if not path.is_file():
        return [f"--weights {path}: file not found"]
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            shapes = {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}
    except Exception as error:  # corrupt, truncated or foreign file
        return [f"--weights {path}: cannot be read as a state dict ({type(error).__name__}: {error})"]
    shapes = {key: shape for key, shape in shapes.items() if not key.startswith(("head.", "fc."))}
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(key for key in set(shapes) & set(expected) if shapes[key] != expected[key])
    if missing or unexpected or wrong:
        return [f"--weights {path}: does not fit the backbone (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}, other shape {wrong[:3]})"]
    return []


def check_dataset(dataset: str, root: Path) -> list[str]:
    """Problems with a dataset tree under ``root``: layout, pickles, and every image file decodes."""
    spec = DATASETS.get(dataset)
    try:
        raw = spec.load(root)
    except DataError as error:
        return [str(error)]
    paths = [path for source in (raw.train, raw.test) if isinstance(source, FileImages) for path in source.paths]
    if not paths:
        return []
    bad = check_images(paths, Path(root) / spec.folder)
    return [f"{path}: not a readable image ({reason}); replace or remove the file"
            for path, reason in sorted(bad.items())]


# -- results dir and stored state ------------------------------------------------------------------------
def check_results_dir(results_dir: Path, needed_bytes: int) -> list[str]:
    """The results dir (or its nearest existing parent) is a writable directory with ``needed_bytes`` free."""
    existing = Path(results_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"--results-dir {results_dir}: {existing} is not a directory"]
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        return [f"--results-dir {results_dir}: {existing} is not writable"
                + (" (read-only filesystem)" if read_only else "")]
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        return [f"--results-dir {results_dir}: {free / 2**20:.1f} MiB free, the runs' checkpoints need about "
                f"{needed_bytes / 2**20:.1f} MiB"]
    return []


def check_stored_state(run: ResolvedRun) -> list[str]:
    """Problems with what a run has stored (nothing to check for a new run or with ``--fresh``, nor for a run
    another live process holds: it is being written, and this command will skip it)."""

    if run.request.fresh or live_holder(run.store.path) is not None:
        return []
    try:
        check_stored_run(run)
    except ClbenchError as error:
        return [str(error)]
    return []
