"""The study files shipped in configs/studies/, one per seed study: each reads and resolves every cell (its config
loads with every override, full and --short); the DeepLense study runs end to end in short mode on lensing images
that the test writes in simulate-lensing's `.npy` format into the cache, where the dataset looks first, and the VOC
study on a VOCdevkit folder of JPEG images and XML annotations, with its per-tag logs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.data import lensing_sim
from visionbench.study import read_study

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
SEEDS = ["000_deeplense", "001_resnet5m", "002_cifar10_lab", "003_cifar100_budget", "004_voc"]


def test_one_study_file_per_seed_study() -> None:
    assert [p.stem for p in STUDIES] == SEEDS


@pytest.mark.parametrize("short", [False, True], ids=["full", "short"])
@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_each_shipped_study_resolves_every_cell_with_tables_and_figures(path: Path, short: bool) -> None:
    study = read_study(path, short=short)
    assert study.out == Path("runs/studies") / (path.stem + ("-short" if short else ""))
    assert study.spec.tables, "a study's README has its table"
    configs = [cell.config.resolve() for cell in study.cells]
    assert all(c.is_relative_to(ROOT / "configs") and c.is_file() for c in configs), configs
    epochs = [run.cfg.trainer.epochs for _, run in study.runs]
    assert max(epochs) <= 2 if short else min(epochs) >= 1, epochs
    if short:  # nothing downloaded in short mode
        assert all(run.cfg.model.pretrained in (None, "") for _, run in study.runs)


def _write_simulation(preset: str, n: int, size: int, seed: int = 0) -> None:
    """`n` images of `size` px in simulate-lensing's format (images.npy, targets.npy, meta.json) where the dataset
    finds a finished simulation of `preset`: rings whose radius grows with log10 m_a, plus noise."""
    folder = lensing_sim.cache_path(preset, n, seed)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    targets = rng.uniform(-24.0, -22.0, n).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(xx, yy)[None] - (size / 8) * (2 + targets[:, None, None] + 24)
    images = np.exp(-(radius**2) / 2.0) * 50 + rng.normal(0, 2, (n, size, size))
    np.save(folder / "images.npy", images[:, None].astype(np.float32))
    np.save(folder / "targets.npy", targets)
    meta = {"format": lensing_sim.FORMAT, "version": lensing_sim.FORMAT_VERSION, "preset": preset, "n": n}
    meta |= {"seed": seed, "variant": "regression", "substructure": "axion", "target": "log10_m_a"}
    meta |= {"image_shape": [1, size, size], "complete": True}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_deeplense_short_study_runs_end_to_end_and_writes_its_table_and_scatter_grid(tmp_path: Path, capsys) -> None:
    path = ROOT / "configs" / "studies" / "000_deeplense.yaml"
    n = read_study(path, short=True).cells[0].runs[0].cfg.data.kwargs["n"]
    # small images keep ten cells within seconds each; the ViT's patches (15 at Model I, 8 after) still tile them
    for preset, size in (("model_i", 30), ("model_ii", 16), ("model_iii", 16)):
        _write_simulation(preset, n, size)
    out = tmp_path / "deeplense"
    assert main(["study", str(path), "--short", "--out", str(out)]) == 0, capsys.readouterr().out[-3000:]
    folder = tmp_path / "deeplense-short"
    md = (folder / layout.STUDY_README).read_text(encoding="utf-8")
    lines = md.splitlines()
    header = lines.index("| NN Architecture | Model I | Model II | Model III | Epoch |")
    rows = lines[header + 2 : header + 7]
    assert [r.split(" | ")[0] for r in rows] == ["| ResNet34", "| Pure VIT", "| CNN-T", "| MobileNet V2", "| CvT-13"]
    value = r"\d+\.\d{4}"
    assert re.fullmatch(rf"\| ResNet34 \| {value} \| {value} \| {value} \| 1 \|", rows[0]), rows[0]
    v, patch = value, r"\((?:15\\\*15|8\\\*8)\)"  # markdown writes `*` as `\*`
    assert re.fullmatch(rf"\| Pure VIT \| {v} {patch} \| {v} {patch} \| {v} {patch} \| 1 \|", rows[1]), rows[1]
    assert rows[1].count("(15\\*15)") == 1 and rows[1].count("(8\\*8)") == 2, rows[1]
    assert re.fullmatch(rf"\| CNN-T \|  \|  \| {value} \| 1 \|", rows[2]), rows[2]
    assert re.fullmatch(rf"\| CvT-13 \|  \| {value} \| {value} \| 1 \|", rows[4]), rows[4]
    assert "| ResNet34 (pretrained on ImageNet) | 0.2849 | 0.2162 | 0.1332 |" not in md  # short mode: random init
    assert "| ResNet34 | 0.2849 | 0.2162 | 0.1332 |" in md  # the reference table: the study's own figures
    grid = lines.index("| arch | Model I | Model II | Model III |")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", "\n".join(lines[grid : grid + 7]))
    assert len(images) == 10 and all((folder / src.replace("%3D", "=")).is_file() for src in images), images
    assert (folder / layout.STUDY_HTML).is_file()


def _write_voc(root: Path, trainval: int, test: int, seed: int = 0) -> None:
    """VOCdevkit/VOC2007 as the official archive unpacks: JPEGImages, Annotations (two objects an image, of four
    classes, so that every class has positives in every split) and ImageSets/Main's trainval and test lists."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    classes = ["cat", "dog", "car", "person"]
    ids = [f"{i:06d}" for i in range(1, trainval + test + 1)]
    for k, image_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        names = (classes[k % 4], classes[(k + 1 + k // 4) % 4])
        objects = "".join(
            f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>20</xmax>"
            "<ymax>20</ymax></bndbox></object>"
            for n in names
        )
        size = "<size><width>40</width><height>30</height><depth>3</depth></size>"
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{size}{objects}</annotation>"
        )
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids[:trainval]))
    (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in ids[trainval:]))


