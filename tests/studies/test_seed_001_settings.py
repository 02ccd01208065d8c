"""Seed 001 (ResNet under 5M parameters on CIFAR-10): configs/cifar10/resnet_budget5m.yaml holds the study's final
model and training settings, written here from the seed README, and its grid (configs/cifar10/search_5m.space.yaml)
spans the values the README gives for K.

The README states N, C_1, B, F, P and three values of K; the parameter count 4,435,082 fixes K = [3, 3] and P as a
1x1 pooled output. It names DropBlock and feature dropout without their rates, and no schedule or weight decay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from visionbench.cli.main import main
from visionbench.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "cifar10" / "resnet_budget5m.yaml"
SPACE = ROOT / "configs" / "cifar10" / "search_5m.space.yaml"
README = "seed 001 README"
HYPER = f"{README}, Results > Hyperparameter setting"
TRAINING = f"{README}, Implementation > Some Training Techniques"
AUGMENT = f"{README}, Implementation > Data Augmentation"

# (dotted key, the study's value, where it is stated)
SETTINGS: list[tuple[str, Any, str]] = [
    ("data.name", "cifar10", f"{README}, Objective: maximize test accuracy on CIFAR-10"),
    ("model.name", "resnet_cfg", f"{README}, Architecture: a rescaled ResNet-18 with N, B_i, C_i, F_i, K_i, P"),
    ("model.kwargs.blocks", [3, 3], f"{HYPER}: N = 2, B = [3,3]"),
    ("model.kwargs.channels", [128, 256], f"{HYPER}: C1 = 128; each later layer doubles it, as in ResNet-18"),
    ("model.kwargs.conv_kernels", [3, 3], f"{HYPER}: F = [3,3]"),
    ("model.kwargs.skip_kernels", [3, 3], f"{HYPER}: K = [1,1] or [3,3] or [5,5]; only [3,3] gives 4,435,082"),
    ("model.kwargs.pool_output", 1, f"{HYPER}: P = [1,1], an average pool to 1x1 (the count needs it)"),
    ("model.max_params", 5.0e6, f"{README}, Objective: less than 5M trainable parameters"),
    ("optim.name", "adam", f"{TRAINING}: Adam optimizer"),
    ("optim.lr", 1e-3, f"{TRAINING}: initial learning rate to 0.001"),
    ("optim.schedule", "constant", f"{TRAINING}: an initial learning rate and no schedule named"),
    ("optim.weight_decay", 0.0, f"{TRAINING}: no weight decay named"),
    ("trainer.batch_size", 64, f"{TRAINING}: batch size of training samples to 64"),
    ("trainer.epochs", 60, f"{TRAINING}: total training epochs are set to 60"),
    ("data.val_fraction", 0.0, f"{TRAINING}: reshuffle the whole training set in each epoch"),
    ("data.augment.translate_pixels", 4, f"{AUGMENT}: a 32x32 patch cropped after padding 4 pixels"),
    ("data.augment.pad_mode", "zeros", f"{AUGMENT}: by zero padding of 4 pixels"),
    ("data.augment.flip", True, f"{AUGMENT}: crop, resize and flip"),
]


def _value(cfg_dump: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for part in parents:
        cfg_dump = cfg_dump[part]
    assert leaf in cfg_dump, f"{dotted}: not in the resolved config"
    return cfg_dump[leaf]


@pytest.mark.parametrize(("key", "value", "where"), SETTINGS, ids=[row[0] for row in SETTINGS])
def test_config_holds_the_seed_setting(key: str, value: Any, where: str) -> None:
    assert _value(load_config(CONFIG).model_dump(), key) == value, f"{key} should be {value!r} ({where})"


def test_both_regularisers_the_study_names_are_on() -> None:
    """README, Regularization: "DropBlock and feature dropout ... applied after the final average pooling layer"."""
    kwargs = load_config(CONFIG).model.kwargs
    assert kwargs["drop_block"] > 0 and kwargs["drop_rate"] > 0, kwargs


def _counted(capsys, *args: str) -> dict:
    """`visionbench models --config CONFIG ... --json`: counted on the meta device, CIFAR-10 not on disk."""
    capsys.readouterr()
    assert main(["models", "--config", str(CONFIG), *args, "--json"]) == 0, capsys.readouterr().err
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return row


def test_config_builds_the_studys_4_435_082_parameters(capsys) -> None:
    row = _counted(capsys)
    assert (row["params"], row["trainable"], row["input_size"], row["num_outputs"]) == (
        4_435_082,
        4_435_082,
        "3x32x32",
        10,
    )
    assert "note" not in row, "under model.max_params"


def test_header_names_the_study_and_quotes_its_figures_as_a_reference() -> None:
    header = [line for line in CONFIG.read_text().splitlines() if line.startswith("#")]
    assert header[0].startswith("# Seed 001 (ResNet under 5M parameters on CIFAR-10)"), header[0]
    reference = "# reference: 90.70 % test accuracy with 4,435,082 trainable parameters (seed 001 README, "
    assert any(line.startswith(reference) and line.endswith("not measured by visionbench)") for line in header)


def test_grid_spans_the_three_skip_kernels_of_the_readme_all_under_5m(capsys) -> None:
    from visionbench.search.space import grid_cells, read_space

    space = read_space(SPACE)
    assert space.sampler == "grid" and space.constraints.max_params == 5.0e6
    cells = grid_cells(space, [])
    assert [cell["model.kwargs.skip_kernels"] for cell in cells] == ["[1, 1]", "[3, 3]", "[5, 5]"]
    counts = [_counted(capsys, "--set", f"model.kwargs.skip_kernels=[{k}, {k}]")["params"] for k in (1, 3, 5)]
    assert counts == [4_172_938, 4_435_082, 4_959_370], "the README's K values, every one under 5M"
