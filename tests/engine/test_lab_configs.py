"""The image-mining lab's Fashion-MNIST configs (configs/fashion_mnist/lab/): each trains its short variant, and the
two transfer rows load their digits source through the experiment folder named in `model.pretrained`.

The rows run on scikit-learn's digits here (resized to the row's input size): a VGG-16 needs about a minute on
this CPU just to evaluate Fashion-MNIST's 10,000 test images. The real rows are benchmarks/fmnist_lab_table.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "configs" / "fashion_mnist" / "lab"
SOURCES = {"vgg16_bn_frozen": "digits_vgg16_bn", "resnet18_transfer": "digits_resnet18"}
ROWS = ["simple_cnn", "cnn_dropout", "vgg16_bn_frozen", "resnet18_transfer", "vit"]


def _train(config: Path, out: Path, overrides: list[str]) -> Path:
    common = [f"trainer.out_dir={out}", "trainer.device=cpu", "trainer.progress=lines"]
    common += ["trainer.checkpoint_every_minutes=null"]
    assert main(["train", str(config), *[x for o in overrides + common for x in ("--set", o)]]) == 0
    (run,) = (out / config.stem).iterdir()
    return run


def test_every_lab_config_is_a_row_or_a_source() -> None:
    assert {p.stem for p in LAB.glob("*.yaml")} == set(ROWS) | set(SOURCES.values())


@pytest.mark.parametrize("row", ROWS)
def test_lab_rows_train_their_short_variant(tmp_path: Path, short_variant, row: str) -> None:
    config = LAB / f"{row}.yaml"
    cfg = load_config(config)
    size = cfg.data.image_size or 28  # digits at the row's input size
    on_digits = ["data.name=digits", f"data.image_size={size}"]
    overrides = short_variant(config) + on_digits
    source = None
    if row in SOURCES:
        source_config = LAB / f"{SOURCES[row]}.yaml"
        assert cfg.model.pretrained == f"runs/{SOURCES[row]}", "the row names its source's experiment folder"
        source = _train(source_config, tmp_path / "runs", short_variant(source_config))
        overrides.append(f"model.pretrained={tmp_path / 'runs' / SOURCES[row]}")
    run = _train(config, tmp_path / "runs", overrides)
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "finished" and 0.0 <= summary["final"]["test/acc1"] <= 1.0
    if source is not None:
        before = safetensors.torch.load_file(str(source / layout.BEST))
        after = safetensors.torch.load_file(str(run / layout.BEST))
        same = [k for k in before if k in after and torch.equal(before[k], after[k])]
        if cfg.model.freeze == "backbone":  # every conv weight of the source is still there, untouched
            assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("weight") and before[k].ndim == 4)
        else:  # fine-tuned: started from the source (at a tenth of the head's rate, the convs moved little)
            assert len(same) < len(before), "the backbone trained"
            for key in [k for k in before if before[k].ndim == 4]:
                moved = (after[key] - before[key]).norm() / before[key].norm()
                assert moved < 0.2, f"{key} moved {moved:.2f} of its norm: not started from the source"
