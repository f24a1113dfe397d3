"""Lean checkpoints: no frozen pretrained tensor is stored (whatever its key after wrapping), everything else is, a
restore gives identical predictions, and other pretrained weights are refused."""
import pytest
import torch

from benchmark.checkpoints import checkpoint_state, restore_checkpoint, tensor_digest
from benchmark.errors import ClbenchError
from benchmark.registry import METHODS
from conftest import make_tasks, make_tiny_vit
from test_methods_generic import build


def _trained(name: str):
    method = build(name)
    tasks, _ = make_tasks(2, 2, per_class=4, batch_size=8)
    for task in tasks:
        method.learn(task)
    return method.eval()


@pytest.mark.parametrize("name", METHODS.names())
def test_lean_checkpoint_drops_exactly_the_unchanged_pretrained_tensors(name):
    method = _trained(name)
    checkpoint = checkpoint_state(method)
    pretrained = {tensor_digest(value) for value in make_tiny_vit(0).state_dict().values()}
    state = method.state_dict()
    if method.trains_backbone:
        assert checkpoint["pretrained_refs"] == {}
        assert set(checkpoint["method_state"]) == set(state)
    else:
        # every backbone tensor of the pretrained ViT is referenced, none is stored
        assert len(checkpoint["pretrained_refs"]) >= len(pretrained)
        assert not any(tensor_digest(value) in pretrained for value in checkpoint["method_state"].values()
                       if torch.is_tensor(value))
        for key, source in checkpoint["pretrained_refs"].items():
            assert torch.equal(state[key], make_tiny_vit(0).state_dict()[source])
    restored = build(name)
    restore_checkpoint(restored, checkpoint)
    restored.eval()
    probe = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(restored.predict(probe), method.predict(probe))


def test_wrapped_keys_reference_their_pretrained_names_and_changed_tensors_are_kept():
    method = _trained("cl_lora")
    refs = checkpoint_state(method)["pretrained_refs"]
    assert refs["backbone.blocks.0.attn.qkv.qkv.weight"] == "blocks.0.attn.qkv.weight"
    assert refs["backbone.cls_token"] == "cls_token"
    with torch.no_grad():
        method.backbone.blocks[1].mlp.fc1.weight.add_(1.0)  # e.g. an adapter merged into a pretrained weight
    checkpoint = checkpoint_state(method)
    assert "backbone.blocks.1.mlp.fc1.weight" in checkpoint["method_state"]
    assert "backbone.blocks.1.mlp.fc1.weight" not in checkpoint["pretrained_refs"]


def test_other_pretrained_weights_are_refused():
    checkpoint = checkpoint_state(_trained("simplecil"))
    other = METHODS.get("simplecil")(make_tiny_vit(seed=5), build("simplecil").hparams, num_classes=4, num_tasks=2)
    with pytest.raises(ClbenchError, match="other pretrained weights"):
        restore_checkpoint(other, checkpoint)


def test_run_checkpoint_on_disk_is_lean(tmp_path):
    from benchmark.cli import main
    from benchmark.store.results import RunStore

    assert main(["run", "--methods", "cl_lora", "--max-tasks", "1", "--results-dir", str(tmp_path), "--quiet"]) == 0
    store = RunStore(tmp_path, "digits_t5", "cl_lora", 1993)
    checkpoint = store.load_checkpoint()
    assert checkpoint["tasks_done"] == 1 and checkpoint["pretrained_fingerprint"]
    backbone_bytes = sum(v.numel() * v.element_size() for v in make_tiny_vit(0).state_dict().values())
    assert store.checkpoint_path.stat().st_size < 0.25 * backbone_bytes
