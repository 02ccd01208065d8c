"""`visionbench models NAME` and `visionbench models --config CFG`: counting on the meta device, with no data on disk,
what a run of the config would build (its kwargs, its input size and outputs, its model.freeze)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_checks import refused

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.data import DatasetInfo
from visionbench.engine.assembly import create_run_model
from visionbench.engine.transfer import freeze_names, head_parameter_names
from visionbench.models import count_params, create_model, inspect_model
from visionbench.models._catalog import measure_model

SMOKE = "configs/smoke/synthetic.yaml"
VGG16_TRANSFER = "configs/cifar10/vgg16_transfer.yaml"  # torchvision:vgg16, freeze: backbone, pretrained: imagenet
VGG16_ROW = ("cifar10", "classification", "3x32x32", 10)


def _counted(capsys, argv: list) -> list[dict]:
    """The JSON lines `visionbench models ... --json` prints."""
    capsys.readouterr()
    code = main([*map(str, argv), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _no_data_and_no_weights(monkeypatch) -> None:
    """Counting reads no dataset file and loads no weights: any attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("counting tried to download data or to load weights")

    monkeypatch.setattr("visionbench.data.sources.download", refuse)
    monkeypatch.setattr("visionbench.engine.transfer.load_pretrained", refuse)
    monkeypatch.setattr("visionbench.engine.assembly.load_pretrained", refuse)
    monkeypatch.setattr("visionbench.engine.assembly.build_datasets", refuse)


def test_models_config_counts_the_parameters_and_flops_that_training_reports(tmp_path: Path, capsys) -> None:
    sets = ["--set", "trainer.epochs=1", "--set", f"trainer.out_dir={tmp_path}", "--set", "trainer.device=cpu"]
    assert main(["train", SMOKE, *sets]) == 0
    (summary_path,) = tmp_path.glob(f"*/*/{layout.SUMMARY}")
    summary = json.loads(summary_path.read_text())
    (row,) = _counted(capsys, ["models", "--config", SMOKE])
    info = summary["data_info"]
    assert (row["params"], row["flops"]) == (summary["params"], summary["flops"]), (row, summary)
    assert row["trainable"] == row["params"], row  # no model.freeze
    assert (row["input_size"], row["num_outputs"]) == ("x".join(map(str, info["input_size"])), info["num_outputs"])


def test_models_config_of_a_transfer_config_counts_without_its_data_and_freezes_as_a_run(monkeypatch, capsys) -> None:
    """CIFAR-10 is not on disk and its ImageNet weights are not here: neither is needed, and neither is touched."""
    _no_data_and_no_weights(monkeypatch)
    (row,) = _counted(capsys, ["models", "--config", VGG16_TRANSFER])
    # the reference: the run's model built for CIFAR-10's real shapes on the CPU, frozen by the same rule
    cfg = load_config(VGG16_TRANSFER)
    info = DatasetInfo("cifar10", "classification", 10, tuple(map(str, range(10))), (3, 32, 32))
    model = create_run_model(cfg, info)
    frozen = set(freeze_names(model, cfg.model.freeze, head_parameter_names(model)))
    trainable = sum(p.numel() for n, p in model.named_parameters() if n not in frozen)
    params, flops = inspect_model(model, info.input_size)
    assert (row["params"], row["trainable"], row["flops"]) == (params, trainable, flops), row
    assert 0 < row["trainable"] < row["params"] == count_params(model), row
    assert (row["dataset"], row["task"], row["input_size"], row["num_outputs"]) == VGG16_ROW, row
    assert row["pretrained_not_loaded"] == cfg.model.pretrained, row


def test_models_config_says_the_pretrained_weights_are_not_loaded(monkeypatch, capsys) -> None:
    _no_data_and_no_weights(monkeypatch)
    assert main(["models", "--config", VGG16_TRANSFER]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "model.pretrained (imagenet) is not loaded" in out and "vgg16" in out and "cifar10" in out, out


def test_models_config_follows_set_overrides_of_data_and_model(capsys) -> None:
    sets = ["--set", "data.kwargs.num_classes=7", "--set", "data.kwargs.size=20", "--set", "data.image_size=24"]
    sets += ["--set", "model.freeze=backbone"]
    (row,) = _counted(capsys, ["models", "--config", SMOKE, *sets])
    model = create_model("small_cnn", 7, in_chans=1, img_size=(24, 24))
    head = head_parameter_names(model)
    assert (row["input_size"], row["num_outputs"]) == ("1x24x24", 7), row
    assert row["params"] == count_params(model), row
    assert row["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in head), row


def test_models_config_with_a_name_counts_that_model_with_the_configs_sizes(capsys) -> None:
    (row,) = _counted(capsys, ["models", "timm:resnet10t", "--config", SMOKE, "--num-outputs", "3"])
    expected = create_model("timm:resnet10t", 3, in_chans=1, img_size=(16, 16))
    assert (row["model"], row["params"], row["num_outputs"]) == ("timm:resnet10t", count_params(expected), 3), row


@pytest.mark.parametrize(
    ("name", "size", "outputs", "params"),
    [
        ("timm:vit_base_patch16_224", "3x224x224", 1000, 86_567_656),  # timm's and torchvision's ViT-B/16
        ("timm:vit_base_r50_s16_384", "3x384x384", 1000, 98_950_952),  # ViT-B/16 + ResNet-50 stem: 98.95M at 384 px
    ],
)
def test_models_counts_a_hub_vit_exactly_on_the_meta_device(name, size, outputs, params, capsys) -> None:
    (row,) = _counted(capsys, ["models", name, "--input-size", size, "--num-outputs", outputs])
    assert (row["params"], row["trainable"]) == (params, params), row


@pytest.mark.parametrize("name", ["small_cnn", "resnet_cfg_small", "fastnet_s", "timm:resnet10t"])
def test_counting_on_the_meta_device_matches_a_model_built_on_the_cpu(name, capsys) -> None:
    (row,) = _counted(capsys, ["models", name, "--input-size", "3x32x32", "--num-outputs", "5"])
    params, flops = inspect_model(create_model(name, 5, in_chans=3, img_size=(32, 32)), (3, 32, 32), name)
    assert (row["params"], row["flops"]) == (params, flops), (row, params, flops)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "vit_b_16"])
