"""`trainer.epochs: 0`: the model as built (its pretrained weights) evaluated, no training, in an ordinary run
directory that eval, report, predict and a resume read as they read a trained run's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import config_from_raw, load_config
from visionbench.data import build_datasets
from visionbench.engine.assembly import create_run_model, eval_loader
from visionbench.engine.runtime import seed_everything
from visionbench.errors import UserError

# 8 classes: enough for top-5 accuracy (the classification task adds acc5 above 5 classes)
DATA = "data: {name: synthetic, val_fraction: 0.2, kwargs: {num_classes: 8, n_train: 256, n_test: 96, size: 16}}\n"


def _config(tmp_path: Path, name: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        DATA + "model: {name: small_cnn}\n"
        "optim: {name: sgd, lr: 0.05, nesterov: true}\n"
        f"trainer: {{epochs: 2, batch_size: 64, device: cpu, out_dir: {tmp_path / 'runs'}, progress: lines, "
        "checkpoint_every_minutes: null}\n"
    )
    return config


def _train(tmp_path: Path, name: str, *overrides: str) -> Path:
    assert main(["train", str(_config(tmp_path, name)), *[x for o in overrides for x in ("--set", o)]]) == 0
    (run,) = (tmp_path / "runs" / name).iterdir()
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / layout.SUMMARY).read_text())


def _test_metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k.startswith("test/")}


@pytest.fixture(scope="module")
def as_built(tmp_path_factory) -> Path:
    """One run of 0 epochs (a training config with EMA: accepted, and the EMA is the model as built), shared by the
    tests that read it."""
    tmp_path = tmp_path_factory.mktemp("as_built")
    return _train(tmp_path, "as_built", "trainer.epochs=0", "trainer.ema_decay=0.9")  # EMA: a copy, as built


def test_zero_epochs_writes_a_complete_run_directory_with_one_epoch_0_row_and_no_nan(as_built: Path) -> None:
    for name in (layout.CONFIG, layout.ENV, layout.METRICS, layout.SUMMARY, layout.BEST, layout.LAST):
        assert (as_built / name).is_file(), f"{name} missing from a run of 0 epochs"
    assert (as_built / layout.artifact(layout.CONFUSION_MATRIX)).is_file()
    with (as_built / layout.METRICS).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "0" and rows[0]["step"] == "0", rows
    assert "train/loss" not in rows[0] and "lr" not in rows[0], f"nothing trained, no training columns: {rows[0]}"
    assert {"val/acc1", "val/acc5", "test/acc1", "test/acc5", "test/loss"} <= set(rows[0]), rows[0]
    summary = _summary(as_built)
    assert summary["status"] == "finished" and summary["epochs"] == 0 and summary["epochs_completed"] == 0
    assert summary["final"]["epoch"] == 0 and summary["best"]["epoch"] == 0
    assert _test_metrics(summary["best"]) == _test_metrics(summary["final"]), "best and final are one model"
    for path in (layout.METRICS, layout.SUMMARY):
        assert "nan" not in (as_built / path).read_text().lower(), f"{path} holds a NaN"
    last = torch.load(as_built / layout.LAST, weights_only=True)["model"]
    best = safetensors.torch.load_file(str(as_built / layout.BEST))
    assert best.keys() == last.keys()
    for key in best:
        assert torch.equal(best[key], last[key]), f"best and last weights differ at {key}: one model, as built"


def test_zero_epochs_measures_the_seeded_model_as_built(as_built: Path) -> None:
    """The weights are those of the model built from the seed, and the metrics are that model's, computed here with
    plain torch (no torchmetrics, no engine loop)."""
    cfg = load_config(as_built / layout.CONFIG)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)  # as `train` does before it builds anything
    data = build_datasets(cfg.data)
    model = create_run_model(cfg, data.info).eval()
    saved = safetensors.torch.load_file(str(as_built / layout.BEST))
    for key, value in model.state_dict().items():
        assert torch.equal(saved[key], value), f"{key}: the saved weights are not the seeded model's initial ones"
    with torch.no_grad():
        batches = list(eval_loader(data, "test", cfg, torch.device("cpu")))
        logits = torch.cat([model(images) for images, _ in batches])
    targets = torch.cat([t for _, t in batches])
    n = len(targets)
    top5 = logits.topk(5, dim=-1).indices
    expected = {
        "test/acc1": round(int((logits.argmax(-1) == targets).sum()) / n, 6),
        "test/acc5": round(int((top5 == targets[:, None]).any(-1).sum()) / n, 6),
        "test/loss": float(F.cross_entropy(logits, targets)),
    }
    final = _summary(as_built)["final"]
    assert final["test/acc1"] == expected["test/acc1"] and final["test/acc5"] == expected["test/acc5"], (
        final,
        expected,
    )
    assert final["test/loss"] == pytest.approx(expected["test/loss"], abs=2e-6), (final, expected)


def test_eval_of_a_zero_epoch_run_reproduces_its_test_metrics_with_top1_and_top5(as_built: Path, capsys) -> None:
    summary = _summary(as_built)
    for weights in ("best", "last"):
        assert main(["eval", str(as_built), "--weights", weights]) == 0
        printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines() if "\t" in line)
        assert {"test/acc1", "test/acc5"} <= set(printed), f"eval prints top-1 and top-5: {printed}"
        result = json.loads((as_built / layout.eval_result("test", "none", weights)).read_text())
        assert _test_metrics(result) == _test_metrics(summary["final"]), f"--weights {weights}"


def test_report_lists_a_zero_epoch_run(as_built: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(as_built), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(f"| {as_built.name} |"))
    acc = _summary(as_built)["final"]["test/acc1"]
    assert f"acc1 {100 * acc:.2f} %" in row and "| 0/0 |" in row and "finished" in row, row


def test_resuming_a_zero_epoch_run_says_it_finished_and_changes_no_result(as_built: Path, capsys) -> None:
    before = _summary(as_built)
    metrics = (as_built / layout.METRICS).read_text()
    assert main(["train", "--resume", str(as_built)]) == 0
    out = capsys.readouterr().out
    assert "finished already" in out and "after its evaluation (0 epochs)" in out, out
    after = _summary(as_built)
    assert after["status"] == "finished" and after["final"] == before["final"] and after["best"] == before["best"]
    assert (as_built / layout.METRICS).read_text() == metrics


def test_zero_epochs_says_so_before_it_starts_and_leaves_an_undefined_metric_out(tmp_path: Path, capsys) -> None:
    """One test image: its one-vs-rest AUROC is undefined (one class only), which is an absent key, never a NaN."""
    run = _train(tmp_path, "one", "trainer.epochs=0", "task.auroc=true", "data.test_subset=1")
    out = capsys.readouterr().out
    assert "0 epochs: evaluating the model as built on val and test, no training" in out, out
    final = _summary(run)["final"]
    assert "val/auroc" in final and "test/auroc" not in final and "test/acc1" in final, final
    assert "nan" not in (run / layout.METRICS).read_text().lower()


def test_zero_epochs_on_synset_folders_tests_the_whole_val_folder_in_sorted_synset_order(tmp_path: Path) -> None:
    """The README's ImageNet layout, shrunk: train/ and val/ of synset folders, `test_dir: val`, no validation split.
    The test split is every image of val/, the classes are numbered in sorted synset order (ImageNet's class index
    order), and the images are standardised with ImageNet's mean and std."""
    from PIL import Image

    synsets = ["n15075141", "n01440764", "n02102040", "n01443537", "n03000684", "n04592741"]  # not in order
    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 1), ("val", 2)):
        for wnid in synsets:
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (12, 14, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "imagenet" / split / wnid / f"{wnid}_{i}.JPEG")
    config = tmp_path / "imagenet_val.yaml"
    config.write_text(
        f"data: {{name: image_folder, root: {tmp_path / 'imagenet'}, kwargs: {{test_dir: val}}, val_fraction: 0.0, "
        "image_size: 16, num_workers: 0}\n"
        f"trainer: {{epochs: 0, device: cpu, out_dir: {tmp_path / 'runs'}, progress: lines}}\n"
    )
    assert main(["train", str(config)]) == 0
    (run,) = (tmp_path / "runs" / "imagenet_val").iterdir()
    summary = _summary(run)
    info = summary["data_info"]
    assert info["class_names"] == sorted(synsets), "class index order: the sorted synset ids"
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225], "ImageNet's statistics"
    assert not any(k.startswith("val/") for k in summary["final"]), "no validation split"
    assert main(["eval", str(run)]) == 0
    result = json.loads((run / layout.eval_result("test", "none", "best")).read_text())
    assert result["images"] == 2 * len(synsets), "the test split is the whole val/ folder"
    assert _test_metrics(result) == _test_metrics(summary["final"]) and "test/acc5" in result


