"""Mixup / CutMix (timm's Mixup on whole device batches): the mixed batch and its soft targets, the CLI run, the
summary's record of where each augmentation runs, and the settings it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.data import DatasetInfo
from visionbench.engine.assembly import build_mix
from visionbench.errors import UserError
from visionbench.tasks import create_task

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"


def _task(kind: str, outputs: int):
    """A task of `kind` with its dataset facts, as the assembly builds it."""
    info = DatasetInfo("toy", kind, outputs, tuple(f"c{i}" for i in range(outputs)), (1, 8, 8))
    return create_task(kind, info), info


def test_mixup_batch_is_a_convex_pair_mix_with_matching_soft_targets() -> None:
    cfg = load_config(SMOKE, ["data.augment.mixup_alpha=0.4", "task.label_smoothing=0.1"])
    mix = build_mix(cfg, *_task("classification", 4))
    np.random.seed(0)  # timm draws lambda from numpy's global generator (checkpointed with the other RNG states)
    x = torch.randn(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, soft = mix(x.clone(), y)
    assert soft.shape == (6, 4) and torch.allclose(soft.sum(1), torch.ones(6))
    lam = float(soft[0, 0])  # image 0 (class 0) is mixed with image 5 (class 1): no label smoothing in the mix
    assert 0.0 < lam < 1.0 and soft[0, 1] == pytest.approx(1 - lam)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))


def test_a_mixup_cutmix_run_trains_and_records_where_augmentations_run(tmp_path: Path) -> None:
    overrides = ["data.augment.mixup_alpha=0.2", "data.augment.cutmix_alpha=1.0", "data.augment.flip=true"]
    overrides += [f"trainer.out_dir={tmp_path}", "trainer.device=cpu"]
    assert main(["train", str(SMOKE), *[x for o in overrides for x in ("--set", o)]]) == 0
    summary = json.loads(next(tmp_path.glob(f"*/*/{layout.SUMMARY}")).read_text())
    assert summary["status"] == "finished" and np.isfinite(summary["final"]["train/loss"])
    assert summary["augment"] == {"device": ["flip", "mixup_alpha", "cutmix_alpha"], "workers": []}


def test_mixing_an_odd_batch_exits_2_before_anything_is_written(tmp_path: Path, capsys) -> None:
    overrides = ["data.augment.mixup_alpha=0.2", "trainer.batch_size=63", f"trainer.out_dir={tmp_path}"]
    assert main(["train", str(SMOKE), *[x for o in overrides for x in ("--set", o)]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trainer.batch_size: mixup/cutmix pair images" in err, err
    assert list(tmp_path.iterdir()) == []


def test_mixing_is_for_classification_only() -> None:
    cfg = load_config(SMOKE, ["data.augment.cutmix_alpha=1.0"])
    with pytest.raises(UserError, match="cutmix_alpha: classification only, this task is regression"):
        build_mix(cfg, *_task("regression", 1))
    assert build_mix(load_config(SMOKE), *_task("classification", 4)) is None
