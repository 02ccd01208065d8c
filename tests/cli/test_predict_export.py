"""`visionbench predict` and `visionbench export` on 1-epoch small_cnn runs of each task (synthetic gratings, CSV
manifests of tiny PNGs written here): output structure, the run's own preprocessing reproduced independently
(Pillow, the eval path's model and dataset statistics), regression values in target units, ONNX against PyTorch,
and bad input as one line with exit status 2. CPU, no network."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import train_yaml as _train_yaml
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.data import build_datasets
from visionbench.engine.assembly import build_model
from visionbench.engine.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[2]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _png(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    """A random `mode` PNG of size (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    W, H = size
    shape = (H, W, 3) if mode == "RGB" else (H, W)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _only_run(out: Path) -> Path:
    (summary,) = out.glob(f"*/*/{layout.SUMMARY}")
    return summary.parent


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    """synthetic: 4 classes of 1x16x16 grey gratings, held in memory."""
    out = tmp_path_factory.mktemp("classification")
    sets = ["trainer.epochs=1", "trainer.device=cpu", f"trainer.out_dir={out}"]
    assert main(["train", str(ROOT / "configs/smoke/synthetic.yaml"), *sum((["--set", s] for s in sets), [])]) == 0
    return _only_run(out)


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> Path:
    """csv_manifest `path,labels`: RGB PNGs streamed at 16x16 with ImageNet statistics; threshold 0.4."""
    folder = tmp_path_factory.mktemp("multilabel")
    labels = ["cat", "dog", "cat;dog", "", "bird;cat", "dog;bird"]
    rows = [f"{i}.png,{labels[i % len(labels)]}" for i in range(24)]
    for i in range(24):
        _png(folder / "data" / f"{i}.png", (8, 8), seed=i)
    (folder / "data" / "train.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    data = {"name": "csv_manifest", "kwargs": {"train": str(folder / "data" / "train.csv"), "test_fraction": 0.25}}
    return _train_yaml(folder, data, task={"threshold": 0.4})


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    """csv_manifest `path,target`, targets near 1000 (far from the standardised scale), decoded as grey."""
    folder = tmp_path_factory.mktemp("regression")
    rows = [f"{i}.png,{1000 + i / 4:.2f}" for i in range(24)]
    for i in range(24):
        _png(folder / "data" / f"{i}.png", (12, 12), seed=100 + i)
    (folder / "data" / "train.csv").write_text("path,target\n" + "\n".join(rows) + "\n")
    data = {"name": "csv_manifest", "grayscale": True, "kwargs": {"train": str(folder / "data" / "train.csv")}}
    return _train_yaml(folder, data)


def _predict_json(capsys, *args: str) -> list[dict]:
    capsys.readouterr()
    code = main(["predict", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def _eval_model(run: Path):
    """The model and dataset facts the way `visionbench eval` builds them (the dataset rebuilt from its config)."""
    cfg = load_config(run / layout.CONFIG)
    data = build_datasets(cfg.data)
    model, _, _ = build_model(cfg, data)
    load_weights(run / layout.BEST, model)
    return model.eval(), data.info


def _standardise(image: Image.Image, mean, std) -> torch.Tensor:
    """A Pillow image (already converted and sized) as the (1, C, H, W) batch evaluation feeds the model."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def _by_index(record: dict, key: str = "probability") -> torch.Tensor:
    return torch.tensor([p[key] for p in sorted(record["predictions"], key=lambda p: p["index"])])


# ---------------------------------------------------------------------------------------------------------------
# predict


def test_predict_classification_matches_the_eval_model_on_independently_preprocessed_images(
    classification_run, tmp_path, capsys
):
    same = _png(tmp_path / "same.png", (16, 16), seed=1, mode="L")  # the training size: no resize
    larger = _png(tmp_path / "larger.png", (48, 32), seed=2)  # RGB, 3x2 larger: converted to grey and resized
    records = _predict_json(capsys, str(classification_run), str(same), str(larger), "--top-k", "10")
    model, info = _eval_model(classification_run)
    assert [r["image"] for r in records] == [str(same), str(larger)]
    for record in records:
        probs = [p["probability"] for p in record["predictions"]]
        assert record["task"] == "classification" and len(probs) == 4, "--top-k above the class count: every class"
        assert probs == sorted(probs, reverse=True), "ranked by probability"
        assert sum(probs) == pytest.approx(1.0, abs=1e-5), "softmax over all classes sums to 1"
        assert {p["label"] for p in record["predictions"]} == set(info.class_names)
        assert all(info.class_names[p["index"]] == p["label"] for p in record["predictions"])

    with torch.no_grad():
        exact = model(_standardise(Image.open(same).convert("L"), info.mean, info.std)).softmax(-1)[0]
        resized = Image.open(larger).convert("L").resize((16, 16), Image.BILINEAR)  # Pillow's antialiased bilinear
        approx = model(_standardise(resized, info.mean, info.std)).softmax(-1)[0]
    torch.testing.assert_close(_by_index(records[0]), exact, rtol=1e-5, atol=1e-6)
    # torchvision's antialiased resize and Pillow's differ by at most one grey level in a few pixels
    torch.testing.assert_close(_by_index(records[1]), approx, rtol=0, atol=2e-3)

    top2 = _predict_json(capsys, str(classification_run), str(larger), "--top-k", "2")[0]["predictions"]
    assert top2 == records[1]["predictions"][:2], "--top-k 2 is the first two of the full ranking"


def test_predict_prints_a_table_by_default(classification_run, tmp_path, capsys):
    image = _png(tmp_path / "img.png", (20, 20), seed=3)
    capsys.readouterr()
    assert main(["predict", str(classification_run), str(image), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("image", "rank", "class", "probability", "img.png")), out
    assert sum("class_" in line for line in out.splitlines()) == 3, out


def test_predict_without_data_info_in_the_summary_rebuilds_it_from_the_dataset(classification_run, tmp_path, capsys):
    old = tmp_path / "old_run"
    shutil.copytree(classification_run, old)
    summary = json.loads((old / layout.SUMMARY).read_text())
    del summary["data_info"]  # a run written before summary.json held it
    (old / layout.SUMMARY).write_text(json.dumps(summary))
    image = str(_png(tmp_path / "img.png", (30, 30), seed=4))
    new_records = _predict_json(capsys, str(classification_run), image)
    old_records = _predict_json(capsys, str(old), image)
    assert [r["predictions"] for r in old_records] == [r["predictions"] for r in new_records]


def test_predict_multilabel_gives_every_label_and_which_are_over_the_threshold(multilabel_run, tmp_path, capsys):
    same = _png(tmp_path / "same.png", (16, 16), seed=5)  # the run's image_size: no resize
    other = _png(tmp_path / "other.jpg", (30, 22), seed=6)  # a JPEG of another size
    records = _predict_json(capsys, str(multilabel_run), str(same), str(other))
    model, info = _eval_model(multilabel_run)
    assert info.class_names == ("bird", "cat", "dog")
    for record in records:
        assert record["task"] == "multilabel" and record["threshold"] == 0.4, "the run's task.threshold"
        assert [p["label"] for p in record["predictions"]] == list(info.class_names), "every label, in class order"
        for p in record["predictions"]:
            assert 0.0 <= p["probability"] <= 1.0 and p["positive"] == (p["probability"] > 0.4), p
    with torch.no_grad():
        expected = model(_standardise(Image.open(same).convert("RGB"), IMAGENET_MEAN, IMAGENET_STD)).sigmoid()[0]
    torch.testing.assert_close(_by_index(records[0]), expected, rtol=1e-5, atol=1e-6)


def test_predict_regression_values_are_in_target_units(regression_run, tmp_path, capsys):
    image = _png(tmp_path / "rgb.png", (16, 16), seed=7)  # RGB, for a run that decodes grey
    (record,) = _predict_json(capsys, str(regression_run), str(image))
    summary = json.loads((regression_run / layout.SUMMARY).read_text())
    mean, std = summary["task_stats"]["target_mean"][0], summary["task_stats"]["target_std"][0]
    assert 1000 < mean < 1006 and 0 < std < 3, summary["task_stats"]
    (prediction,) = record["predictions"]
    assert record["task"] == "regression" and prediction["label"] == "target"
    assert 950 < prediction["value"] < 1050, "de-standardised: near the targets (~1003), not near 0"
    model, _ = _eval_model(regression_run)
    grey_mean, grey_std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)  # the streaming loader's grey stats
    with torch.no_grad():
        z = model(_standardise(Image.open(image).convert("L"), grey_mean, grey_std))[0, 0].item()
    assert prediction["value"] == pytest.approx(z * std + mean, rel=1e-6)


def test_predict_deeplense_min_max_scales_each_image_and_reads_release_files(tmp_path, capsys):
    folder, rng = tmp_path / "axion", np.random.default_rng(0)
    folder.mkdir()
    for i in range(20):  # the DeepLense release format: [image, m_a in eV] object arrays
        item = np.empty(2, dtype=object)
        item[0], item[1] = rng.normal(5.0, 2.0, (16, 16)).astype(np.float32), 10.0 ** rng.uniform(-24, -22)
        np.save(folder / f"axion_sim_{i}.npy", item, allow_pickle=True)
    data = {"name": "deeplense", "image_size": None, "num_workers": None, "kwargs": {"path": str(folder)}}
    run = _train_yaml(tmp_path, data)
    plain = rng.normal(100.0, 30.0, (24, 24)).astype(np.float32)  # another size and scale: min-max makes it fit
    np.save(tmp_path / "plain.npy", plain)
    records = _predict_json(capsys, str(run), str(folder / "axion_sim_0.npy"), str(tmp_path / "plain.npy"))
    model, info = _eval_model(run)
    stats = json.loads((run / layout.SUMMARY).read_text())["task_stats"]
    mean, std = stats["target_mean"][0], stats["target_std"][0]

    def expected(image: torch.Tensor) -> float:  # (H, W) at the model's size -> log10 m_a
        x = (image - image.min()) / (image.max() - image.min())
        z = model(((x - info.mean[0]) / info.std[0])[None, None])[0, 0].item()
        return z * std + mean

    release = torch.from_numpy(np.load(folder / "axion_sim_0.npy", allow_pickle=True)[0])
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(plain)[None, None], size=(16, 16), mode="bilinear", antialias=True, align_corners=False
    )[0, 0]
    with torch.no_grad():
        values = [expected(release), expected(resized)]
    for record, value in zip(records, values, strict=True):
        (prediction,) = record["predictions"]
        assert prediction["label"] == "log10_m_a" and -26 < prediction["value"] < -20, "in dex, not standardised"
        assert prediction["value"] == pytest.approx(value, abs=1e-4)

    old = tmp_path / "old_run"  # written before data_info held the dataset's conventions: they come from data/
    shutil.copytree(run, old)
    summary = json.loads((old / layout.SUMMARY).read_text())
    assert (
        summary["data_info"].pop("per_image_minmax") is True
        and summary["data_info"].pop("display_denormalized") is False
    )
    (old / layout.SUMMARY).write_text(json.dumps(summary))
    assert _predict_json(capsys, str(old), str(folder / "axion_sim_0.npy"), str(tmp_path / "plain.npy")) == records


def _one_line_error(capsys, code: int, needle: str) -> None:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert captured.out == "", "nothing is printed before the error"


def test_predict_bad_input_is_one_line_naming_the_file_and_exit_2(classification_run, tmp_path, capsys):
    run = str(classification_run)
    good = str(_png(tmp_path / "good.png", (16, 16), seed=8))
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    capsys.readouterr()
    _one_line_error(capsys, main(["predict", run, good, str(tmp_path / "gone.png")]), f"{tmp_path / 'gone.png'}")
    _one_line_error(capsys, main(["predict", run, good, str(text)]), f"{text}: cannot decode the image")
    _one_line_error(capsys, main(["predict", str(tmp_path), good]), f"{tmp_path}: not a run directory")
    _one_line_error(capsys, main(["predict", run, good, "--top-k", "0"]), "--top-k")
    _one_line_error(capsys, main(["predict", run, good, "--weights", "final"]), "--weights")
    bare = tmp_path / "bare_run"
    bare.mkdir()
    shutil.copy(classification_run / layout.CONFIG, bare)
    shutil.copy(classification_run / layout.SUMMARY, bare)
    _one_line_error(capsys, main(["predict", str(bare), good]), f"{bare / layout.BEST}: weights file not found")
    _one_line_error(
        capsys, main(["predict", str(bare), good, "--weights", "last"]), f"{bare / layout.LAST}: checkpoint not found"
    )


# ---------------------------------------------------------------------------------------------------------------
# export


def test_export_onnx_matches_pytorch_with_a_dynamic_batch(classification_run, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export needs pip install 'visionbench[export]'")
    onnx = pytest.importorskip("onnx", reason="ONNX export needs pip install 'visionbench[export]'")
    capsys.readouterr()
    assert main(["export", str(classification_run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    path = classification_run / "export" / "model.onnx"
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"], "no temp files left"
    assert f"{path}: ONNX opset 18" in out and "max abs difference to PyTorch" in out, out
    reported = float(out.split("max abs difference to PyTorch ")[1].split()[0])
    assert reported <= 1e-4, out

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inputs,) = session.get_inputs()
    assert inputs.name == "images" and inputs.shape[1:] == [1, 16, 16] and isinstance(inputs.shape[0], str)
    model, info = _eval_model(classification_run)
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(images), rtol=1e-3, atol=1e-4)
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    saved = json.loads(metadata["visionbench"])
    assert saved["task"] == "classification" and saved["data_info"]["class_names"] == list(info.class_names)
    assert saved["data_info"]["mean"] == list(info.mean), "what a consumer needs to standardise its images"
    assert saved["resize"] == {"interpolation": "bilinear", "eval_crop_pct": None}, "and to resize them"

    custom = tmp_path / "out" / "last.onnx"
    assert main(["export", str(classification_run), "--format", "onnx", "--weights", "last", "--out", str(custom)]) == 0
    assert custom.is_file() and f"{custom}: ONNX" in capsys.readouterr().out


def test_export_bad_input_is_one_line_and_exit_2(classification_run, tmp_path, monkeypatch, capsys):
    run = str(classification_run)
    capsys.readouterr()
    _one_line_error(capsys, main(["export", run, "--format", "tflite"]), "supported formats: onnx")
    _one_line_error(capsys, main(["export", str(tmp_path), "--format", "onnx"]), f"{tmp_path}: not a run directory")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    _one_line_error(capsys, main(["export", run, "--format", "onnx"]), "pip install 'visionbench[export]'")


def test_explain_attributes_each_label_of_a_multilabel_run(multilabel_run, capsys):
    assert main(["explain", str(multilabel_run), "--method", "saliency", "--n", "6", "--target", "true"]) == 0
    panels = json.loads((multilabel_run / layout.EXPLAIN / "saliency-test" / "panels.json").read_text())
    assert list(panels) == ["labels"] and panels["labels"], panels
    names = ["bird", "cat", "dog"]
    for p in panels["labels"]:  # one panel per image and true label, the label named in the caption
        assert f" {names[p['target']]} (true label" in p["caption"], p
    assert (multilabel_run / layout.EXPLAIN / "saliency-test" / "labels.png").is_file()


def test_explain_attributes_the_output_of_a_regression_run(regression_run, capsys):
    assert main(["explain", str(regression_run), "--method", "gradcam", "--n", "4", "--split", "val"]) == 0
    panels = json.loads((regression_run / layout.EXPLAIN / "gradcam-val" / "panels.json").read_text())
    assert list(panels) == ["samples"] and [p["target"] for p in panels["samples"]] == [0] * len(panels["samples"])
    true_values = [float(p["caption"].split("true ")[1].split(",")[0]) for p in panels["samples"]]
    preds = [float(p["caption"].split("pred ")[1]) for p in panels["samples"]]
    assert all(999 <= v <= 1007 for v in true_values), true_values  # target units, not standardised
    assert all(abs(v) > 100 for v in preds), preds
