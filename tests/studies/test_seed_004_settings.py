"""The VOC study (seed 004, "HSE training project (VOC)"): configs/voc/resnet18_v{1,2,3}.yaml resolve to the
settings its README states, one row per setting, and each opens with the study's figures marked `reference:`.

The table below is written from the seed README (its three hyper-parameter tables and the lines above them); a
setting the README does not state is not in it (the configs' headers give our reading of those)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from settings_table import check_row, resolved, short_variant

from visionbench.config import AugmentConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {version: ROOT / f"configs/voc/resnet18_{version}.yaml" for version in ("v1", "v2", "v3")}


def no_augmentation(augment: AugmentConfig) -> bool:
    return augment == AugmentConfig()


def some_augmentation(augment: AugmentConfig) -> bool:
    return augment != AugmentConfig()


def _table(version: str, epochs: int, momentum: float, lr: float, normalized: bool, grey: bool) -> list[tuple]:
    """One version's rows: (version, dotted key, the seed's value or a predicate, where the seed states it)."""
    where = f"Version {version[1]}"
    described = "Dataset with augmentation and normalization" if normalized else (
        "Dataset without augmentation and normalization"
    )  # fmt: skip
    return [
        (version, "model.name", "timm:resnet18", f"{where}: heading 'ResNet18'"),
        (version, "model.pretrained", None, f"{where}: 'An unprepared model was used'"),
        (version, "data.image_size", 300, f"{where} table: Image Size 300x300"),
        (version, "trainer.batch_size", 16, f"{where} table: Batch size 16"),
        (version, "trainer.accumulate_steps", 1, f"{where} table: Accumulate gradient 1"),
        (version, "trainer.epochs", epochs, f"{where} table: Epochs {epochs}"),
        (version, "optim.name", "sgd", f"{where} table: Optimizer SGD"),
        (version, "optim.momentum", momentum, f"{where} table: Momentum {momentum}"),
        (version, "optim.lr", lr, f"{where} table: Learning rate {lr:g}"),
        (version, "data.normalize", normalized, f"{where}: '{described}'"),
        (version, "data.augment", some_augmentation if normalized else no_augmentation, f"{where}: '{described}'"),
        (version, "data.grayscale", grey, f"{where}: 'Images in a gray scale'" if grey else f"{where}: no grey scale"),
    ]


SETTINGS = [
    *_table("v1", epochs=40, momentum=0.9, lr=5e-3, normalized=False, grey=False),
    *_table("v2", epochs=40, momentum=0.9, lr=5e-3, normalized=True, grey=True),
    *_table("v3", epochs=30, momentum=0.0, lr=1e-3, normalized=True, grey=True),
]

# The Results table: loss and average precision on train and valid, per version
REFERENCE = {
    "v1": ("3.1240", "0.6809", "3.7812", "0.5852"),
    "v2": ("3.1612", "0.6795", "3.4894", "0.6322"),
    "v3": ("2.6351", "0.7615", "3.5190", "0.6551"),
}


@pytest.mark.parametrize(("version", "key", "expected", "where"), SETTINGS, ids=[f"{r[0]}-{r[1]}" for r in SETTINGS])
def test_each_config_resolves_to_the_seeds_setting(version, key, expected, where):
    check_row(load_config(CONFIGS[version]), CONFIGS[version].name, key, expected, where)


@pytest.mark.parametrize("version", sorted(CONFIGS))
def test_each_config_cites_the_seeds_figures_as_reference_not_as_ours(version):
    header = [line for line in CONFIGS[version].read_text().splitlines() if line.startswith("#")]
    (reference,) = [line for line in header if line.startswith("# reference:")]
    assert reference.endswith("(seed 004 README, not measured by visionbench)"), reference
    assert re.findall(r"\d\.\d{4}", reference) == list(REFERENCE[version]), "train loss, train AP, valid loss, valid AP"
    assert not [line for line in header if re.search(r"visionbench@", line)], "no figure of ours is claimed yet"


@pytest.mark.parametrize("version", sorted(CONFIGS))
def test_each_short_variant_only_shrinks_the_run(version):
    """The header's short variant is a valid command whose overrides shrink the run (epochs, images, size) and
    leave every other setting of the study as it is."""
    path, overrides = short_variant(CONFIGS[version])
    assert path == f"configs/voc/resnet18_{version}.yaml"
    shrinking = {"trainer.epochs", "data.subset", "data.test_subset", "data.image_size"}
    assert {o.split("=", 1)[0] for o in overrides} <= shrinking, overrides
    short, full = load_config(CONFIGS[version], overrides), load_config(CONFIGS[version])
    assert short.trainer.epochs == 1 and short.data.subset <= 64
    for _, key, _, _ in (row for row in SETTINGS if row[0] == version):
        if key not in shrinking:
            assert resolved(short, key) == resolved(full, key), key
