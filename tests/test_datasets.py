"""Raw dataset loading and validation on fabricated trees in the real layouts, the digits data, transforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data.datasets.cifar100 import CIFAR100
from benchmark.data.datasets.digits import DIGITS, stratified_train_mask
from benchmark.data.datasets.folders import IMAGENET_A, IMAGENET_R, VTAB
from benchmark.errors import ClbenchError, DataError
from benchmark.data.transforms import digits_transforms, pilot_transforms, resize_side
from fabricate import cifar_pixels, corrupt_file, wnid_names, write_cifar100, write_dataset, write_image_folders


# -- CIFAR-100 ---------------------------------------------------------------------------------------------
def test_cifar100_pickles_are_read_in_torchvision_layout(tmp_path):
    write_cifar100(tmp_path, train_per_class=2, test_per_class=1)
    raw = CIFAR100.load(tmp_path)
    assert raw.train.images.shape == (200, 32, 32, 3) and raw.test.images.shape == (100, 32, 32, 3)
    assert raw.class_names[7] == "class_007"
    position = 13
    label = int(raw.train.targets[position])
    assert np.array_equal(np.asarray(raw.train.load(position)), cifar_pixels(position, label))
    assert np.bincount(raw.train.targets).tolist() == [2] * 100


def test_cifar100_md5_mismatch_is_a_recorded_warning(tmp_path):
    write_cifar100(tmp_path)
    raw = CIFAR100.load(tmp_path)
    assert set(raw.checksums) == {"train", "test", "meta"}
    assert not raw.checksums["train"]["ok"]
    assert raw.checksums["train"]["expected"] == "16019d7e3df5f24257cddd939b257f8d"
    assert sum("MD5" in warning for warning in raw.warnings) == 3
    assert any("50000" in warning for warning in raw.warnings)  # count vs reference: warning only


def test_cifar100_missing_tree_names_archive(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python.tar.gz") as error:
        CIFAR100.load(tmp_path)
    assert str(tmp_path / "cifar-100-python" / "train") in str(error.value)


def test_cifar100_garbage_pickle_is_data_error(tmp_path):
    write_cifar100(tmp_path)
    corrupt_file(tmp_path / "cifar-100-python" / "test")
    with pytest.raises(DataError, match=r"test is not a CIFAR-100 python pickle"):
        CIFAR100.load(tmp_path)


def test_cifar100_missing_class_is_data_error(tmp_path):
    write_cifar100(tmp_path, num_classes=99)
    with pytest.raises(DataError, match=r"classes"):
        CIFAR100.load(tmp_path)


# -- image folders -----------------------------------------------------------------------------------------
def test_vtab_folders_sort_as_strings(tmp_path):
    write_dataset(tmp_path, "vtab")
    raw = VTAB.load(tmp_path)
    assert raw.class_names[:4] == ["0", "1", "10", "11"]
    assert raw.class_names.index("9") == 49
    assert raw.test.paths[2].endswith("/test/10/img_0.jpg") and raw.test.targets[2] == 2


def test_folder_files_sorted_with_image_extensions_only(tmp_path):
    names = wnid_names(200)
    write_image_folders(tmp_path, "imagenet-r", names, train_per_class=2)
    first = tmp_path / "imagenet-r" / "train" / sorted(names)[0]
    (first / "notes.txt").write_text("not an image")
    Image.new("RGB", (4, 4)).save(first / "A_upper.JPG")
    (first / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(first / "sub" / "0.png")
    raw = IMAGENET_R.load(tmp_path)
    files = [path for path, label in zip(raw.train.paths, raw.train.targets) if label == 0]
    assert [path.split("/imagenet-r/train/")[1].split("/", 1)[1] for path in files] == [
        "A_upper.JPG", "img_0.jpg", "img_1.jpg", "sub/0.png"]
    assert len(raw.train) == 402


def test_folder_missing_tree_names_expected_tree_and_zip(tmp_path):
    with pytest.raises(DataError) as error:
        IMAGENET_R.load(tmp_path)
    message = str(error.value)
    assert f"{tmp_path}/imagenet-r/train/<wnid>/*.jpg" in message and "imagenet-r.zip" in message
    assert "730aa3fb9c7d2ec0b6381c6b23040681" in message


def test_folder_empty_class_is_data_error(tmp_path):
    names = wnid_names(200)
    write_image_folders(tmp_path, "imagenet-a", names)
    for path in (tmp_path / "imagenet-a" / "test" / names[5]).iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"without images: test/{names[5]}"):
        IMAGENET_A.load(tmp_path)


def test_folder_train_test_class_mismatch_is_data_error(tmp_path):
    names = [str(index) for index in range(50)]
    write_image_folders(tmp_path, "vtab", names)
    (tmp_path / "vtab" / "test" / "7").rename(tmp_path / "vtab" / "test" / "seven")
    with pytest.raises(DataError, match=r"only in train/: 7; only in test/: seven"):
        VTAB.load(tmp_path)


def test_folder_wrong_class_count_is_data_error(tmp_path):
    write_image_folders(tmp_path, "vtab", [str(index) for index in range(40)])
    with pytest.raises(DataError, match=r"40 class folders .* expected 50"):
        VTAB.load(tmp_path)


def test_corrupt_image_is_data_error_naming_file(tmp_path):
    write_dataset(tmp_path, "vtab")
    raw = VTAB.load(tmp_path)
    corrupt_file(raw.test.paths[3])
    assert raw.train.load(3).mode == "RGB"
    with pytest.raises(DataError, match=rf"cannot read image {raw.test.paths[3]}"):
        raw.test.load(3)


def test_count_mismatch_is_warning_only(tmp_path):
    write_dataset(tmp_path, "ima", train_per_class=1, test_per_class=1)
    raw = IMAGENET_A.load(tmp_path)
    assert raw.warnings == [
        "ImageNet-A train split has 200 images; the reference release has 5981 (unconfirmed)",
        "ImageNet-A test split has 200 images; the reference release has 1519"]


# -- digits ------------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_and_stratified():
    raw = DIGITS.load(None)
    assert (len(raw.train), len(raw.test)) == (1433, 364) and raw.warnings == []
    assert raw.train.images.shape == (1433, 32, 32, 3) and raw.train.images.dtype == np.uint8
    assert np.bincount(raw.test.targets).tolist() == [36, 37, 36, 37, 37, 37, 37, 36, 35, 36]
    image = raw.train.images[0]
    assert np.array_equal(image[..., 0], image[..., 2]) and image.max() > 200 and image[0, 0, 0] == 0
    targets = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1])
    assert stratified_train_mask(targets).tolist() == [True, True, True, True, True, True, False, True, True,
                                                       False]


# -- transforms --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("profile", ["default", "coda"])
def test_pilot_transform_shapes(size, profile):
    image = Image.new("RGB", (32, 48), (255, 0, 0))
    for coda_test in ("resize_crop", None):
        pair = pilot_transforms(profile, size, "none", coda_test)
        assert pair.train(image).shape == (3, size, size)
        assert pair.test(image).shape == (3, size, size)
        assert pair.profile == (profile if coda_test else "default")
    square = Image.new("RGB", (32, 32), (255, 0, 0))
    assert pilot_transforms(profile, size, "none", "resize").test(square).shape == (3, size, size)


def test_pilot_default_matches_spec_at_224():
    pair = pilot_transforms("default", 224, "none")
    train, test = repr(pair.train), repr(pair.test)
    assert "RandomResizedCrop(size=(224, 224), scale=(0.05, 1.0), ratio=(0.75, 1.3333)" in train
    assert "RandomHorizontalFlip" in train and "Normalize" not in train + test
    assert "Resize(size=256, interpolation=bicubic" in test and "CenterCrop(size=(224, 224))" in test
    assert resize_side(224) == 256 and resize_side(32) == 36


def test_normalize_switch():
    image = Image.new("RGB", (32, 32), (0, 255, 0))
    plain = pilot_transforms("default", 32, "none").test(image)
    half = pilot_transforms("default", 32, "half").test(image)
    assert torch.allclose(half, plain * 2 - 1)
    imagenet = pilot_transforms("default", 32, "imagenet").test(image)
    assert torch.allclose(imagenet[0], torch.full((32, 32), -0.485 / 0.229))


def test_digits_transforms_have_no_flip():
    pair = digits_transforms("coda", 32, "none")
    assert pair.profile == "digits" and "Flip" not in repr(pair.train)
    image = Image.new("RGB", (32, 32))
    assert pair.train(image).shape == (3, 32, 32) and pair.test(image).shape == (3, 32, 32)


def test_unknown_profile_or_normalize():
    with pytest.raises(ClbenchError, match="valid: default, coda"):
        pilot_transforms("fancy", 32, "none")
    with pytest.raises(ClbenchError, match="valid: none, half, imagenet"):
        digits_transforms("default", 32, "cifar")


# -- the shapes that pretrain vit_tiny_shapes, and its weights ----------------------------------------------
def test_shape_drawing_is_seeded_bright_on_dark():
    from benchmark.models.pretrain_shapes import SHAPES, draw_batch

    labels = torch.arange(len(SHAPES)).repeat(2)
    images = draw_batch(labels, torch.Generator().manual_seed(3))
    assert images.shape == (2 * len(SHAPES), 3, 32, 32)
    assert torch.equal(images, draw_batch(labels, torch.Generator().manual_seed(3)))
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    pixels = images.mean(1).flatten(1)
    dark = pixels.quantile(0.1, dim=1)
    assert (dark < 0.3).all() and (pixels.amax(1) > dark + 0.1).all()  # something drawn on a dark ground


def test_vit_tiny_shapes_weights_load():
    from benchmark.models.backbones import build_backbone, tiny_vit

    pretrained = build_backbone("vit_tiny_shapes")
    assert pretrained.state_dict().keys() == tiny_vit().state_dict().keys()
    assert not torch.equal(pretrained.pos_embed, build_backbone("vit_tiny_shapes", pretrained=False).pos_embed)
