"""A 1-epoch synthetic run's per-class tables, calibration entries and reliability diagram for val and test; then
`visionbench eval --calibrate` end to end: a temperature fitted on the validation split's logits alone, stored with
the digests of the weights and config it belongs to, used by `predict` and baked into `export`'s graph, and
refused with one line once the weights have changed. CPU, no network."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import refused
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.engine.checkpoint import read_weights
from visionbench.engine.inference import evaluate_run, load_run, split_images

ROOT = Path(__file__).resolve().parents[2]
N_VAL, N_TEST = 102, 128  # configs/smoke/synthetic.yaml: 512 train images, val_fraction 0.2, 128 test images


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """synthetic: 4 classes of 1x16x16 grey gratings, one epoch of small_cnn."""
    out = tmp_path_factory.mktemp("calibrate")
    sets = ["trainer.epochs=1", "trainer.device=cpu", f"trainer.out_dir={out}"]
    assert main(["train", str(ROOT / "configs/smoke/synthetic.yaml"), *sum((["--set", s] for s in sets), [])]) == 0
    (summary,) = out.glob(f"*/*/{layout.SUMMARY}")
    return summary.parent


@pytest.fixture(scope="module")
def calibrated(run, tmp_path_factory) -> Path:
    """A copy of `run` after `eval --calibrate` (the test split evaluated)."""
    copy = tmp_path_factory.mktemp("calibrated") / run.name
    shutil.copytree(run, copy)
    assert main(["eval", str(copy), "--calibrate"]) == 0
    return copy


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_per_class_tables_calibration_and_a_reliability_diagram_for_val_and_test(run):
    summary = json.loads((run / layout.SUMMARY).read_text())
    for split, n in (("val", N_VAL), ("test", N_TEST)):
        rows = _csv(run / layout.artifact(layout.PER_CLASS, split, ".csv"))
        assert [r["class"] for r in rows] == summary["data_info"]["class_names"]
        assert sum(int(r["support"]) for r in rows) == n
        confusion = json.loads((run / layout.artifact(layout.CONFUSION_MATRIX, split)).read_text())
        matrix = np.array(confusion["rows_true_cols_pred"])
        for i, row in enumerate(rows):  # recall = the diagonal over the true class's images
            assert float(row["recall"]) == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=1e-6)
        details = summary[f"{split}_details"]
        assert list(details["per_class"]) == [r["class"] for r in rows]
        assert all(p["true"] != p["predicted"] and p["count"] > 0 for p in details["most_confused"])
        reliability = json.loads((run / layout.artifact(layout.RELIABILITY, split)).read_text())
        assert sum(reliability["bins"]["count"]) == n
        assert details["calibration"]["ece"] == reliability["ece"] and 0 <= reliability["ece"] <= 1
        assert 0 <= details["calibration"]["brier"] <= 2
    assert (run / layout.PLOTS / f"{layout.RELIABILITY}.png").is_file(), "drawn at the end of training"


def test_eval_calibrate_stores_a_temperature_for_these_weights_and_reports_before_and_after(calibrated, capsys):
    record = json.loads((calibrated / layout.temperature("best")).read_text())
    assert record["fitted_on"] == "val" and record["images"] == N_VAL and record["weights"] == "best"
    assert record["nll_after"] <= record["nll_before"], "temperature scaling lowers the validation NLL"
    assert len(record["weights_sha256"]) == 64 and len(record["config_sha256"]) == 64
    result = json.loads((calibrated / layout.eval_result("test", "none", "best")).read_text())
    calibration = result["calibration"]
    assert calibration["temperature"] == pytest.approx(record["temperature"], abs=1e-6)
    assert calibration["in_sample"] is False and calibration["fitted_images"] == N_VAL
    assert calibration["before"]["nll"] == pytest.approx(result["test/loss"], abs=1e-5)
    assert set(calibration["after"]) == {"ece", "brier", "nll"}
    capsys.readouterr()
    assert main(["eval", str(calibrated), "--calibrate", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "calibration.in_sample\tTrue" in out and "in-sample" in out
    val = json.loads((calibrated / layout.eval_result("val", "none", "best")).read_text())["calibration"]
    assert val["after"]["nll"] <= val["before"]["nll"]


def test_the_temperature_is_fitted_on_the_validation_logits_alone(run, tmp_path, monkeypatch):
    import visionbench.tasks.calibration as calibration

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    seen = []
    fit = calibration.fit_temperature
    monkeypatch.setattr(calibration, "fit_temperature", lambda *a: seen.append(a[:2]) or fit(*a))
    evaluate_run(copy, "test", "none", "best", calibrate=True)
    ((logits, targets),) = seen
    loaded = load_run(copy)
    images, val_targets = split_images(loaded, "val", 10**6)
    assert len(targets) == N_VAL and torch.equal(targets.cpu(), val_targets)
    with torch.inference_mode():
        torch.testing.assert_close(logits.cpu(), loaded.model(images), rtol=1e-4, atol=1e-5)


def _png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8), "L").save(path)
    return path


def _predict(capsys, run_dir: Path, image: Path) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image), "--json"]) == 0
    out, err = capsys.readouterr()
    (record,) = [json.loads(line) for line in out.splitlines()]
    return record, err


def test_predict_divides_the_logits_by_the_stored_temperature(run, calibrated, tmp_path, capsys):
    image = _png(tmp_path / "x.png")
    raw, err = _predict(capsys, run, image)
    assert "temperature" not in raw and err == ""
    scaled, err = _predict(capsys, calibrated, image)
    temperature = json.loads((calibrated / layout.temperature("best")).read_text())["temperature"]
    assert scaled["temperature"] == temperature and "temperature" in err and layout.temperature("best") in err

    def probs(record: dict) -> torch.Tensor:
        return torch.tensor([p["probability"] for p in sorted(record["predictions"], key=lambda p: p["index"])])

    expected = (probs(raw).double().log() / temperature).softmax(-1)  # softmax(z / T) = softmax(log softmax(z) / T)
    torch.testing.assert_close(probs(scaled).double(), expected, rtol=1e-4, atol=1e-6)


def test_export_bakes_the_division_by_the_temperature_into_the_graph(calibrated, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    capsys.readouterr()
    assert main(["export", str(calibrated), "--format", "onnx", "--out", str(out)]) == 0
    assert "temperature" in capsys.readouterr().out
    temperature = json.loads((calibrated / layout.temperature("best")).read_text())["temperature"]
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["visionbench"])["temperature_applied"] == temperature
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    (got,) = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": images.numpy()}
    )
    with torch.inference_mode():
        expected = load_run(calibrated).model(images) / temperature
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-3, atol=1e-4)


def test_a_temperature_fitted_for_other_weights_is_refused_with_one_line(calibrated, tmp_path, capsys):
    from visionbench.engine.checkpoint import save_weights

    copy = tmp_path / calibrated.name
    shutil.copytree(calibrated, copy)
    model = load_run(copy).model
    tensors = read_weights(copy / layout.BEST)
    with torch.no_grad():
        model.load_state_dict({k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()})
    save_weights(copy / layout.BEST, model)  # as a resumed or retrained run would leave them
    image = _png(tmp_path / "x.png")
    refused(capsys, ["predict", copy, image], "fitted for other weights than the run's best weights now")
    refused(capsys, ["export", copy, "--format", "onnx", "--out", tmp_path / "m.onnx"], "fitted for other weights")
    assert not (tmp_path / "m.onnx").exists()


def test_calibrate_is_refused_with_test_time_augmentation(run, capsys):
    refused(capsys, ["eval", run, "--calibrate", "--tta", "flip"], "drop --tta flip")
    assert not (run / layout.temperature("best")).exists()


def test_calibrate_is_refused_for_a_run_without_a_validation_split(run, tmp_path, capsys):
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    config = (copy / layout.CONFIG).read_text()
    assert "val_fraction: 0.2\n" in config
    (copy / layout.CONFIG).write_text(config.replace("val_fraction: 0.2\n", "val_fraction: 0.0\n"))
    refused(capsys, ["eval", copy, "--calibrate"], "no val split (data.val_fraction is 0)")
    assert not (copy / layout.temperature("best")).exists()
    assert not (copy / layout.eval_result("test", "none", "best")).exists(), "nothing written"
