"""How images are scaled and sized: `data.normalize: false` (in memory, streamed, and at predict), in-memory data
enlarged batch by batch (`data.image_size` above the stored size), `data.interpolation` and `data.eval_crop_pct`
against timm's evaluation transform. Tiny CIFAR-100 pickles and PNGs written here; CPU, no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import DataConfig
from visionbench.data import LoaderSpec, build_datasets, build_loader, transforms
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.data.cifar import write_cifar_batch
from visionbench.data.loader import DeviceLoader
from visionbench.data.stream import resize_ops
from visionbench.engine.inference import Preprocess, load_run
from visionbench.errors import UserError

CPU = torch.device("cpu")


def _smooth_image(H: int, W: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 image with structure at several scales (a flat or pure-noise image hides resampling
    differences)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    waves = [127 + 90 * np.sin(xx / (3 + c) + c) * np.cos(yy / (5 - c)) for c in range(3)]
    return np.clip(np.stack(waves, -1) + rng.normal(0, 12, (H, W, 3)), 0, 255).astype(np.uint8)


def _cifar100(folder: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """A cifar-100-python folder in the official pickle format: smooth 32x32 images, 100 fine classes."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        rows = np.stack([_smooth_image(32, 32, offset + i).transpose(2, 0, 1).reshape(-1) for i in range(n)])
        labels = [i % 100 for i in range(n)]
        write_cifar_batch(folder / name, {b"data": rows, b"fine_labels": labels, b"coarse_labels": [0] * n})
    names = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"k"] * 20}
    write_cifar_batch(folder / "meta", names)
    return folder


