"""`analyze --suite shape_texture`: the cue-conflict shape bias of planted decisions, the proxy's transforms and
bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

from visionbench import layout
from visionbench.analysis import shape_texture as ST
from visionbench.cli.main import main

# Each stimulus, the run-class probabilities (class_0..class_3) the planted model gives it, and the cue that its
# decision follows under the class map below (cat: class_0, dog: 1, elephant: class_2 and class_3).
PLANTED = {
    "cat1-dog1.png": ((0.7, 0.1, 0.1, 0.1), "shape"),
    "cat2-dog2.png": ((0.1, 0.7, 0.1, 0.1), "texture"),
    "cat3-elephant1.png": ((0.4, 0.0, 0.3, 0.3), "shape"),
    "dog1-cat4.png": ((0.1, 0.1, 0.4, 0.4), "other"),
    "dog2-elephant2.png": ((0.1, 0.6, 0.2, 0.1), "shape"),
    "dog3-cat8.png": ((0.0, 0.9, 0.05, 0.05), "shape"),
    "elephant1-cat5.png": ((0.8, 0.1, 0.05, 0.05), "texture"),
    # elephant's mean is (0.45 + 0.05) / 2 = 0.25 < dog's 0.3: texture. Summed (0.5) it would be the shape.
    "elephant2-dog3.png": ((0.2, 0.3, 0.45, 0.05), "texture"),
    "cat6-cat7.png": ((0.1, 0.1, 0.4, 0.4), None),  # shape and texture alike: left out
}
CLASS_MAP = {"cat": "class_0", "dog": [1], "elephant": ["class_2", 3]}


def _level(k: int) -> int:
    return 20 + 20 * k  # each stimulus a flat grey image of its own level


def _write_stimuli(folder):
    """The planted stimuli as flat 8 x 8 grey PNGs, the cat ones in a subfolder as in the published set."""
    for k, name in enumerate(PLANTED):
        path = folder / "cat" / name if name.startswith("cat") else folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), _level(k)).save(path)
    return folder


class Planted(nn.Module):
    """Logits whose softmax is the planted probabilities of the stimulus whose grey level the image has."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std
        self.table = {_level(k): torch.tensor(p).clamp_min(1e-9).log() for k, (p, _) in enumerate(PLANTED.values())}

    def forward(self, x):
        levels = ((x.mean((1, 2, 3)) * self.std + self.mean) * 255).round().long().tolist()
        return torch.stack([self.table.get(v, torch.zeros(4)) for v in levels])


@pytest.fixture
def planted_run(tiny_run, monkeypatch):
    """The tiny run, loaded with the planted model in place of its own, wherever analyze loads it."""
    from visionbench.engine import inference

    load = inference.load_run

    def load_planted(run_dir, weights="best"):
        run = load(run_dir, weights)
        run.model = Planted(run.info.mean[0], run.info.std[0])
        return run

    monkeypatch.setattr(inference, "load_run", load_planted)
    return tiny_run


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_cue_conflict_shape_bias_is_what_the_planted_decisions_imply(planted_run, tmp_path):
    from visionbench.engine.inference import load_run

    folder = _write_stimuli(tmp_path / "stimuli")
    (tmp_path / "map.yaml").write_text(json.dumps(CLASS_MAP))
    run = load_run(planted_run)
    stimuli = ST.read_stimuli(folder, tmp_path / "map.yaml", run)
    assert stimuli.same_class == 1 and len(stimuli.files) == len(PLANTED) - 1
    decisions = ST.decide_stimuli(run, stimuli)
    cues = {r["file"].split("/")[-1]: r["cue"] for r in ST.decision_rows(stimuli, decisions)}
    assert cues == {name: cue for name, (_, cue) in PLANTED.items() if cue}
    rows = {r["shape_class"]: r for r in ST.shape_bias(stimuli, decisions)}
    # planted: 4 shape, 3 texture, 1 other decision
    assert rows[ST.OVERALL] == {
        "shape_class": ST.OVERALL,
        "images": 8,
        "shape_decisions": 4,
        "texture_decisions": 3,
        "other_decisions": 1,
        "shape_bias": 4 / 7,
    }
    assert [rows[c]["shape_bias"] for c in ("cat", "dog", "elephant")] == [2 / 3, 1.0, 0.0]


def test_analyze_writes_the_cue_conflict_and_proxy_tables_and_figures(planted_run, tmp_path, capsys):
    folder = _write_stimuli(tmp_path / "stimuli")
    (tmp_path / "map.json").write_text(json.dumps(CLASS_MAP))
    args = ["analyze", str(planted_run), "--suite", "shape_texture", "--images", "32"]
    assert main([*args, "--cue-conflict", str(folder), "--class-map", str(tmp_path / "map.json")]) == 0
    out = planted_run / layout.ANALYSIS
    overall = _rows(out / f"{layout.CUE_CONFLICT}.csv")[0]
    assert overall["shape_class"] == ST.OVERALL and float(overall["shape_bias"]) == pytest.approx(4 / 7)
    assert len(_rows(out / f"{layout.CUE_CONFLICT_DECISIONS}.csv")) == 8
    proxy = _rows(out / f"{layout.SHAPE_TEXTURE_PROXY}.csv")
    assert [r["probe"] for r in proxy] == ["clean"] + ["patch_shuffle"] * 4 + ["low_pass"] * 3 + ["edge_map"]
    for name in (layout.CUE_CONFLICT, layout.SHAPE_TEXTURE_PROXY):
        assert (out / f"{name}.png").stat().st_size > 1000, name
    printed = capsys.readouterr().out
    assert "shape/texture PROXY" in printed and "cue-conflict shape bias of 8 images" in printed