@pytest.mark.parametrize(
    "key, value", [("trainer.time_budget_minutes", "5"), ("trainer.unfreeze_at_epoch", "1")], ids=["budget", "unfreeze"]
)
def test_zero_epochs_refuses_settings_that_need_training_in_one_line(key: str, value: str) -> None:
    with pytest.raises(UserError) as e:
        config_from_raw({}, ["trainer.epochs=0", f"{key}={value}"], "cfg.yaml")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"cfg.yaml: {key}:") and "trainer.epochs is 0" in message
    config_from_raw({}, ["trainer.epochs=1", f"{key}={value}"], "cfg.yaml")  # with training it stands


def test_zero_epochs_accepts_the_training_settings_it_ignores() -> None:
    """Schedules, warmup, EMA and the rest are built but never step: a training config runs with epochs=0 alone."""
    cfg = config_from_raw(
        {"optim": {"schedule": "one_cycle", "warmup_epochs": 2.0}, "trainer": {"ema_decay": 0.9, "epochs": 0}}
    )
    assert cfg.trainer.epochs == 0
    with pytest.raises(UserError, match="trainer.epochs: expected greater than or equal to 0"):
        config_from_raw({"trainer": {"epochs": -1}})


def test_keep_head_reproduces_a_saved_models_test_accuracy_exactly(tmp_path: Path) -> None:
    """A trained run loaded back with model.keep_head and evaluated as it is (0 epochs) gives the test metrics the
    run reported for those weights (its best): the classifier is loaded too, not replaced."""
    source = _train(tmp_path, "source", "trainer.epochs=2")
    again = _train(tmp_path, "again", "trainer.epochs=0", f"model.pretrained={source}", "model.keep_head=true")
    saved, loaded = (safetensors.torch.load_file(str(run / layout.BEST)) for run in (source, again))
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), f"{key} differs after keep_head: the whole model is loaded"
    expected = _test_metrics(_summary(source)["best"])
    assert expected and _test_metrics(_summary(again)["final"]) == expected