def test_voc_short_study_writes_its_results_table_curves_and_per_tag_logs(tmp_path: Path, monkeypatch, capsys) -> None:
    _write_voc(tmp_path / "data", trainval=40, test=8)
    monkeypatch.setenv("VISIONBENCH_DATA", str(tmp_path / "data"))
    path = ROOT / "configs" / "studies" / "004_voc.yaml"
    assert main(["study", str(path), "--short", "--out", str(tmp_path / "voc")]) == 0, capsys.readouterr().out[-3000:]
    folder = tmp_path / "voc-short"
    md = (folder / layout.STUDY_README).read_text(encoding="utf-8")
    lines = md.splitlines()
    header = "| Model version | Loss (Train) | Average precision (Train) | Loss (Valid) | Average precision (Valid) |"
    rows = lines[lines.index(header + " Epochs |") + 2 :][:3]
    for version, row in zip((1, 2, 3), rows, strict=True):
        assert re.fullmatch(rf"\| ResNet18 version {version}( \| \d\.\d{{4}}){{4}} \| 1 \|", row), row
    assert "| ResNet18 version 1 | 3.1240 | 0.6809 | 3.7812 | 0.5852 |" in md  # the reference table
    for name in ("train_loss", "train_ap", "valid_loss", "valid_ap"):
        assert all((folder / layout.STUDY_FIGURES / f"{name}{suffix}").is_file() for suffix in (".png", ".svg", ".csv"))
    logs = sorted(folder.glob("runs/*/plots/tag_logs/run-resnet18-tag-valid_ap.csv"))
    assert len(logs) == 3 and logs[0].read_text().splitlines()[0] == "Wall time,Step,Value"
    linked = re.findall(r"\]\((runs/[^)]+-tag-[a-z_]+\.csv)\)", md)
    assert len(linked) == 3 * 4 and all((folder / unquote(link)).is_file() for link in linked), linked
