"""The study files shipped in configs/studies/, one per seed study: each reads and resolves every cell (its config
loads with every override, full and --short); the DeepLense study runs end to end in short mode on lensing images
that the test writes in simulate-lensing's `.npy` format into the cache, where the dataset looks first, the VOC
study on a VOCdevkit folder of JPEG images and XML annotations, with its per-tag logs, and the three CIFAR studies on
cifar-10-batches-py and cifar-100-python folders of Python-2 pickles, with their saliency grids."""

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
from visionbench.data.cifar import CIFAR10, CIFAR100, write_cifar_batch
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


def _write_cifar(root: Path, hundred: bool, per_file: int, test: int, seed: int = 0) -> None:
    """cifar-10-batches-py (five data batches, test_batch, batches.meta) or cifar-100-python (train, test, meta) as
    the official archives unpack: Python-2 pickles of uint8 rows, `per_file` images in each training file."""
    layout_ = CIFAR100 if hundred else CIFAR10
    folder = root / layout_.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in [*((f, per_file) for f in layout_.train_files), (layout_.test_file, test)]:
        labels = rng.integers(0, 100 if hundred else 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        batch |= {b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        if hundred:
            batch |= {b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels]}
        else:
            batch |= {b"labels": labels}
        write_cifar_batch(folder / name, batch)
    if hundred:
        meta = {b"fine_label_names": [f"fine_{i}".encode() for i in range(100)]}
        meta |= {b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}
    else:
        meta = {b"label_names": [f"class_{i}".encode() for i in range(10)], b"num_cases_per_batch": per_file}
    write_cifar_batch(folder / layout_.meta_file, meta)


def _short_study(tmp_path: Path, monkeypatch, capsys, stem: str) -> tuple[Path, list[str]]:
    """Run configs/studies/`stem`.yaml with --short on the data under tmp_path/data; its folder and README lines."""
    monkeypatch.setenv("VISIONBENCH_DATA", str(tmp_path / "data"))
    path = ROOT / "configs" / "studies" / f"{stem}.yaml"
    assert main(["study", str(path), "--short", "--out", str(tmp_path / stem)]) == 0, capsys.readouterr().out[-3000:]
    folder = tmp_path / f"{stem}-short"
    assert (folder / layout.STUDY_HTML).is_file()
    return folder, (folder / layout.STUDY_README).read_text(encoding="utf-8").splitlines()


def _table(lines: list[str], header: str) -> list[list[str]]:
    """The rows under the markdown table `header` (its first line), as lists of cells."""
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def _figures_present(folder: Path, names: list[str], md: str) -> None:
    for name in names:
        assert all((folder / layout.STUDY_FIGURES / f"{name}{suffix}").is_file() for suffix in (".png", ".svg", ".csv"))
        assert f"](figures/{name}.png)" in md, name


def _linked_images(folder: Path, md: str, part: str) -> list[str]:
    """The images the README shows whose path has `part`, each checked to exist."""
    links = [unquote(src) for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md) if part in src]
    assert all((folder / link).is_file() for link in links), links
    return links


def test_resnet5m_short_study_writes_its_accuracy_and_parameter_table(tmp_path: Path, monkeypatch, capsys) -> None:
    _write_cifar(tmp_path / "data", hundred=False, per_file=16, test=16)
    folder, lines = _short_study(tmp_path, monkeypatch, capsys, "001_resnet5m")
    header = "| skip kernels K | test accuracy | trainable parameters | epochs | time/run |"
    rows = _table(lines, header)
    assert [r[0] for r in rows] == [r"\[1, 1\]", r"\[3, 3\]", r"\[5, 5\]"]
    assert all(re.fullmatch(r"\d+\.\d\d%", r[1]) and r[3] == "1" for r in rows), rows
    assert rows[1][2] == "4,435,082"  # the study's cell: K = [3, 3], global pooling (P = [1, 1])
    assert "| \\[3, 3\\] | 90.70% |" in lines  # the reference table: the study's own figure
    _figures_present(folder, ["train_loss", "train_acc1"], "\n".join(lines))


def test_cifar10_lab_short_study_writes_its_results_table_curves_and_saliency(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    _write_cifar(tmp_path / "data", hundred=False, per_file=16, test=16)
    folder, lines = _short_study(tmp_path, monkeypatch, capsys, "002_cifar10_lab")
    rows = _table(lines, "| Model | Accuracy on test | Learning rate | Batch size | Epochs | Total params |")
    simple = ["Simple CNN, 10 epochs", "Simple CNN, 20 epochs", "Simple CNN, Yogi"]
    dropout = [f"CNN with dropout {rate}" for rate in (0.1, 0.2, 0.3, 0.5, 0.9)]
    others = ["VGG16 (frozen: backbone)", "ResNet18 (frozen: backbone)", "ViT (dropout 0.1, emb_dropout 0.1)"]
    assert [r[0] for r in rows] == simple + dropout + others
    assert all(re.fullmatch(r"\d+\.\d\d%", r[1]) and r[4] == "1" for r in rows), rows
    assert [r[2:4] for r in rows] == [["0.001", "32"]] * 3 + [["0.01", "32"]] * 6 + [["0.01", "64"], ["3e-05", "64"]]
    assert {r[5] for r in rows[:3]} == {"62,006"}  # the classic tutorial net: 5x5 convs 6/16, hidden 120 and 84
    assert {r[5] for r in rows[3:8]} == {"4,722,762"}
    assert rows[8][5] == "134,301,514"  # VGG-16 with its own classifier, a 10-class last layer
    _figures_present(folder, ["train_loss", "test_loss", "train_acc1"], "\n".join(lines))
    saliency = _linked_images(folder, "\n".join(lines), "/explain/saliency-test/")
    assert len({Path(link).parts[1] for link in saliency}) == 11, saliency  # every run's grids


def test_cifar100_short_study_writes_its_model_card_table_and_explanations(tmp_path: Path, monkeypatch, capsys) -> None:
    _write_cifar(tmp_path / "data", hundred=True, per_file=64, test=32)
    folder, lines = _short_study(tmp_path, monkeypatch, capsys, "003_cifar100_budget")
    header = "| Model | Top 1 | Top 5 | Parameter | Image size | Crop percent | Interpolation | time |"
    rows = _table(lines, header)
    vits = ["ViT-B/16", "ViT-B/16+R50", "ViT-B/16, 3 h budget", "ViT-B/16, 2 training hours"]
    assert [r[0] for r in rows] == [*vits, "ResNet-50, timm augmentation"]
    assert all(re.fullmatch(r"\d+\.\d{3}%", r[k]) for r in rows for k in (1, 2)), rows
    assert [r[4:7] for r in rows] == [
        ["32", "0.875", "bilinear"],
        ["32", "1.0", "bicubic"],
        ["32", "0.875", "bilinear"],
        ["32", "0.875", "bilinear"],
        ["32", "–", "bilinear"],
    ]
    md = "\n".join(lines)
    _figures_present(folder, ["val_acc1", "train_loss"], md)
    for method, runs in (("gradcam", 5), ("deeplift", 5), ("attention_rollout", 4)):
        grids = _linked_images(folder, md, f"/explain/{method}-test/")
        assert len({Path(link).parts[1] for link in grids}) == runs, (method, grids)
    assert "No attention_rollout grids of test: --method attention_rollout: resnet50 has no attention layers" in md
    assert str(tmp_path) not in md  # every path relative to the README