def test_patch_shuffling_at_grid_1_leaves_the_images_and_the_accuracy_unchanged(tiny_run):
    from visionbench.analysis.suite import Evaluator
    from visionbench.engine.inference import load_run, pixels, split_images

    run = load_run(tiny_run)
    images, targets = split_images(run, "test", 64)
    x = pixels(run.info, images)
    assert torch.equal(ST.patch_shuffle(x, 1, torch.Generator().manual_seed(0)), x)
    ev = Evaluator(run.model, run.task, torch.tensor(run.info.mean), torch.tensor(run.info.std))
    rows = ST.proxy(ev, x, targets)
    clean, grid_1 = rows[0], rows[1]
    assert (clean["probe"], grid_1["probe"], grid_1["level"]) == ("clean", "patch_shuffle", 1)
    assert grid_1["metric"] == clean["metric"] == ev.score(x.clone(), targets)


@pytest.mark.parametrize("grid, size", [(2, 16), (4, 16), (8, 16), (3, 16), (8, 28), (5, 7)])
def test_patch_shuffling_permutes_whole_patches_and_keeps_each_images_pixels(grid, size):
    x = torch.randn(6, 3, size, size + 1, generator=torch.Generator().manual_seed(1))
    out = ST.patch_shuffle(x, grid, torch.Generator().manual_seed(0))
    for a, b in zip(x, out, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values), "the same pixels, moved"
    ph, pw = size // grid, (size + 1) // grid
    edge_h, edge_w = ph * grid, pw * grid
    assert torch.equal(out[..., edge_h:, :], x[..., edge_h:, :]) and torch.equal(out[..., edge_w:], x[..., edge_w:])
    patches = {
        tuple(x[0, :, i : i + ph, j : j + pw].flatten().tolist())
        for i in range(0, edge_h, ph)
        for j in range(0, edge_w, pw)
    }
    moved = {
        tuple(out[0, :, i : i + ph, j : j + pw].flatten().tolist())
        for i in range(0, edge_h, ph)
        for j in range(0, edge_w, pw)
    }
    assert moved == patches, "each patch of the output is a whole patch of the input"
    assert not torch.equal(out, x), "shuffled"


def test_edge_maps_and_low_pass_keep_the_shape():
    x = torch.zeros(2, 3, 12, 12)
    x[0, :, :, 6:] = 1.0  # a vertical step
    edges = ST.edge_map(x)
    assert edges.shape == x.shape and edges.min() >= 0 and edges.max() == 1
    assert edges[0, 0, :, 5:7].min() == 1 and edges[0, 0, :, :5].abs().sum() == 0 and edges[0, 0, :, 7:].sum() == 0
    assert edges[1].abs().sum() == 0, "a flat image has no edge (nor a division by zero)"
    blurred = ST.low_pass(x, 1.0)
    assert math.isclose(float(blurred[0].mean()), 0.5, abs_tol=1e-5) and 0 < blurred[0, 0, 0, 5] < 0.5


def test_a_grid_finer_than_the_image_is_refused():
    from visionbench.errors import UserError

    with pytest.raises(UserError, match="does not fit 4 x 4"):
        ST.patch_shuffle(torch.zeros(1, 1, 4, 4), 8, torch.Generator())


def _bad(tmp_path, kind: str) -> list[str]:
    folder = _write_stimuli(tmp_path / "stimuli")
    mapping = tmp_path / "map.yaml"
    mapping.write_text(json.dumps(CLASS_MAP))
    if kind == "missing folder":
        return ["--cue-conflict", str(tmp_path / "nowhere")]
    if kind == "file name":
        Image.new("L", (8, 8), 0).save(folder / "cat-dog.png")
    if kind == "unknown run class":
        mapping.write_text("cat: class_0\ndog: [zebra]\nelephant: [2]\n")
    if kind == "unmapped stimulus class":
        mapping.write_text("cat: class_0\ndog: [1]\n")
    if kind == "class twice":
        mapping.write_text("cat: class_0\ndog: [0]\nelephant: [2]\n")
    if kind == "not a mapping":
        mapping.write_text("[cat, dog]\n")
    if kind == "no map, foreign names":
        return ["--cue-conflict", str(folder)]
    return ["--cue-conflict", str(folder), "--class-map", str(mapping)]


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing folder", "nowhere: no such folder"),
        ("file name", "cat-dog.png: expected a cue-conflict file name <shape><n>-<texture><m>"),
        ("unknown run class", "map.yaml: 'dog': no run class 'zebra'; the run's classes are class_0, class_1"),
        ("unmapped stimulus class", "texture class 'elephant' has no run classes in"),
        ("class twice", "run class 'class_0' stands for both 'cat' and 'dog'"),
        ("not a mapping", "map.yaml: expected a mapping of at least two stimulus class names"),
        ("no map, foreign names", "is no class of the run; map it with --class-map"),
    ],
)
def test_bad_cue_conflict_input_is_one_line_exit_2_and_writes_nothing(tiny_run, tmp_path, capsys, kind, expected):
    before = sorted((tiny_run / layout.ANALYSIS).glob("*")) if (tiny_run / layout.ANALYSIS).is_dir() else []
    args = ["analyze", str(tiny_run), "--suite", "shape_texture", *_bad(tmp_path, kind)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    after = sorted((tiny_run / layout.ANALYSIS).glob("*")) if (tiny_run / layout.ANALYSIS).is_dir() else []
    assert after == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--suite", "failures", "--cue-conflict", "x"], "--cue-conflict: only with --suite shape_texture"),
        (["--suite", "shape_texture", "--class-map", "m.yaml"], "--class-map: only with --cue-conflict DIR"),
    ],
)
def test_cue_conflict_options_out_of_place_are_one_line(tiny_run, capsys, args, expected):
    assert main(["analyze", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
