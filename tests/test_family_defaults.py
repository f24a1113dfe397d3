"""Per-family defaults of every method on CUB-200, ObjectNet, OmniBenchmark and DomainNet, and ``defaults_source``.

The official numbers below were written from the upstream config files (cited per row); every other (method,
family) pair must equal the method's ImageNet-R defaults and say so in ``defaults_source``.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from benchmark.cli.hparams_doc import describe_hparams
from benchmark.config import as_dict, resolve_hparams
from benchmark.errors import ClbenchError
from benchmark.method import imagenet_r_recipe
from benchmark.registry import METHODS
from benchmark.runs.resolve import RunRequest, resolve_run
from benchmark.runs.stored import check_resumable, resume_fields

NEW_FAMILIES = ("cub", "objnet", "omni", "domainnet")
OLD_FAMILIES = ("cifar100", "imr", "ima", "vtab", "digits")
METHOD_NAMES = ("aper", "cl_lora", "coda_prompt", "dualprompt", "ease", "finetune", "inflora", "l2p", "lae_lora",
                "olora", "ranpac", "sd_lora", "simplecil")

_REVISITING = {"epochs": 20, "batch_size": 48, "lr": 0.01, "weight_decay": 5e-4, "bottleneck": 64}
_RANPAC = {"epochs": 20, "batch_size": 48, "lr": 0.01, "weight_decay": 5e-4, "min_lr": 0.0, "projection_dim": 10_000}
# (method, family) -> (file named in defaults_source, values from that file)
OFFICIAL = {
    # RevisitingCIL exps/aper_adapter/{cub_10_10,objectnet_10_10,omni_30_30}_vit-b_adapter.json, lines 12, 14, 23-25
    ("aper", "cub"): ("cub_10_10_vit-b_adapter.json", _REVISITING),
    ("aper", "objnet"): ("objectnet_10_10_vit-b_adapter.json", _REVISITING),
    ("aper", "omni"): ("omni_30_30_vit-b_adapter.json", _REVISITING),
    # RanPAC args/cub_publish.csv line 9, args/domainnet_publish.csv line 7 (ID 7)
    ("ranpac", "cub"): ("cub_publish.csv", _RANPAC),
    ("ranpac", "domainnet"): ("domainnet_publish.csv", _RANPAC),
    # EASE repo exps/ease_cub_in21k.json and exps/ease_obj_in21k.json, lines 15-20, 27, 30
    ("ease", "cub"): ("ease_cub_in21k.json", {"epochs": 20, "lr": 0.008, "batch_size": 32, "weight_decay": 5e-4,
                                              "bottleneck": 64, "alpha": 0.05}),
    ("ease", "objnet"): ("ease_obj_in21k.json", {"epochs": 25, "lr": 0.05, "batch_size": 48, "weight_decay": 5e-3,
                                                 "bottleneck": 64, "alpha": 0.2}),
    # CODA-Prompt configs/domainnet_prompt.yaml lines 5-9, experiments/domainnet.sh line 28
    ("coda_prompt", "domainnet"): ("domainnet_prompt.yaml", {"epochs": 5, "batch_size": 128, "lr": 0.001,
                                                             "pool_size": 100, "prompt_length": 8, "ortho_mu": 0.0}),
    # LAE config/base/domainnet_order1.yaml lines 23, 33, 35-36, 51-52 + config/vit_lora.yaml lines 6, 9
    ("lae_lora", "domainnet"): ("domainnet_order1.yaml", {"batch_size": 24, "epochs": 50, "lr": 0.00046875,
                                                          "ema_decay": 0.9999, "num_freeze_epochs": 30, "rank": 5,
                                                          "adapt_blocks": [0, 1, 2, 3, 4]}),
    # SD-LoRA exps/sdlora_dom.json lines 18-21, 23-27 (task 0 the same as later tasks)
    ("sd_lora", "domainnet"): ("sdlora_dom.json", {"epochs": 10, "lr": 0.02, "milestones": [4, 6, 8, 10000],
                                                   "lr_decay": 0.005, "batch_size": 128, "init_epochs": None,
                                                   "init_lr": None, "init_milestones": None, "init_lr_decay": None}),
    # InfLoRA configs/domainnet_inflora.json lines 18, 20, 24, 26-28; the lr is the main learner's Adam 5e-4
    ("inflora", "domainnet"): ("domainnet_inflora.json", {"epochs": 5, "batch_size": 128, "rank": 30, "lamb": 0.95,
                                                          "lame": 1.0, "lr": 5e-4}),
    # O-LoRA follows InfLoRA per benchmark with rank 8
    ("olora", "domainnet"): ("domainnet_inflora.json", {"epochs": 5, "batch_size": 128, "rank": 8, "lr": 5e-4}),
    # SimpleCIL: PILOT models/simplecil.py line 16, the same everywhere
    **{("simplecil", family): ("models/simplecil.py line 16", {"batch_size": 128}) for family in NEW_FAMILIES},
    # sequential fine-tuning: ours, one recipe everywhere
    **{("finetune", family): ("ours", {"epochs": 5, "lr": 0.005, "batch_size": 32}) for family in NEW_FAMILIES},
}
RECIPE_FIELDS = ("defaults_source", "recipe_family")
"""Fields that name where values come from, not values: left out when a family is compared with ImageNet-R."""


def resolved(name: str, family: str, **overrides: str) -> dict:
    method_class = METHODS.get(name)
    return as_dict(resolve_hparams(method_class.config_class, method_class.family_defaults(family), overrides))


def test_the_thirteen_methods_are_covered():
    assert tuple(sorted(METHODS.names())) == METHOD_NAMES


@pytest.mark.parametrize("family", NEW_FAMILIES)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_new_family_defaults_are_official_or_the_imagenet_r_recipe(name, family):
    values = resolved(name, family)
    source = values["defaults_source"]
    if (name, family) in OFFICIAL:
        cited, expected = OFFICIAL[name, family]
        assert {key: values[key] for key in expected} == expected
        assert cited in source and not source.startswith("ImageNet-R recipe")
    else:
        imr = resolved(name, "imr")
        assert {k: v for k, v in values.items() if k not in RECIPE_FIELDS} == \
            {k: v for k, v in imr.items() if k not in RECIPE_FIELDS}
        assert source.startswith(f"ImageNet-R recipe (no official config for {family}")


def test_aper_pilot_recipe_takes_pilots_imagenet_r_values_on_new_families():
    for family in NEW_FAMILIES:
        values = resolved("aper", family, aper_recipe="pilot")
        assert (values["epochs"], values["batch_size"], values["lr"], values["weight_decay"]) == (10, 16, 0.05, 5e-3)
        assert values["defaults_source"] == (f"ImageNet-R recipe (no PILOT config for {family}): "
                                             "PILOT exps/aper_aperpter_inr.json")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_family_names_its_defaults_source(name):
    for family in OLD_FAMILIES + NEW_FAMILIES:
        assert resolved(name, family)["defaults_source"], (name, family)


def test_methods_with_own_backbones_have_them_on_new_families():
    for name in METHOD_NAMES:
        backbones = METHODS.get(name).default_backbones
        if "imr" in backbones:
            assert set(NEW_FAMILIES) <= set(backbones), name
    ease = METHODS.get("ease").default_backbones
    # the EASE repo's in21k configs on CUB and ObjectNet, PILOT's in1k-ft where its ImageNet-R recipe applies
    assert (ease["cub"], ease["objnet"], ease["omni"]) == ("vit_base_patch16_224.augreg_in21k",
                                                           "vit_base_patch16_224.augreg_in21k",
                                                           "vit_base_patch16_224.augreg_in21k_ft_in1k")


def test_imagenet_r_recipe_entries():
    assert imagenet_r_recipe({"lr": 0.1}, "X exps/a_inr.json", ("cub", "omni"), "its own needs Y") == {
        "cub": {"lr": 0.1, "defaults_source": "ImageNet-R recipe (no official config for cub; its own needs Y): "
                                              "X exps/a_inr.json"},
        "omni": {"lr": 0.1, "defaults_source": "ImageNet-R recipe (no official config for omni; its own needs Y): "
                                               "X exps/a_inr.json"}}


def test_describe_prints_the_source_for_a_new_family():
    text = describe_hparams(METHODS.get("ease"), "cub")
    assert "hyper-parameters (defaults for cub;" in text
    assert "  defaults_source = 'EASE repo exps/ease_cub_in21k.json (10/10)'  [str]" in text
    assert "  lr = 0.008  [float]" in text and "  alpha = 0.05  [float]" in text
    text = describe_hparams(METHODS.get("cl_lora"), "domainnet")
    assert "  defaults_source = 'ImageNet-R recipe (no official config for domainnet): official exps/inr.json'" \
        in text


def test_a_stored_run_without_or_with_another_defaults_source_still_resumes(tmp_path):
    run = resolve_run(RunRequest(bench="digits_t5", method="cl_lora", results_dir=tmp_path))
    run.store.path.mkdir(parents=True)
    stored = resume_fields(run)
    for hparams in ({k: v for k, v in stored["hparams"].items() if k != "defaults_source"},
                    {**stored["hparams"], "defaults_source": "an older wording"}):
        run.store.config_path.write_text(json.dumps({**stored, "hparams": hparams}))
        check_resumable(run)
    changed = dataclasses.replace(run, hparams=dataclasses.replace(run.hparams, rank=3))
    with pytest.raises(ClbenchError, match=r"different config \(hparams\)"):
        check_resumable(changed)
