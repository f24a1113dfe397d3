"""`bench data check|prepare` on fabricated downloads in the real formats, and datasets declared in TOML files:
listing, streams, end-to-end run, and one-line errors that write nothing."""
from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.data.datasets.declared import declare, forget_declared
from benchmark.data.datasets.domainnet import DOMAINNET
from benchmark.data.datasets.folders import CUB
from benchmark.data.prepare import MARKER
from benchmark.registry import DATASETS
from fabricate import cub_names, write_cub_release, write_domainnet_release, write_image_folders


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Image verdicts cached under the test's folder; datasets declared by a test are forgotten after it."""
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    yield
    forget_declared()


def bench(*args) -> int:
    return main([str(arg) for arg in args])


def tree_state(folder) -> dict:
    """Every file under ``folder`` with its size and mtime (what a second prepare must leave unchanged)."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


# -- prepare ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("archive", [True, False], ids=["tgz", "extracted"])
def test_prepare_builds_the_official_cub_split_once(archive, tmp_path, capsys):
    source = write_cub_release(tmp_path / "download", archive=archive)
    root = tmp_path / "data"
    assert bench("data", "prepare", "--dataset", "cub", "--from", source, "--data-root", root, "--quiet") == 0
    output = capsys.readouterr().out.splitlines()
    assert output[-1] == f"prepared {root / 'cub'}: 600 files from {source.name}"
    # the fabricated archive is not the published one: its MD5 differs, which is a warning only
    assert (output[0].startswith(f"warning: {source} has MD5 ") and "97eceeb196236b17998738112f37df78" in output[0]
            ) == archive
    name = cub_names()[3]
    # image ids run class by class, three per class; the first two of each class are flagged train
    assert sorted(p.name for p in (root / "cub" / "train" / name).iterdir()) == ["bird_003_0010.jpg",
                                                                                 "bird_003_0011.jpg"]
    assert [p.name for p in (root / "cub" / "test" / name).iterdir()] == ["bird_003_0012.jpg"]
    raw = CUB.load(root)
    assert (len(raw.train), len(raw.test)) == (400, 200) and raw.class_names[:2] == cub_names(2)
    before = tree_state(root)
    assert bench("data", "prepare", "--dataset", "cub", "--from", source, "--data-root", root, "--quiet") == 0
    output = capsys.readouterr().out
    assert "is already prepared from" in output and output.strip().endswith("nothing to do")
    assert tree_state(root) == before


def test_prepare_builds_domainnet_from_zips_and_lists_once(tmp_path, capsys):
    source = write_domainnet_release(tmp_path / "download")
    root = tmp_path / "data"
    assert bench("data", "prepare", "--dataset", "domainnet", "--from", source, "--data-root", root, "--quiet") == 0
    raw = DOMAINNET.load(root)
    assert (len(raw.train), len(raw.test)) == (690, 345)
    assert (root / "domainnet" / "quickdraw_train.txt").read_text() == (source / "quickdraw_train.txt").read_text()
    before = tree_state(root)
    capsys.readouterr()
    assert bench("data", "prepare", "--dataset", "domainnet", "--from", source, "--data-root", root) == 0
    assert "already prepared from download; nothing to do" in capsys.readouterr().out
    assert tree_state(root) == before


def test_partial_cub_archive_is_one_error_and_leaves_nothing(tmp_path, capsys):
    source = write_cub_release(tmp_path / "download", archive=False)
    victim = sorted((source / "images" / cub_names()[9]).iterdir())[0]
    victim.unlink()
    partial = tmp_path / "partial.tgz"
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(source, arcname="CUB_200_2011")
    root = tmp_path / "data"
    root.mkdir()
    assert bench("data", "prepare", "--dataset", "cub", "--from", partial, "--data-root", root, "--quiet") == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("bench: error: ")
    assert "incomplete, 1 of 600 listed files are missing" in error and victim.name in error
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "CUB_200_2011" / "train_test_split.txt").unlink(), "no CUB_200_2011/train_test_split.txt"),
    (lambda d: (d / "CUB_200_2011" / "images.txt").unlink(), "no images.txt; expected the CUB-200-2011 release"),
    (lambda d: (d / "CUB_200_2011" / "images.txt").write_text("1 a/b.jpg\n2\n"), "images.txt line 2"),
])
def test_wrong_cub_download_is_one_error(damage, message, tmp_path, capsys):
    write_cub_release(tmp_path / "download", archive=False)
    damage(tmp_path / "download")
    code = bench("data", "prepare", "--dataset", "cub", "--from", tmp_path / "download", "--data-root",
                 tmp_path / "data", "--quiet")
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1
    assert not (tmp_path / "data").exists()


def test_missing_domainnet_zip_is_named(tmp_path, capsys):
    source = write_domainnet_release(tmp_path / "download")
    (source / "real.zip").unlink()
    (source / "sketch_test.txt").unlink()
    assert bench("data", "prepare", "--dataset", "domainnet", "--from", source, "--data-root", tmp_path / "d") == 2
    assert "missing real.zip, sketch_test.txt" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_prepare_refuses_a_tree_it_did_not_build(tmp_path, capsys):
    source = write_cub_release(tmp_path / "download")
    (tmp_path / "data" / "cub").mkdir(parents=True)
    assert bench("data", "prepare", "--dataset", "cub", "--from", source, "--data-root", tmp_path / "data") == 2
    assert "exists and was not built by bench data prepare" in capsys.readouterr().err
    assert not (tmp_path / "data" / "cub" / MARKER).exists()


def test_prepare_knows_only_assembled_datasets(tmp_path, capsys):
    assert bench("data", "prepare", "--dataset", "imr", "--from", tmp_path, "--data-root", tmp_path) == 2
    assert "knows how to assemble cub, domainnet, not 'imr'" in capsys.readouterr().err


# -- check -----------------------------------------------------------------------------------------------
def test_check_says_what_is_missing_then_ready(tmp_path, capsys):
    root = tmp_path / "data"
    assert bench("data", "check", "--dataset", "cub", "--data-root", root) == 1
    report = capsys.readouterr().out
    assert f"folder {root / 'cub'}: MISSING" in report and "ready: no" in report
    assert "bench data prepare --dataset cub --from CUB_200_2011.tgz" in report
    bench("data", "prepare", "--dataset", "cub", "--from", write_cub_release(tmp_path / "dl"), "--data-root", root,
          "--quiet")
    capsys.readouterr()
    assert bench("data", "check", "--dataset", "cub", "--data-root", root) == 0
    report = capsys.readouterr().out.splitlines()
    assert "classes: 200 of 200" in report
    assert "train: 400 images, reference 9430 (unconfirmed): DIFFERS" in report
    assert report[-1] == "ready: yes (with warnings above)"


def test_check_reports_cifar_checksums(tmp_path, capsys):
    from fabricate import write_cifar100

    write_cifar100(tmp_path)
    assert bench("data", "check", "--dataset", "cifar100", "--data-root", tmp_path) == 0
    report = capsys.readouterr().out
    assert "checksum train: MD5" in report and "DIFFERS from 16019d7e3df5f24257cddd939b257f8d" in report


# -- TOML-declared datasets ------------------------------------------------------------------------------
def class_tree(folder, names: list[str], per_class: int) -> None:
    """``<folder>/<name>/<k>.png`` tiny images, ``k`` = 0 .. per_class - 1."""
    for label, name in enumerate(names):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (4, 4), (label, index, 0)).save(folder / name / f"{index}.png")


def declare_file(root, name: str, body: str):
    path = root / f"{name}.clbench.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def test_declared_trees_are_listed_described_and_run(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folders(root, "leaves", [f"kind{k}" for k in range(6)], train_per_class=2, test_per_class=1)
    path = declare_file(root, "leaves", 'name = "leaves"\ntitle = "Leaves"\ntrain = "leaves/train"\n'
                                        'test = "leaves/test"\ntransforms = "imagenet"\nnamed_tasks = [3]\n')
    assert bench("list", "--data-root", root) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "leaves_t3" in line)
    assert line.split() == ["leaves_t3", "Leaves,", "6", "classes", f"[{path.resolve()}]"]
    assert bench("describe", "--bench", "leaves_t2", "--data-root", root) == 0
    output = capsys.readouterr().out
    assert "class order (raw label of new label 0, 1, ...): [" in output  # seeded shuffle of 6 classes
    order = json.loads(output.split("0, 1, ...): ")[1].splitlines()[0])
    assert order == np.random.RandomState(1993).permutation(6).tolist()
    assert "train      6  test      3" in output
    code = bench("run", "--methods", "simplecil,l2p", "--bench", "leaves_t2", "--backbone", "vit_tiny_random",
                 "--data-root", root, "--results-dir", tmp_path / "results", "--workers", "0", "--quiet",
                 "--set", "l2p.epochs=1")
    assert code == 0
    config = json.loads((tmp_path / "results" / "leaves_t2" / "l2p" / "seed1993" / "config.json").read_text())
    fingerprint = config["fingerprint"]["dataset_sha256"]
    assert len(fingerprint) == 64 and config["stream"]["dataset_fingerprint"] == fingerprint
    assert f"dataset fingerprint (declaration file and image list): {fingerprint}" in output


def test_declared_single_tree_is_split_per_class_by_seed(tmp_path):
    root = tmp_path / "data"
    class_tree(root / "pool" / "all", ["c0", "c1", "c2"], per_class=5)
    body = ('name = "pooled"\nimages = "pool/all"\ntest_fraction = 0.4\nclass_order = "identity"\n'
            'transforms = "cifar"\nsplit_seed = 7\n')
    spec = declare(declare_file(root, "pooled", body))
    raw = spec.load(root)
    # round(0.4 * 5) = 2 test images per class; which ones: default_rng(7) permutations, class after class
    assert np.bincount(raw.test.targets).tolist() == [2, 2, 2] and np.bincount(raw.train.targets).tolist() == [3] * 3
    rng = np.random.default_rng(7)
    expected = [sorted(rng.permutation(5)[:2].tolist()) for _ in range(3)]
    chosen = [sorted(int(os.path.basename(p)[0]) for p, t in zip(raw.test.paths, raw.test.targets) if t == label)
              for label in range(3)]
    assert chosen == expected
    assert spec.shuffle is False and DATASETS.origin("pooled").endswith("pooled.clbench.toml")


@pytest.mark.parametrize("body, message", [
    ('name = "bad1"\ntrain = [', "not valid TOML"),
    ('name = "bad2"\ntrain = "t"\ntest = "t"\ntransforms = "imagenet"\ncolour = 1\n', "unknown key(s) colour"),
    ('name = "bad_3"\ntrain = "t"\ntest = "t"\ntransforms = "imagenet"\n', "must be letters and digits only"),
    ('name = "bad4"\ntrain = "t"\ntest = "t"\n', "missing key 'transforms'"),
    ('name = "bad5"\ntrain = "t"\ntest = "t"\ntransforms = "vtab"\n', "transforms = 'vtab'; valid: imagenet, cifar"),
    ('name = "bad6"\ntrain = "t"\ntest = "t"\ntransforms = "cifar"\nclass_order = "random"\n',
     "class_order = 'random'; valid: shuffle, identity"),
    ('name = "bad7"\nimages = "t"\ntrain = "t"\ntransforms = "cifar"\n', "either train and test, or images"),
    ('name = "bad8"\nimages = "t"\ntransforms = "cifar"\n', "'images' needs test_fraction between 0 and 1"),
    ('name = "bad9"\ntrain = "t"\ntest = "t"\ntransforms = "cifar"\nnamed_tasks = [4]\n',
     "named_tasks [4] must divide the 3 classes"),
    ('name = "bad10"\ntrain = "nowhere"\ntest = "t"\ntransforms = "cifar"\n', "folder"),
    ('name = "cub"\ntrain = "t"\ntest = "t"\ntransforms = "cifar"\n', "name 'cub' is already taken (built-in)"),
    ('name = 5\ntrain = "t"\ntest = "t"\ntransforms = "cifar"\n', "name = 5 must be a str"),
])
def test_bad_declaration_is_one_line_exit_2_nothing_written(body, message, tmp_path, capsys):
    root = tmp_path / "data"
    class_tree(root / "t", ["a", "b", "c"], per_class=2)
    declare_file(root, "mine", body)
    code = bench("run", "--methods", "simplecil", "--bench", "mine_t3", "--backbone", "vit_tiny_random",
                 "--data-root", root, "--results-dir", tmp_path / "results", "--workers", "0", "--quiet")
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("bench: error: ") and error.count("\n") == 1
    assert message in error and "mine.clbench.toml" in error
    assert not (tmp_path / "results").exists()


def test_bad_declared_tree_is_one_line_before_training(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folders(root, "shapes", ["a", "b"], 1, 1)
    (root / "shapes" / "test" / "b" / "img_0.jpg").unlink()
    declare_file(root, "shapes", 'name = "shapes"\ntrain = "shapes/train"\ntest = "shapes/test"\n'
                                 'transforms = "cifar"\n')
    code = bench("run", "--methods", "simplecil", "--bench", "shapes_t2", "--backbone", "vit_tiny_random",
                 "--data-root", root, "--results-dir", tmp_path / "results", "--workers", "0", "--quiet")
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "class folder(s) without images: test/b" in error
    assert not (tmp_path / "results").exists()


# -- where a dataset came from ---------------------------------------------------------------------------
def test_registry_names_the_entry_point_or_module_a_name_came_from(monkeypatch):
    from importlib import metadata

    from benchmark import registry

    plugin = metadata.EntryPoint(name="plug", value="myplugin", group="clbench.test")
    monkeypatch.setattr(registry.metadata, "entry_points",
                        lambda group=None: [plugin] if group == "clbench.test" else [])
    names = registry.Registry("dataset", "clbench.test")
    names._loaded = True  # nothing to import: the names are registered below, as modules would
    exec("names.register('mine')(1)", {"__name__": "myplugin.sets", "names": names})
    exec("names.register('other')(2)", {"__name__": "elsewhere", "names": names})
    names.register("declared", origin="/some/file.clbench.toml")(3)
    assert names.origin("mine") == "entry point plug = myplugin"
    assert names.origin("other") == "module elsewhere"
    assert names.origin("declared") == "/some/file.clbench.toml"
