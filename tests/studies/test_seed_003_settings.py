"""The CIFAR-100 study (seed 003, "An Initial Study of Deep Learning Architecture for Image Recognition"): the
configs of configs/cifar100/ resolve to the settings its README states, one row per setting, and open with the
study's figures marked `reference:`.

The table is written from the seed README: its targets ("top-1 accuracy > 80% within 3 hour", "> 82% within 2
train hour") and its two model cards (2.1 ViT-B/16, 3.1 ViT-B/16+R50). A setting the README does not state is not
in it (the configs' headers give our reading of those). Parameter counts are the models built on the meta device
at the card's image size with ImageNet's 1000 classes, as the cards count them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from settings_table import check_row, resolved, short_variant

from visionbench.config import load_config
from visionbench.models import count_params, create_model

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("vit_b16", "vit_b16_r50_384", "budget_2h", "budget_3h")
CONFIGS = {name: ROOT / f"configs/cifar100/{name}.yaml" for name in NAMES}
VIT, HYBRID = "timm:vit_base_patch16_224_miil", "timm:vit_base_r50_s16_384"


def imagenet_weights(pretrained: str | None) -> bool:
    return pretrained is not None and pretrained.split(":")[0] == "imagenet"


def params_at_1000_classes(cfg) -> int:
    side = cfg.data.image_size
    with torch.device("meta"):
        model = create_model(cfg.model.name, 1000, in_chans=3, img_size=(side, side), **cfg.model.kwargs)
    return count_params(model)


DERIVED = {"params at 1000 classes, in M (2 decimals)": lambda cfg: round(params_at_1000_classes(cfg) / 1e6, 2)}


def _vit_card(config: str) -> list[tuple]:
    return [
        (config, "data.name", "cifar100", "title: 'On CIFAR100 dataset'"),
        (config, "model.name", VIT, "2.1: 'Model: ViT-B/16' with 'Parameter: 86.54 (M)'"),
        (config, "params at 1000 classes, in M (2 decimals)", 86.54, "2.1: 'Parameter: 86.54 (M)'"),
        (config, "model.pretrained", imagenet_weights, "2.1: 'Top 1: 84.268 (%)' is ImageNet weights' figure"),
        (config, "data.image_size", 224, "2.1: 'Image size: 224 x 224 (px)'"),
        (config, "data.eval_crop_pct", 0.875, "2.1: 'Crop percent: 0.875 (%)'"),
        (config, "data.interpolation", "bilinear", "2.1: 'Interpolation: bilinear'"),
    ]


SETTINGS = [
    *_vit_card("vit_b16"),
    ("vit_b16_r50_384", "data.name", "cifar100", "title: 'On CIFAR100 dataset'"),
    ("vit_b16_r50_384", "model.name", HYBRID, "3.1: 'Model: ViT-B/16+R50', 'Image size: 384'"),
    ("vit_b16_r50_384", "params at 1000 classes, in M (2 decimals)", 98.95, "3.1: 'Parameter: 98.95'"),
    ("vit_b16_r50_384", "model.pretrained", imagenet_weights, "3.1: 'Top 1: 84.972' is ImageNet weights' figure"),
    ("vit_b16_r50_384", "data.image_size", 384, "3.1: 'Image size: 384'"),
    ("vit_b16_r50_384", "data.eval_crop_pct", 1.0, "3.1: 'Crop percent: 1.0'"),
    ("vit_b16_r50_384", "data.interpolation", "bicubic", "3.1: 'Interpolation: bicubic'"),
    *_vit_card("budget_2h"),
    ("budget_2h", "trainer.time_budget_minutes", 120, "title: '> 82% within 2 train hour'"),
    ("budget_2h", "trainer.time_budget_counts_eval", False, "title: '2 train hour' (training time)"),
    *_vit_card("budget_3h"),
    ("budget_3h", "trainer.time_budget_minutes", 180, "title: '> 80% within 3 hour'"),
    ("budget_3h", "trainer.time_budget_counts_eval", True, "title: 'within 3 hour' (the run's time)"),
]

# The figures each config cites from the seed README
REFERENCE = {
    "vit_b16": ("84.268", "96.802"),
    "vit_b16_r50_384": ("84.972", "97.288"),
    "budget_2h": ("82",),
    "budget_3h": ("80",),
}


@pytest.mark.parametrize(("config", "key", "expected", "where"), SETTINGS, ids=[f"{r[0]}-{r[1]}" for r in SETTINGS])
def test_each_config_resolves_to_the_seeds_setting(config, key, expected, where):
    check_row(load_config(CONFIGS[config]), f"{config}.yaml", key, expected, where, DERIVED)


def test_exact_parameter_counts_of_the_two_cards():
    assert params_at_1000_classes(load_config(CONFIGS["vit_b16"])) == 86_540_008
    assert params_at_1000_classes(load_config(CONFIGS["vit_b16_r50_384"])) == 98_950_952


@pytest.mark.parametrize("config", NAMES)
def test_the_data_settings_are_those_timm_resolves_for_the_pretrained_weights(config):
    """The card's image size, crop and interpolation are timm's for these weights, and so must be the scaling the
    weights were trained with: inputs in [0, 1] (mean 0, std 1) for the ViT, mean 0.5 and std 0.5 for the hybrid."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = load_config(CONFIGS[config])
    tag = cfg.model.pretrained.partition(":")[2]
    name = cfg.model.name.removeprefix("timm:") + (f".{tag}" if tag else "")
    timms = resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict())
    assert get_pretrained_cfg(name).num_classes == 1000, "the ImageNet-1k weights the card's figures are for"
    data = cfg.data
    assert timms["input_size"] == (3, data.image_size, data.image_size)
    assert (timms["crop_pct"], timms["interpolation"]) == (data.eval_crop_pct, data.interpolation)
    if data.normalize:
        assert tuple(data.mean) * 3 == timms["mean"] and tuple(data.std) * 3 == timms["std"]
    else:
        assert (timms["mean"], timms["std"]) == ((0.0,) * 3, (1.0,) * 3), "normalize false: timm's mean 0, std 1"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_each_config_cites_the_seeds_figures_as_reference_not_as_ours(config):
    header = [line for line in CONFIGS[config].read_text().splitlines() if line.startswith("#")]
    (reference,) = [line for line in header if line.startswith("# reference:")]
    assert reference.endswith("(seed 003 README, not measured by visionbench)"), reference
    assert tuple(re.findall(r"\d+(?:\.\d+)?(?= %)", reference)) == REFERENCE[config], reference
    assert not [line for line in header if "visionbench@" in line], "no figure of ours is claimed yet"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_each_short_variant_only_shrinks_the_run(config):
    """The header's short variant is valid and changes only what makes it run on a CPU (one epoch, a
    few images at 32 px, random init of a one-block ViT, a seconds-long budget); every other setting of the
    study stays."""
    path, overrides = short_variant(CONFIGS[config])
    assert path == f"configs/cifar100/{config}.yaml"
    shrinking = {
        "trainer.epochs", "data.subset", "data.test_subset", "data.image_size", "model.pretrained", "model.kwargs",
        "trainer.time_budget_minutes",
    }  # fmt: skip
    assert {o.split("=", 1)[0] for o in overrides} <= shrinking, overrides
    short, full = load_config(CONFIGS[config], overrides), load_config(CONFIGS[config])
    assert short.trainer.epochs == 1 and short.data.subset <= 64 and short.model.pretrained is None
    kept = [key for c, key, _, _ in SETTINGS if c == config and key.split(".")[0] in ("data", "trainer", "model")]
    for key in kept:
        if key not in shrinking and key not in DERIVED:
            assert resolved(short, key) == resolved(full, key), key
