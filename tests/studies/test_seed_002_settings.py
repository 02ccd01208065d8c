"""Seed 002 (CIFAR-10 image-mining lab): its five model configs under configs/cifar10/ hold the lab's settings,
written here from the seed README, one block per model (learning rate, batch size, epochs, dropout, the frozen
layers of the two pretrained models), and build the models whose parameter counts the README gives.

The README names no optimizer, schedule, augmentation or input size for any model: the configs' choices there are
ours and said so in their headers; this table holds only what the README states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.models import create_model

ROOT = Path(__file__).resolve().parents[2]
CIFAR10 = ROOT / "configs" / "cifar10"
README = "seed 002 README"
TRANSFER = f"{README}, Additional Methods > Transfer Learning"

# config stem -> the README's block it reproduces
BLOCKS = {
    "simple_cnn": "Simple CNN",
    "cnn_dropout": "Simple CNN with Dropout",
    "vgg16_transfer": "VGG16",
    "resnet18_transfer": "Resnet18",
    "vit": "ViT (Vision Transfomer)",
}


def _block(stem: str, lr: tuple[float, str], batch: int, epochs: tuple[int, str]) -> list[tuple[str, str, Any, str]]:
    """The three lines every block of the README has: learning rate, batch size, epochs (value, as written)."""
    where = f"{README}, {BLOCKS[stem]}"
    return [
        (stem, "optim.lr", lr[0], f"{where}: Learning rates: {lr[1]}"),
        (stem, "trainer.batch_size", batch, f"{where}: Batch size: {batch}"),
        (stem, "trainer.epochs", epochs[0], f"{where}: Epochs: {epochs[1]}"),
    ]


# (config stem, dotted key, the study's value, where it is stated)
SETTINGS: list[tuple[str, str, Any, str]] = [
    *[(stem, "data.name", "cifar10", f"{README}: experiments on the Cifar10 dataset") for stem in BLOCKS],
    *[
        (stem, "data.val_fraction", 0.0, f"{README}, {b}: accuracy on test, no validation split")
        for stem, b in BLOCKS.items()
    ],
    *_block("simple_cnn", (1e-3, "0.001"), 32, (10, "10, 20 (20: --set trainer.epochs=20)")),
    ("simple_cnn", "model.name", "small_cnn", f"{README}, Simple CNN: two convolutional layers, max-pool between"),
    ("simple_cnn", "model.kwargs.hidden", [120, 84], f"{README}, Simple CNN: Total params: 62,006"),
    ("simple_cnn", "model.kwargs.act_layer", "leaky_relu", f"{README}, Simple CNN: a leaky relu activation"),
    *_block("cnn_dropout", (1e-2, "0.01"), 32, (10, "10")),
    ("cnn_dropout", "model.name", "small_cnn_dropout", f"{README}, Simple CNN with Dropout"),
    ("cnn_dropout", "model.kwargs.conv_drop_rate", 0.1, f"{README}, Simple CNN with Dropout: (for dropout:0.1)"),
    ("cnn_dropout", "model.kwargs.drop_rate", 0.1, f"{README}, Simple CNN with Dropout: (for dropout:0.1)"),
    *_block("vgg16_transfer", (1e-2, "0.01"), 32, (10, "10")),
    ("vgg16_transfer", "model.name", "torchvision:vgg16", f"{README}, VGG16: Total params: 138,357,544"),
    ("vgg16_transfer", "model.pretrained", "imagenet", f"{README}, VGG16: Using pretrained model VGG-16"),
    (
        "vgg16_transfer",
        "model.freeze",
        "backbone",
        f"{README}, VGG16: freezing the first layers and retraining the last one",
    ),
    *_block("resnet18_transfer", (1e-2, "0.01"), 64, (20, "20")),
    ("resnet18_transfer", "model.name", "torchvision:resnet18", f"{README}, Resnet18: a pretrained resnet model"),
    ("resnet18_transfer", "model.pretrained", "imagenet", f"{README}, Resnet18: We used a pretrained resnet model"),
    ("resnet18_transfer", "model.freeze", "backbone", f"{TRANSFER}: change the last linear layer, freeze the previous"),
    *_block("vit", (3e-5, "3e-5"), 64, (20, "20")),
    ("vit", "model.name", "vit", f"{README}, ViT: a Vision Transformer for classification"),
    ("vit", "model.kwargs.attn_drop_rate", 0.1, f"{README}, ViT: dropout = 0.1 (vit-pytorch's: attention weights)"),
    ("vit", "model.kwargs.proj_drop_rate", 0.1, f"{README}, ViT: dropout = 0.1 (vit-pytorch's: attention out, MLP)"),
    ("vit", "model.kwargs.emb_dropout", 0.1, f"{README}, ViT: emb_dropout = 0.1"),
    (
        "vit",
        "model.kwargs.qkv_bias",
        False,
        f"{README}, ViT: emb_dropout names vit-pytorch's ViT, whose qkv has no bias",
    ),
]

# the README's figures, quoted by each header as `# reference: ... (seed 002 README, not measured by visionbench)`
REFERENCES = {
    "simple_cnn": "66.71 % test accuracy, 62,006 parameters",
    "cnn_dropout": "68.41 % test accuracy at dropout 0.1, 4,746,186 parameters",
    "vgg16_transfer": "86.06 % test accuracy, 138,357,544 parameters",
    "resnet18_transfer": "90.27 % test accuracy",
    "vit": "54.67 % test accuracy",
}


def _value(cfg_dump: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for part in parents:
        cfg_dump = cfg_dump[part]
    assert leaf in cfg_dump, f"{dotted}: not in the resolved config"
    return cfg_dump[leaf]


@pytest.mark.parametrize(("stem", "key", "value", "where"), SETTINGS, ids=[f"{r[0]}:{r[1]}" for r in SETTINGS])
def test_config_holds_the_seed_setting(stem: str, key: str, value: Any, where: str) -> None:
    cfg = load_config(CIFAR10 / f"{stem}.yaml")
    assert _value(cfg.model_dump(), key) == value, f"{stem}: {key} should be {value!r} ({where})"


@pytest.mark.parametrize("stem", BLOCKS)
def test_header_names_the_labs_block_and_quotes_its_figures_as_a_reference(stem: str) -> None:
    header = [line for line in (CIFAR10 / f"{stem}.yaml").read_text().splitlines() if line.startswith("#")]
    assert header[0].startswith(f'# Seed 002 (CIFAR-10 image-mining lab), "{BLOCKS[stem].split(" (")[0]}'), header[0]
    expected = f"# reference: {REFERENCES[stem]} (seed 002 README, not measured by visionbench)"
    assert expected in header, f"{stem}: header lacks {expected!r}"


def _counted(capsys, stem: str, *args: str) -> dict:
    """`visionbench models --config` of a lab config: counted on the meta device, no data or weights on disk."""
    capsys.readouterr()
    assert main(["models", "--config", str(CIFAR10 / f"{stem}.yaml"), *args, "--json"]) == 0, capsys.readouterr().err
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return row


def test_simple_cnn_has_the_labs_62_006_parameters(capsys) -> None:
    row = _counted(capsys, "simple_cnn")
    assert (row["params"], row["input_size"], row["num_outputs"]) == (62_006, "3x32x32", 10), row


def test_vgg16_is_torchvisions_with_its_own_classifier_138_357_544_at_224_and_1000_classes(capsys) -> None:
    imagenet = _counted(capsys, "vgg16_transfer", "--input-size", "3x224x224", "--num-outputs", "1000")
    assert (imagenet["params"], imagenet["trainable"]) == (138_357_544, 4096 * 1000 + 1000), "only the last layer"
    cifar = _counted(capsys, "vgg16_transfer")
    assert (cifar["params"], cifar["trainable"]) == (134_301_514, 4096 * 10 + 10), cifar


def test_resnet18_trains_only_its_new_last_layer(capsys) -> None:
    row = _counted(capsys, "resnet18_transfer")
    assert (row["params"], row["trainable"]) == (11_181_642, 512 * 10 + 10), row


def test_dropout_cnn_is_our_reading_and_its_header_says_its_count(capsys) -> None:
    """No plain reading of "CNN with dropout" counted gives the lab's 4,746,186: the header states ours."""
    assert _counted(capsys, "cnn_dropout")["params"] == 4_722_762
    text = (CIFAR10 / "cnn_dropout.yaml").read_text()
    assert "small_cnn_dropout is our reading" in text and "4,722,762 parameters" in text


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.5, 0.9])
def test_dropout_sweep_of_the_readme_sets_every_dropout_layer(rate: float) -> None:
    sets = [f"model.kwargs.conv_drop_rate={rate}", f"model.kwargs.drop_rate={rate}"]
    cfg = load_config(CIFAR10 / "cnn_dropout.yaml", sets)
    model = create_model(cfg.model.name, 10, img_size=(32, 32), **cfg.model.kwargs)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [rate] * 4


def test_vit_applies_the_labs_dropouts_and_has_no_qkv_bias() -> None:
    cfg = load_config(CIFAR10 / "vit.yaml")
    with torch.device("meta"):
        model = create_model(cfg.model.name, 10, img_size=(32, 32), **cfg.model.kwargs)
    assert model.pos_drop.p == 0.1, "emb_dropout"
    for block in model.blocks:
        assert block.attn.qkv.bias is None
        assert (block.attn.attn_drop.p, block.attn.proj_drop.p, block.mlp.drop1.p, block.mlp.drop2.p) == (0.1,) * 4
    assert model.head_drop.p == 0.0, "vit-pytorch's head has no dropout"