def _timm_eval(image: np.ndarray, size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    """timm's evaluation transform (Pillow resize, centre crop, ToTensor) with mean 0 and std 1: [0, 1] units."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, size, size),
        is_training=False,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    return transform(Image.fromarray(image))


def _within_a_grey_level(ours: torch.Tensor, timms: torch.Tensor, what: str) -> None:
    """torch's antialiased filters and Pillow's agree to one grey level (rounding), in a minority of pixels."""
    assert ours.shape == timms.shape, what
    diff = (ours - timms).abs() * 255
    assert float(diff.max()) <= 1.0 + 1e-3, f"{what}: {float(diff.max())} grey levels"
    assert float(diff.mean()) < 0.35, f"{what}: mean {float(diff.mean())} grey levels (a shifted crop gives > 10)"


# ---------------------------------------------------------------------------------------------------------------
# data.normalize: false


def test_normalize_false_scales_in_memory_images_to_unit_range_only(tmp_path):
    root = _cifar100(tmp_path / "cifar-100-python")
    cfg = DataConfig(name="cifar100", root=str(root), normalize=False, val_fraction=0.0)
    data = build_datasets(cfg)
    assert data.info.mean == (0.0, 0.0, 0.0) and data.info.std == (1.0, 1.0, 1.0)
    x, _ = next(iter(build_loader(data, "test", cfg, CPU, LoaderSpec(16))))
    torch.testing.assert_close(x, data.test.images.float() / 255, rtol=0, atol=0)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    standardised = build_datasets(cfg.model_copy(update={"normalize": True}))
    assert standardised.info.mean != (0.0, 0.0, 0.0), "the default standardises with the train split's statistics"


def test_normalize_false_scales_streamed_images_to_unit_range_only(tmp_path):
    folder = tmp_path / "manifest"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_smooth_image(16, 16, i)).save(folder / f"{i}.png")
    (folder / "train.csv").write_text("path,label\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(6)))
    cfg = DataConfig(
        name="csv_manifest", kwargs={"train": str(folder / "train.csv"), "test_fraction": 0.5}, image_size=16,
        normalize=False, val_fraction=0.0, num_workers=0,
    )  # fmt: skip
    data = build_datasets(cfg)
    assert data.info.mean == (0.0,) * 3 and data.info.std == (1.0,) * 3, "not ImageNet's statistics"
    x, _ = next(iter(build_loader(data, "test", cfg, CPU, LoaderSpec(8))))
    decoded = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in data.test.paths]
    )
    torch.testing.assert_close(x, decoded.float() / 255, rtol=0, atol=1e-6)


def test_normalize_false_with_given_statistics_is_one_line():
    with pytest.raises(UserError, match=r"data\.normalize: false .* drop data\.mean and data\.std"):
        build_datasets(DataConfig(name="synthetic", normalize=False, mean=[0.5], std=[0.5]))


def test_a_run_without_normalization_predicts_what_its_evaluation_saw(tmp_path, capsys):
    """One run of every data key here: tiny CIFAR-100 unnormalised, enlarged from 32 to 40 px per batch, bicubic,
    evaluated through a 0.875 crop. predict on a PNG of a test image must see what the eval loader fed the model."""
    root = _cifar100(tmp_path / "cifar-100-python")
    config = {
        "data": {
            "name": "cifar100", "root": str(root), "normalize": False, "image_size": 40, "interpolation": "bicubic",
            "eval_crop_pct": 0.875, "val_fraction": 0.0, "augment": {"random_resized_crop": [0.5, 1.0]},
        },
        "model": {"name": "small_cnn"},
        "trainer": {"epochs": 1, "batch_size": 16, "device": "cpu", "out_dir": str(tmp_path / "runs"),
                    "checkpoint_every_minutes": None, "progress": "lines"},
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    (summary,) = (tmp_path / "runs").glob(f"*/*/{layout.SUMMARY}")
    run_dir = summary.parent
    saved = json.loads(summary.read_text())["data_info"]
    assert saved["mean"] == [0.0] * 3 and saved["std"] == [1.0] * 3 and saved["input_size"] == [3, 40, 40]

    run = load_run(run_dir)
    data = build_datasets(run.cfg.data)
    eval_x, _ = next(iter(build_loader(data, "test", run.cfg.data, CPU, LoaderSpec(16))))
    assert eval_x.shape == (16, 3, 40, 40) and 0.0 <= float(eval_x.min()) and float(eval_x.max()) <= 1.0
    png = tmp_path / "test3.png"
    Image.fromarray(data.test.images[3].permute(1, 2, 0).numpy()).save(png)
    predicted = Preprocess.from_info(run.info, run.cfg.data)(png)
    torch.testing.assert_close(predicted, eval_x[3], rtol=0, atol=1 / 255 + 1e-6)
    with torch.no_grad():
        expected = run.model(eval_x[3:4]).softmax(-1)[0]
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(png), "--json", "--top-k", "100"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    probs = torch.zeros(100)
    for p in record["predictions"]:
        probs[p["index"]] = p["probability"]
    torch.testing.assert_close(probs, expected, rtol=0, atol=2e-3)


# ---------------------------------------------------------------------------------------------------------------
# in-memory data enlarged batch by batch


def test_enlarging_keeps_the_stored_images_and_resizes_only_batches(tmp_path, monkeypatch):
    root = _cifar100(tmp_path / "cifar-100-python")
    cfg = DataConfig(name="cifar100", root=str(root), image_size=96, val_fraction=0.25)
    data = build_datasets(cfg)
    assert data.info.input_size == (3, 96, 96)
    for split in (data.train, data.val, data.test):
        assert split.images.shape[-2:] == (32, 32) and split.images.dtype == torch.uint8, "held as stored"
    seen = []
    real = transforms.resize
    monkeypatch.setattr(transforms, "resize", lambda x, *a, **k: seen.append(len(x)) or real(x, *a, **k))
    train = build_loader(data, "train", cfg, CPU, LoaderSpec(8, train=True))
    assert train.images.shape[-2:] == (32, 32), "the loader holds the stored images"
    shapes = [tuple(x.shape) for x, _ in train.epoch(0)]
    assert shapes == [(8, 3, 96, 96)] * (36 // 8)
    assert seen and max(seen) <= 8, "only a batch at a time is resized, never the split"
    x, _ = next(iter(build_loader(data, "test", cfg, CPU, LoaderSpec(5))))
    expected = real(data.test.images[:5], (96, 96), "bilinear").float() / 255
    mean, std = torch.tensor(data.info.mean)[:, None, None], torch.tensor(data.info.std)[:, None, None]
    torch.testing.assert_close(x, (expected - mean) / std)


def test_shrinking_resizes_once_at_load_with_the_configured_interpolation(tmp_path):
    root = _cifar100(tmp_path / "cifar-100-python", n_train=8, n_test=4)
    for interpolation in ("bilinear", "bicubic"):
        cfg = DataConfig(name="cifar100", root=str(root), image_size=20, interpolation=interpolation, val_fraction=0.0)
        data = build_datasets(cfg)
        assert data.test.images.shape[-2:] == (20, 20)
        raw = build_datasets(cfg.model_copy(update={"image_size": None}))
        assert torch.equal(data.test.images, transforms.resize(raw.test.images, (20, 20), interpolation))


# ---------------------------------------------------------------------------------------------------------------
# data.interpolation


@pytest.mark.parametrize("size", [(20, 20), (48, 40)])
def test_bicubic_matches_torchs_antialiased_interpolate_and_differs_from_bilinear(size):
    x = torch.from_numpy(_smooth_image(32, 32, 0)).permute(2, 0, 1)[None].float() / 255
    for mode in ("bicubic", "bilinear"):
        expected = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        torch.testing.assert_close(transforms.resize(x, size, mode), expected, rtol=0, atol=0)
    gap = (transforms.resize(x, size, "bicubic") - transforms.resize(x, size, "bilinear")).abs()
    assert float(gap.max()) > 0.01, "bicubic is another filter"
    as_uint8 = transforms.resize((x * 255).round().to(torch.uint8), size, "bicubic")
    assert as_uint8.dtype == torch.uint8


def test_the_loader_resizes_with_the_configured_interpolation():
    images = torch.from_numpy(np.stack([_smooth_image(16, 16, i) for i in range(4)])).permute(0, 3, 1, 2)
    info = DatasetInfo("t", "classification", 2, ("a", "b"), (3, 28, 28), mean=(0.0,) * 3, std=(1.0,) * 3)
    split = TensorSplit(images.contiguous(), torch.tensor([0, 1, 0, 1]))
    batches = {}
    for mode in ("bilinear", "bicubic"):
        (batches[mode], _), *_ = DeviceLoader(split, info, CPU, LoaderSpec(4), interpolation=mode).epoch(0)
        expected = transforms.resize(split.images, (28, 28), mode).float() / 255
        torch.testing.assert_close(batches[mode], expected, rtol=0, atol=0)
    assert not torch.equal(batches["bilinear"], batches["bicubic"])


# ---------------------------------------------------------------------------------------------------------------
# data.eval_crop_pct: timm's crop_pct


@pytest.mark.parametrize(
    ("shape", "size", "crop_pct", "interpolation"),
    [((32, 32), 32, 0.875, "bilinear"), ((32, 32), 56, 0.875, "bicubic"), ((48, 40), 24, 0.9, "bicubic"),
     ((30, 44), 32, 1.0, "bilinear")],
)  # fmt: skip
def test_eval_crop_pct_equals_timms_eval_transform(shape, size, crop_pct, interpolation):
    image = _smooth_image(*shape, seed=size)
    timms = _timm_eval(image, size, crop_pct, interpolation)
    x = torch.from_numpy(image).permute(2, 0, 1)
    batched = transforms.eval_resize(x[None], size, interpolation, crop_pct)[0].float() / 255
    _within_a_grey_level(batched, timms, "batched (in-memory loaders)")
    per_image = torch.nn.Sequential(*resize_ops((size, size), interpolation, crop_pct))(x).float() / 255
    _within_a_grey_level(per_image, timms, "per image (streaming loader, predict)")


def test_the_eval_loader_applies_crop_pct_and_training_does_not():
    image = _smooth_image(32, 32, 5)
    split = TensorSplit(torch.from_numpy(image).permute(2, 0, 1)[None].repeat(8, 1, 1, 1), torch.zeros(8).long())
    info = DatasetInfo("t", "classification", 2, ("a", "b"), (3, 32, 32), mean=(0.0,) * 3, std=(1.0,) * 3)
    sizing = {"interpolation": "bicubic", "eval_crop_pct": 0.875}
    ((x, _),) = list(DeviceLoader(split, info, CPU, LoaderSpec(8), **sizing).epoch(0))
    _within_a_grey_level(x[0], _timm_eval(image, 32, 0.875, "bicubic"), "eval loader")
    ((train_x, _),) = list(DeviceLoader(split, info, CPU, LoaderSpec(8, train=True), **sizing).epoch(0))
    torch.testing.assert_close(train_x, split.images.float() / 255, rtol=0, atol=0, msg="training sees whole images")
