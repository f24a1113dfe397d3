"""CUDA correctness (runs only where CUDA is available; skipped otherwise, with the reason shown by ``pytest -rs``).

Every registered method trains two tasks of a tiny ViT on CUDA with the same seed and data order as on the CPU;
test predictions agree on at least 99 % of the images and the accuracies within 2 points. CL-LoRA's batched task
adapters on CUDA give the per-task passes' logits, and a bf16 run trains every method on CUDA to finite logits.
TF32 is switched off for the comparisons (cuDNN enables it for convolutions by default; ``--precision`` is how
this harness lowers precision).
"""
import pytest
import torch
from torch.utils.data import DataLoader

from benchmark.registry import METHODS
from benchmark.runs.speed import randomise_added
from conftest import make_tasks, make_tiny_vit
from test_methods_generic import build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA is not available on this machine: the CUDA tests wait for a GPU")

NUM_TASKS, CLASSES_PER_TASK = 2, 2


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _build_on(name: str, device: str):
    """The generic tests' tiny method (fast digits settings, seed 1993), constructed on ``device`` as the runner
    does (modules built on the CPU from the same RNG draws, then moved)."""
    hparams = build(name).hparams
    return METHODS.get(name)(make_tiny_vit(0), hparams, num_classes=NUM_TASKS * CLASSES_PER_TASK,
                             num_tasks=NUM_TASKS, device=device, seed=1993)


def _train_and_predict_on(name: str, device: str, precision: str = "fp32"):
    torch.manual_seed(0)
    method = _build_on(name, device)
    tasks, tests = make_tasks(NUM_TASKS, CLASSES_PER_TASK, per_class=8, batch_size=8)
    for index, task in enumerate(tasks):
        torch.manual_seed(1993 * 1000 + index)
        task.precision = precision
        method.train()
        method.learn(task)
    method.eval()
    predictions, labels = [], []
    with torch.inference_mode():
        for dataset in tests:
            for images, targets in DataLoader(dataset, batch_size=16):
                predictions.append(method.predict(images.to(device)).float().argmax(1).cpu())
                labels.append(targets)
    return torch.cat(predictions), torch.cat(labels)


@pytest.mark.parametrize("name", METHODS.names())
def test_cuda_training_matches_cpu(name):
    cpu, labels = _train_and_predict_on(name, "cpu")
    cuda, _ = _train_and_predict_on(name, "cuda")
    assert (cpu == cuda).float().mean() >= 0.99
    accuracy = lambda p: 100.0 * (p == labels).float().mean()  # noqa: E731
    assert abs(accuracy(cpu) - accuracy(cuda)) <= 2.0


@pytest.mark.parametrize("name", METHODS.names())
def test_bf16_trains_every_method_on_cuda(name):
    predictions, labels = _train_and_predict_on(name, "cuda", "bf16")
    assert predictions.shape == labels.shape
    assert 0 <= int(predictions.min()) and int(predictions.max()) < NUM_TASKS * CLASSES_PER_TASK


@pytest.mark.parametrize("max_branch_batch", [None, 0, 8])
def test_cl_lora_batched_task_adapters_on_cuda_equal_per_task_passes(max_branch_batch):
    method = _build_on("cl_lora", "cuda")
    method.hparams.max_branch_batch = max_branch_batch
    method.restore_structure([2] * 5)
    randomise_added(method, torch.Generator().manual_seed(0))
    method.eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.inference_mode():
        batched = method.predict(images)
        per_task = method.predict(images, shared_trunk=False)
    assert batched.device.type == "cuda"
    assert torch.allclose(batched, per_task, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched.argmax(1), per_task.argmax(1))