def test_models_counts_torchvision_architectures_exactly(name) -> None:
    from torchvision.models import get_model_weights

    published = get_model_weights(name).IMAGENET1K_V1.meta["num_params"]  # torchvision's own figure of its weights
    figures = measure_model(f"torchvision:{name}", (3, 224, 224), 1000)
    assert (figures.params, figures.trainable) == (published, published), figures


def _config(folder: Path, data: dict) -> Path:
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": data, "model": {"name": "small_cnn"}}))
    return path


def test_models_config_of_an_image_folder_counts_its_class_folders(tmp_path: Path, capsys) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / "train" / name).mkdir(parents=True)
    config = _config(tmp_path, {"name": "image_folder", "root": str(tmp_path), "image_size": 32, "grayscale": True})
    (row,) = _counted(capsys, ["models", "--config", config])
    assert (row["input_size"], row["num_outputs"]) == ("1x32x32", 3), row
    assert row["params"] == count_params(create_model("small_cnn", 3, in_chans=1, img_size=(32, 32))), row


def test_models_config_whose_outputs_are_in_missing_files_asks_for_num_outputs(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, {"name": "image_folder", "root": str(tmp_path / "gone")})
    refused(capsys, ["models", "--config", config], "--num-outputs")
    (row,) = _counted(capsys, ["models", "--config", config, "--num-outputs", "4"])
    assert (row["input_size"], row["num_outputs"]) == ("3x224x224", 4), row  # streamed: the default 224 px
    config = _config(tmp_path, {"name": "deeplense", "kwargs": {"path": str(tmp_path / "gone")}})
    err = refused(capsys, ["models", "--config", config], "--input-size CxHxW and --num-outputs N")
    assert str(tmp_path / "gone") in err, err


def test_models_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    refused(capsys, ["models", "small_cnn", "--input-size", "1x4x4"], "small_cnn")  # too small for its convs
    refused(capsys, ["models", "--config", SMOKE, "--set", "data.kwargs.size=6"], "small_cnn")
    refused(capsys, ["models", "--config", SMOKE, "--set", "data.kwargs.sizes=6"], "sizes")
    refused(capsys, ["models", "--config", SMOKE, "--set", "model.freeze=[nothing*]"], "model.freeze")
    refused(capsys, ["models", "--config", tmp_path / "nope.yaml"], "nope.yaml")
    refused(capsys, ["models", "small_cnn", "--set", "model.name=vit"], "--config")
    refused(capsys, ["models", "small_cnn", "--filter", "res*"], "--filter")
    refused(capsys, ["models", "timm:no_such_net"], "no_such_net")


def test_models_marks_a_model_over_the_budget(capsys) -> None:
    (row,) = _counted(capsys, ["models", "--config", SMOKE, "--set", "model.max_params=1000"])
    assert row["note"] == "over the budget of 1,000 parameters" and row["params"] > 1000, row
    (row,) = _counted(capsys, ["models", "small_cnn", "--max-params", "1e9"])
    assert "note" not in row, row


def test_models_list_counts_trainable_parameters_on_the_meta_device(capsys) -> None:
    rows = _counted(capsys, ["models", "--filter", "small*", "--input-size", "1x28x28"])
    assert {r["model"] for r in rows} == {"small_cnn", "small_cnn_dropout"}, rows
    for r in rows:
        model = create_model(r["model"], 10, in_chans=1, img_size=(28, 28))
        assert r["params"] == r["trainable"] == count_params(model), r
        assert (r["input_size"], r["num_outputs"]) == ("1x28x28", 10), r


def test_models_table_shows_the_figures(capsys) -> None:
    assert main(["models", "--config", SMOKE]) == 0
    out = capsys.readouterr().out
    params = count_params(create_model("small_cnn", 4, in_chans=1, img_size=(16, 16)))
    assert f"{params:,}" in out and "trainable" in out and "synthetic (classification), input 1x16x16" in out, out
