"""Preflight through the CLI: every problem of a `bench run` command at once, one line each naming the file or
option, exit 2, nothing written (the results dir is not even created); and the image-verdict cache."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main


def bench(*args) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture(autouse=True)
def image_cache(tmp_path, monkeypatch):
    """Image verdicts go to a per-test cache dir, and the Hugging Face cache is an empty one."""
    import huggingface_hub.constants

    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "cache"


def problem_lines(error: str) -> list[str]:
    lines = error.strip().splitlines()
    assert lines[0].startswith("bench: error:") and "Traceback" not in error
    return [line.strip() for line in lines[1:]]


def test_every_problem_at_once_and_weights_do_not_hide_data(tmp_path, capsys):
    results = tmp_path / "results"
    code = bench("run", "--methods", "simplecil,finetune", "--bench", "imr_t10,cifar100_t10", "--seeds", "1,2",
                 "--data-root", tmp_path / "nodata", "--results-dir", results, "--quiet")
    assert code == 2
    lines = problem_lines(capsys.readouterr().err)
    # 2 methods x 2 benchmarks x 2 seeds = 8 runs, but each problem once: two default backbones, two trees.
    assert len(lines) == 4
    assert any(line.startswith("--backbone vit_base_patch16_224.augreg_in21k_ft_in1k: pretrained weights")
               for line in lines)
    assert any(line.startswith("--backbone vit_base_patch16_224.augreg_in21k: pretrained weights") for line in lines)
    assert any(line.startswith("ImageNet-R: not found") and "imagenet-r/train" in line for line in lines)
    assert any(line.startswith("CIFAR-100: not found") and "cifar-100-python/train" in line for line in lines)
    assert not results.exists()


def test_weights_file_backbone_device_and_tree(tmp_path, capsys):
    results = tmp_path / "results"
    code = bench("run", "--methods", "simplecil", "--bench", "vtab_t5", "--backbone", "vit_tiny_random",
                 "--weights", tmp_path / "missing.pth", "--device", "bogus", "--data-root", tmp_path,
                 "--results-dir", results)
    assert code == 2
    lines = problem_lines(capsys.readouterr().err)
    assert lines[0] == "unknown device 'bogus' (auto, cpu, cuda, cuda:N)"
    assert lines[1] == f"--weights {tmp_path / 'missing.pth'}: file not found"
    assert lines[2].startswith("VTAB: not found")
    assert len(lines) == 3 and not results.exists()


def test_weights_file_that_does_not_fit_and_unknown_backbone(tmp_path, capsys):
    import torch

    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, foreign)
    assert bench("run", "--methods", "simplecil", "--backbone", "vit_tiny_random", "--weights", foreign,
                 "--results-dir", tmp_path / "results") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"bench: error: --weights {foreign}: does not fit the backbone")
    assert "unexpected ['conv.weight']" in error
    assert bench("run", "--methods", "simplecil", "--backbone", "vit_nope", "--results-dir", tmp_path) == 2
    assert "--backbone vit_nope: unknown backbone" in capsys.readouterr().err


def test_truncated_cifar_pickle(tmp_path, capsys):
    from fabricate import write_cifar100

    write_cifar100(tmp_path / "data", train_per_class=1, test_per_class=1)
    train = tmp_path / "data" / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    assert bench("run", "--methods", "simplecil", "--bench", "cifar100_t10", "--backbone", "vit_tiny_random",
                 "--data-root", tmp_path / "data", "--results-dir", tmp_path / "results") == 2
    error = capsys.readouterr().err
    assert f"{train} is not a CIFAR-100 python pickle" in error and "Traceback" not in error
    assert not (tmp_path / "results").exists()


def noisy_jpeg(path, size=64, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path.read_bytes()


def test_broken_images_are_all_named_before_training(tmp_path, image_cache, capsys):
    from fabricate import corrupt_file, write_dataset

    write_dataset(tmp_path / "data", "vtab", train_per_class=2, test_per_class=1)
    tree = tmp_path / "data" / "vtab"
    corrupt = corrupt_file(tree / "train" / "3" / "img_0.jpg")
    empty = tree / "test" / "17" / "img_0.jpg"
    empty.write_bytes(b"")
    truncated = tree / "train" / "42" / "img_1.jpg"
    data = noisy_jpeg(truncated)
    truncated.write_bytes(data[: len(data) * 2 // 3])
    code = bench("run", "--methods", "simplecil", "--bench", "vtab_t5", "--backbone", "vit_tiny_random",
                 "--data-root", tmp_path / "data", "--results-dir", tmp_path / "results", "--quiet")
    assert code == 2
    lines = problem_lines(capsys.readouterr().err)
    assert [line.split(": not a readable image")[0] for line in lines] == sorted(
        [str(corrupt), str(empty), str(truncated)])
    assert "truncated" in lines[[str(truncated) in line for line in lines].index(True)]
    assert not (tmp_path / "results").exists()
    # The verdicts are cached outside any run folder.
    assert len(list(image_cache.glob("images-*.json"))) == 1


def test_header_check_misses_a_truncated_jpeg_that_decode_finds(tmp_path):
    from benchmark.data.image_check import decode_image

    path = tmp_path / "cut.jpg"
    data = noisy_jpeg(path, size=128)
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:
        image.verify()  # the header check passes ...
    assert "truncated" in decode_image(str(path))  # ... the 1/8-scale decode does not
    assert decode_image(str(tmp_path / "missing.jpg")).startswith("FileNotFoundError")


def test_verdict_cache_is_keyed_by_path_size_and_mtime(tmp_path, monkeypatch):
    import os

    import benchmark.data.image_check as preflight

    paths = [tmp_path / f"img_{index}.jpg" for index in range(3)]
    for index, path in enumerate(paths):
        noisy_jpeg(path, size=16, seed=index)
    names = [str(path) for path in paths]
    assert preflight.check_images(names, tmp_path) == {}
    decoded = []
    monkeypatch.setattr(preflight, "decode_image", lambda path: decoded.append(path) or None)
    assert preflight.check_images(names, tmp_path) == {} and decoded == []  # all three from the cache
    os.utime(paths[1], ns=(1, 1))  # another mtime: checked again
    paths[2].write_bytes(paths[2].read_bytes() + b"\0")  # another size: checked again
    preflight.check_images(names, tmp_path)
    assert decoded == [names[1], names[2]]
    monkeypatch.undo()
    paths[0].write_bytes(b"")
    os.utime(paths[0], ns=(5, 5))
    assert list(preflight.check_images(names, tmp_path)) == [names[0]]


def test_changed_config_is_reported_in_preflight(tmp_path, capsys):
    run_dir = tmp_path / "digits_t5" / "simplecil" / "seed1993"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"bench": "digits_t5", "method": "simplecil", "seed": 1993, '
                                         '"backbone": "vit_tiny_random", "weights": null, "hparams": {}}')
    assert bench("run", "--methods", "simplecil", "--results-dir", tmp_path, "--quiet") == 2
    error = capsys.readouterr().err
    assert f"{run_dir} holds a run with a different config (backbone, hparams)" in error
    assert sorted(path.name for path in run_dir.iterdir()) == ["config.json"]


def test_pickled_cifar_garbage_type(tmp_path, capsys):
    from fabricate import write_cifar100

    write_cifar100(tmp_path / "data", train_per_class=1, test_per_class=1)
    meta = tmp_path / "data" / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps([1, 2, 3]))
    assert bench("run", "--methods", "simplecil", "--bench", "cifar100_t10", "--backbone", "vit_tiny_random",
                 "--data-root", tmp_path / "data", "--results-dir", tmp_path / "results") == 2
    assert f"{meta} is not a CIFAR-100 python pickle" in capsys.readouterr().err
