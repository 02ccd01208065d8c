"""`visionbench predict` and `eval` on what users hand them: one image stored at every bit depth and format gives
one prediction (and the same normalised tensor as the streamed training data), class names and paths that look
like rich markup print as text, a folder stands for its images, and weights, dataset statistics or outputs that are
not finite are an error instead of a NaN. A 1-epoch small_cnn on a CSV manifest of grey PNGs; CPU, no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import refused as _refused
from cli_checks import train_yaml as _train_yaml
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.data.base import FileSplit
from visionbench.data.loader import LoaderSpec
from visionbench.data.stream import StreamLoader
from visionbench.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from visionbench.engine.inference import Preprocess, load_run

CLASSES = ("[/x]", "[red]", "plain")  # rich markup: "[/x]" crashed the table, "[red]" printed as nothing


def _image(seed: int, size: tuple[int, int] = (16, 16)) -> np.ndarray:
    """(H, W) uint8: a ramp over every grey level plus noise, so that a scaling error shows in the output."""
    H, W = size
    ramp = np.linspace(0, 255, H * W).reshape(H, W)
    noise = np.random.default_rng(seed).integers(-40, 40, (H, W))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """csv_manifest `path,label` of 24 grey PNGs whose labels are rich markup, streamed and decoded as grey."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "data").mkdir()
    rows = []
    for i in range(24):
        Image.fromarray(_image(i)).save(folder / "data" / f"{i}.png")
        rows.append(f"{i}.png,{CLASSES[i % 3]}")
    (folder / "data" / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    data = {
        "name": "csv_manifest",
        "grayscale": True,
        "kwargs": {"train": str(folder / "data" / "train.csv"), "test_fraction": 0.25},
    }
    return _train_yaml(folder, data)


def _every_depth(folder: Path, image: np.ndarray) -> dict[str, Path]:
    """`image` as 8- and 16-bit PNG, 16-bit and float TIFF, 16-bit PGM, uint8/uint16/float32/float64 .npy."""
    folder.mkdir(parents=True, exist_ok=True)
    wide = image.astype(np.uint16) * 257  # v/255 of the 16-bit full scale, exactly
    unit = image / 255
    writers = {
        "png8.png": lambda p: Image.fromarray(image).save(p),
        "png16.png": lambda p: Image.fromarray(wide).save(p),
        "tiff16.tiff": lambda p: Image.fromarray(wide).save(p),
        "float.tiff": lambda p: Image.fromarray(unit.astype(np.float32)).save(p),
        "pgm16.pgm": lambda p: p.write_bytes(b"P5\n%d %d\n65535\n" % image.shape[::-1] + wide.astype(">u2").tobytes()),
        "u8.npy": lambda p: np.save(p, image),
        "u16.npy": lambda p: np.save(p, wide),
        "f32.npy": lambda p: np.save(p, unit.astype(np.float32)),
        "f64.npy": lambda p: np.save(p, unit[None]),
    }
    paths = {}
    for name, write in writers.items():
        write(folder / name)
        paths[name] = folder / name
    return paths


def _predict(capsys, *args) -> list[dict]:
    capsys.readouterr()
    code = main(["predict", *map(str, args), "--json", "--top-k", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _probs(record: dict) -> torch.Tensor:
    return torch.tensor([p["probability"] for p in sorted(record["predictions"], key=lambda p: p["index"])])


# ---------------------------------------------------------------------------------------------------------------
# One image, every way of storing it


def test_the_same_image_at_every_bit_depth_and_format_gives_the_same_prediction(run, tmp_path, capsys):
    paths = _every_depth(tmp_path, _image(99))
    records = _predict(capsys, run, *paths.values())
    reference = _probs(records[0])
    assert records[0]["image"].endswith("png8.png")
    for name, record in zip(paths, records, strict=True):
        torch.testing.assert_close(_probs(record), reference, rtol=0, atol=1e-6, msg=name)
    # a uint8 array read as if in [0, 1] (the bug: 255x too bright) would change the prediction of a trained model
    np.save(tmp_path / "as_float.npy", _image(99).astype(np.float32))
    _refused(capsys, ["predict", run, tmp_path / "as_float.npy"], "float pixel values from 0 to 255")


def test_predict_sees_exactly_what_the_streamed_evaluation_of_the_same_file_sees(run, tmp_path):
    """Training and evaluation decode these files through the stream loader, predict through Preprocess: the same
    file must become the same normalised tensor, at the model's size and at another (resized)."""
    loaded = load_run(run)
    preprocess = Preprocess.from_info(loaded.info)
    for size in ((16, 16), (24, 20)):
        paths = list(_every_depth(tmp_path / f"{size[0]}x{size[1]}", _image(7, size)).values())
        loader = StreamLoader(
            FileSplit([str(p) for p in paths], torch.zeros(len(paths), dtype=torch.int64)),
            loaded.info,
            torch.device("cpu"),
            LoaderSpec(64),
            image_size=16,
            grayscale=True,
            num_workers=0,
        )
        ((batch, _),) = list(loader.epoch(0))
        for path, streamed in zip(paths, batch, strict=True):
            torch.testing.assert_close(preprocess(path), streamed, rtol=0, atol=1e-6, msg=str(path))


# ---------------------------------------------------------------------------------------------------------------
# Names are text, folders are their images


def test_labels_and_paths_that_look_like_rich_markup_print_as_text(run, tmp_path, capsys):
    image = tmp_path / "[bold]x[red].png"
    Image.fromarray(_image(5)).save(image)
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    for name in (*CLASSES, "[bold]x[red].png"):
        assert name in out, out


def test_a_folder_stands_for_the_image_files_directly_in_it_sorted(run, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.png", "sub/c.png"):
        Image.fromarray(_image(len(name))).save(folder / name)
    np.save(folder / "c.npy", _image(3))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    capsys.readouterr()
    assert main(["predict", str(run), str(folder), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [Path(json.loads(line)["image"]).name for line in out.splitlines()] == ["a.png", "b.png", "c.npy"]
    assert err.strip() == f"note: {folder}: the 3 images directly in it; 1 subfolder(s) not searched", err
    _refused(capsys, ["predict", run, folder / "sub" / "missing"], "no such image file")
    (tmp_path / "empty").mkdir()
    _refused(capsys, ["predict", run, tmp_path / "empty"], f"{tmp_path / 'empty'}: a folder with no image files")
    (folder / "d.png").write_text("not a png")  # refused: the note about subfolders does not join the error line
    _refused(capsys, ["predict", run, folder], f"{folder / 'd.png'}: cannot decode the image")


# ---------------------------------------------------------------------------------------------------------------
# Nothing that is not finite


def _copy(run: Path, folder: Path) -> Path:
    shutil.copytree(run, folder)
    return folder


def _scaled_weights(copy: Path, factor: float, nan: bool = False) -> None:
    """Rewrite best.safetensors and checkpoints/last with every weight scaled (or one NaN), digests valid."""
    loaded = load_run(copy)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            p.mul_(factor)
            if nan and name.endswith("bias"):
                p.view(-1)[0] = float("nan")
    save_weights(copy / layout.BEST, loaded.model)
    state = load_checkpoint(copy / layout.LAST)
    state["model"] = loaded.model.state_dict()
    state.pop("format")
    save_checkpoint(copy / layout.LAST, state)


@pytest.mark.parametrize("weights", ["best", "last"])
def test_non_finite_weights_are_refused_naming_the_file(run, tmp_path, capsys, weights):
    copy = _copy(run, tmp_path / "nan")
    _scaled_weights(copy, 1.0, nan=True)
    image = tmp_path / "a.png"
    Image.fromarray(_image(1)).save(image)
    where = copy / (layout.BEST if weights == "best" else layout.LAST)
    for command in (["predict", copy, image], ["eval", copy]):
        err = _refused(capsys, [*command, "--weights", weights], f"{where}")
        assert "NaN or infinite" in err, err


def test_outputs_that_overflow_are_an_error_never_a_nan_in_the_output(run, tmp_path, capsys):
    copy = _copy(run, tmp_path / "huge")
    _scaled_weights(copy, 1e30)  # finite weights whose products overflow float32
    image = tmp_path / "a.png"
    Image.fromarray(_image(1)).save(image)
    for json_flag in ([], ["--json"]):
        err = _refused(capsys, ["predict", copy, image, *json_flag], f"{image}: the model's output is not finite")
        assert "overflows" in err, err
    _refused(capsys, ["eval", copy], "the model's outputs are not finite (NaN or infinite) on")
    assert not list(copy.glob("eval-*.json")), "nothing written"
    _refused(capsys, ["explain", copy, "--method", "saliency", "--n", "2"], "test image 0: the model's output is not")
    _refused(capsys, ["analyze", copy, "--suite", "consistency", "--images", "10"], "the model's output is not finite")
    assert not (copy / layout.EXPLAIN).exists() and not (copy / layout.ANALYSIS).exists(), "nothing written"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("std", [0.0, 0.2, 0.2], "data_info.std [0.0, 0.2, 0.2] must be positive"),
        ("std", [0.2, -0.2, 0.2], "must be positive"),
        ("mean", [0.5, float("nan"), 0.5], "data_info.mean [0.5, nan, 0.5] holds values that are not finite"),
        ("std", [0.2, 1e400, 0.2], "holds values that are not finite"),  # json writes inf as Infinity
        ("std", [0.2, 0.3], "data_info.mean and std have 3 and 2 values"),
        ("input_size", [1, 0, 16], "is not (C, H, W) of positive integers"),
        ("class_names", ["a"], "1 class names for 3 outputs"),
    ],
)
def test_run_statistics_that_would_give_nan_are_refused_naming_summary_json(run, tmp_path, capsys, key, value, needle):
    copy = _copy(run, tmp_path / "stats")
    summary = json.loads((copy / layout.SUMMARY).read_text())
    summary["data_info"][key] = value
    (copy / layout.SUMMARY).write_text(json.dumps(summary))
    image = tmp_path / "a.png"
    Image.fromarray(_image(1)).save(image)
    err = _refused(capsys, ["predict", copy, image, "--json"], f"{copy / 'summary.json'}: ")
    assert needle in err, err


def test_eval_says_where_it_wrote_and_writes_strict_json(run, capsys):
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    path = run / "eval-test-none-best.json"
    assert out.splitlines()[-1] == f"wrote {path}", out
    result = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))
    assert result["split"] == "test" and 0 <= result["test/acc1"] <= 1, result


def test_analyze_plots_class_names_with_dollar_signs_as_text(tmp_path, monkeypatch):
    """matplotlib reads "$...$" as math text; a class named like `$\\foo{$` made the embeddings plot raise. The
    legend shows each name as written (an escape of our own on top of the figure's literal text showed `\\$`)."""
    from visionbench.report import plots
    from visionbench.report.plots import plot_embeddings

    drawn = []
    save = plots._save

    def spy(fig, path):
        result = save(fig, path)
        drawn.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return result

    monkeypatch.setattr(plots, "_save", spy)
    names = ("$\\foo{$", "[red]")
    points = torch.randn(6, 2)
    path = tmp_path / "embeddings.png"
    plot_embeddings(path, {"pca": points, "tsne": points}, torch.tensor([0, 1, 0, 1, 0, 1]), names)
    assert path.is_file() and path.stat().st_size > 0
    assert drawn == list(names), drawn
