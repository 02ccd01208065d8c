"""Per-image augmentations with no batched equivalent (timm's auto_augment through create_transform, in DataLoader
workers) for in-memory datasets, random erasing batched on the device or per image in the workers, and the
summary's record of where each augmentation ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench import layout
from visionbench.config import AugmentConfig, DataConfig
from visionbench.data import LoaderSpec, augment_placement, build_datasets, build_loader
from visionbench.data.loader import DeviceLoader, epoch_plan
from visionbench.data.stream import StreamLoader
from visionbench.data.transforms import random_erasing
from visionbench.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
RAND = "rand-m9-mstd0.5-inc1"


def _config(workers: int | None = 0, **augment) -> DataConfig:
    kwargs = {"channels": 3, "size": 16, "n_train": 96}
    return DataConfig(name="synthetic", kwargs=kwargs, num_workers=workers, augment=AugmentConfig(**augment))


def _epoch(cfg: DataConfig, epoch: int = 1, start: int = 0, seed: int = 5):
    data = build_datasets(cfg)
    loader = build_loader(data, "train", cfg, CPU, LoaderSpec(16, train=True, seed=seed))
    return loader, list(loader.epoch(epoch, start))


def test_auto_augment_on_an_in_memory_dataset_runs_in_workers_and_is_reproducible() -> None:
    loader, single = _epoch(_config(0, flip=True, auto_augment=RAND))
    assert isinstance(loader, StreamLoader) and loader.normalized
    _, multi = _epoch(_config(2, flip=True, auto_augment=RAND))
    _, tail = _epoch(_config(0, flip=True, auto_augment=RAND), start=2)
    for (xa, ya), (xb, yb) in zip(single, multi, strict=True):  # the worker count does not matter
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, _), (xb, _) in zip(single[2:], tail, strict=True):  # a mid-epoch start repeats the epoch's tail
        assert torch.equal(xa, xb)
    _, other = _epoch(_config(0, flip=True, auto_augment=RAND), epoch=2)
    assert not torch.equal(single[0][0], other[0][0])
    # without RandAugment, the same order and flips give other pixels: the workers did change the images
    plain_loader, plain = _epoch(_config(None, flip=True))
    assert isinstance(plain_loader, DeviceLoader)
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(single, plain, strict=True))
    changed = sum(not torch.allclose(xa, xb, atol=1e-4) for (xa, _), (xb, _) in zip(single, plain, strict=True))
    assert changed == len(plain)
    # the workers normalise as the device does: statistics stay near the train split's
    x = torch.cat([b[0] for b in single])
    assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 2.0


def test_evaluation_of_an_auto_augment_run_stays_on_the_device_loader() -> None:
    cfg = _config(0, auto_augment=RAND)
    data = build_datasets(cfg)
    assert isinstance(build_loader(data, "test", cfg, CPU, LoaderSpec(16)), DeviceLoader)


@pytest.mark.parametrize("where", ["device", "workers"])
def test_random_erasing_replaces_one_rectangle_per_image_with_noise(where: str) -> None:
    workers = 0 if where == "workers" else None
    cfg, plain_cfg = _config(workers, random_erasing=1.0, random_erasing_on=where), _config(None)
    _, erased = _epoch(cfg)
    _, plain = _epoch(plain_cfg)
    H = W = 16
    for (xe, _), (xp, _) in zip(erased, plain, strict=True):
        differs = ~torch.isclose(xe, xp, atol=1e-4).all(1)  # (B, H, W): pixels erased in any channel
        for mask in differs:
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            assert len(rows) and len(cols)
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert mask.sum() <= h * w and h * w <= H * W // 3 + H + W  # one box, at most a third (+ rounding)
    assert augment_placement(cfg.augment)[where] == ["random_erasing"]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    size=st.integers(4, 40),
    seed=st.integers(0, 2**31),
    p=st.floats(0.05, 1.0),
)
def test_batched_erasing_boxes_stay_inside_the_image_and_follow_the_plan(n: int, size: int, seed: int, p: float):
    aug = AugmentConfig(random_erasing=p)
    plan = epoch_plan(seed, 0, n, aug, size, size)
    params = {k: v for k, v in plan.items() if k.startswith("erase")}
    x = torch.zeros(n, 2, size, size)
    g = torch.Generator().manual_seed(seed)
    out = random_erasing(x, params, g)
    touched = (out != 0).any(1)  # noise is never exactly 0 in practice
    for i in range(n):
        if not params["erase"][i]:
            assert not touched[i].any()
        else:
            area = touched[i].sum().item()
            assert 1 <= area <= size * size
            rows, cols = touched[i].any(1).nonzero().flatten(), touched[i].any(0).nonzero().flatten()
            assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == area  # a filled rectangle


def test_the_device_erasing_noise_repeats_on_a_resumed_epoch() -> None:
    _, full = _epoch(_config(None, random_erasing=0.5))
    _, tail = _epoch(_config(None, random_erasing=0.5), start=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], tail, strict=True))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.augment.auto_augment=rand-zz"], "data.augment.auto_augment: 'rand-zz' is not a timm auto_augment spec"),
        (["data.augment.auto_augment=rand-q5"], "data.augment.auto_augment: 'rand-q5' is not a timm auto_augment spec"),
        (["data.num_workers=2"], "data.num_workers: 'synthetic' is held in memory"),
        (["data.augment.random_erasing=1.5"], "data.augment.random_erasing"),
    ],
)
def test_bad_augment_settings_are_one_line_and_exit_2(tmp_path: Path, capsys, overrides: list[str], expected: str):
    from visionbench.cli.main import main

    sets = [x for o in [*overrides, f"trainer.out_dir={tmp_path / 'runs'}"] for x in ("--set", o)]
    assert main(["train", str(ROOT / "configs/smoke/synthetic.yaml"), *sets]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "runs").exists(), "nothing is written on bad input"


def test_a_run_with_the_timm_recipe_records_where_each_augmentation_ran(tmp_path: Path) -> None:
    from visionbench.cli.main import main

    overrides = [
        f"data.augment.auto_augment={RAND}",
        "data.augment.random_erasing=0.25",
        "data.augment.mixup_alpha=0.8",
        "data.augment.flip=true",
        "data.num_workers=0",
        "task.label_smoothing=0.1",
        f"trainer.out_dir={tmp_path}",
    ]
    config = ROOT / "configs/smoke/synthetic.yaml"
    assert main(["train", str(config), *[x for o in overrides for x in ("--set", o)]]) == 0
    (summary,) = tmp_path.glob(f"*/*/{layout.SUMMARY}")
    record = json.loads(summary.read_text())["augment"]
    assert record == {"device": ["flip", "mixup_alpha", "random_erasing"], "workers": ["auto_augment"]}


def test_auto_augment_refuses_float_images() -> None:
    from visionbench.data.base import TensorSplit
    from visionbench.data.stream import TensorItems, worker_transform

    transform = worker_transform(AugmentConfig(auto_augment=RAND), 1, (8, 8), (0.5,), (0.25,))
    items = TensorItems(TensorSplit(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), transform)
    with pytest.raises(UserError, match="needs 8-bit images"):
        items[(0, 1)]
