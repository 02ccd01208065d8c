"""Transfer learning and the parameter budget: pretrained weights from a run directory or a file, the head replaced,
the first conv adapted, freezing (weights and BatchNorm statistics), unfreezing, per-group learning rates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import OptimConfig
from visionbench.engine.optim import param_groups
from visionbench.engine.transfer import Unfreeze, freeze_names, head_parameter_names, load_pretrained, set_frozen
from visionbench.errors import UserError
from visionbench.models import create_model

ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, name: str, *overrides: str) -> Path:
    """A short small_cnn run on 3,000 Fashion-MNIST images; returns its run directory."""
    out = tmp_path / "runs"
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        "data: {name: fashion-mnist, subset: 3000, val_fraction: 0.0}\n"
        "model: {name: small_cnn}\n"
        "optim: {name: sgd, lr: 0.05, nesterov: true}\n"
        f"trainer: {{epochs: 2, batch_size: 64, device: cpu, out_dir: {out}, progress: lines}}\n"
    )
    assert main(["train", str(config), *[x for o in overrides for x in ("--set", o)]]) == 0
    (run,) = (out / name).iterdir()
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / layout.BEST))


def test_transfer_to_other_classes_keeps_the_frozen_backbone_and_trains_the_new_head(tmp_path: Path) -> None:
    source = _train(tmp_path, "tops", "data.kwargs.classes=[0, 1, 2, 3, 4]")
    target = _train(
        tmp_path,
        "shoes",
        "data.kwargs.classes=[5, 6, 7, 8, 9]",
        f"model.pretrained={source}",
        "model.freeze=backbone",
    )
    before, after = _weights(source), _weights(target)
    head = {"fc.weight", "fc.bias"}
    assert set(before) == set(after)
    for key in set(before) - head:
        assert torch.equal(before[key], after[key]), f"frozen {key} changed"
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    summary = json.loads((target / layout.SUMMARY).read_text())
    assert summary["final"]["test/acc1"] > 0.6, "the new head learns on frozen features (chance: 0.2)"
    config = (target / layout.CONFIG).read_text()
    assert "pretrained:" in config and "freeze: backbone" in config


def test_unfreeze_at_epoch_trains_the_backbone_again(tmp_path: Path) -> None:
    source = _train(tmp_path, "a", "trainer.epochs=1")
    target = _train(tmp_path, "b", f"model.pretrained={source}", "model.freeze=[conv*]", "trainer.unfreeze_at_epoch=2")
    before, after = _weights(source), _weights(target)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"]), "unfrozen at epoch 2, then trained"


def test_load_pretrained_skips_the_head_and_adapts_the_first_conv_to_one_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = create_model("resnet18", 1000, in_chans=3, img_size=(32, 32))
    path = tmp_path / "rgb.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    grey = create_model("resnet18", 5, in_chans=1, img_size=(32, 32))
    fresh_head = grey.fc.weight.clone()
    report = load_pretrained(grey, str(path), "resnet18")
    assert report.head == ["fc.weight", "fc.bias"] and report.random == [] and report.mismatched == []
    assert report.adapted == [("conv1.weight", (64, 3, 7, 7), (64, 1, 7, 7))]
    assert len(report.loaded) == len(grey.state_dict()) - 2 and report.warning("resnet18") is None
    assert torch.equal(grey.fc.weight, fresh_head), "the head keeps its fresh init"
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))  # timm's rule
    torch.testing.assert_close(grey.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
    torch.testing.assert_close(grey.bn1.running_mean, rgb.bn1.running_mean)


def test_tensors_that_do_not_fit_stay_as_initialised_and_are_listed_with_both_shapes(tmp_path: Path) -> None:
    small = create_model("resnet18", 10, small_stem=True)  # a 3x3 stem
    path = tmp_path / "small.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    standard = create_model("resnet18", 10)  # a 7x7 stem
    fresh_stem = standard.conv1.weight.clone()
    report = load_pretrained(standard, str(path), "resnet18")
    assert report.mismatched == [("conv1.weight", (64, 3, 3, 3), (64, 3, 7, 7))], "skipped, not forced"
    assert torch.equal(standard.conv1.weight, fresh_stem)
    torch.testing.assert_close(standard.layer1[0].conv1.weight, small.layer1[0].conv1.weight)
    warning = report.warning("resnet18")
    total = len(standard.state_dict())  # the head counts too: loaded + head + skipped
    assert (
        f"only {total - 3} of {total} tensors of resnet18" in warning
        and "conv1.weight 64x3x3x3 in the file, 64x3x7x7" in warning
    )
    assert "\n" not in warning

    safetensors.torch.save_file({"conv1.weight": small.conv1.weight.contiguous()}, str(path))
    partial = create_model("resnet18", 10, small_stem=True)
    report = load_pretrained(partial, str(path), "resnet18")
    assert (
        report.loaded == ["conv1.weight"] and "bn1.weight" in report.random and report.head == ["fc.weight", "fc.bias"]
    )
    assert not any(k.endswith("num_batches_tracked") for k in report.random), "a step counter is no weight"
    assert torch.equal(partial.conv1.weight, small.conv1.weight)
    assert f"{len(report.random)} not in the file, left random (e.g. bn1.weight)" in report.warning("resnet18")

    safetensors.torch.save_file({"fc.weight": small.fc.weight.contiguous()}, str(path))  # the head alone: nothing
    with pytest.raises(UserError, match=r"no tensor of .*small.safetensors matches resnet18 by name and shape"):
        load_pretrained(create_model("resnet18", 10, small_stem=True), str(path), "resnet18")
    for bad, message in [
        (tmp_path, "neither a run directory nor an experiment folder"),
        (tmp_path / "x.ckpt", r"expected a .safetensors, .pth, .pt or .bin file, a run directory"),
    ]:
        with pytest.raises(UserError, match=message):
            load_pretrained(standard, str(bad), "resnet18")


def test_timm_weights_offline_are_one_line_and_exit_2(tmp_path: Path) -> None:
    # `model.pretrained: imagenet` for a registered timm architecture, end to end. The clock starts after the heavy
    # imports (5-30 s on a loaded 2-vCPU machine, no part of the error); the old error came after 52-62 s of retries.
    timed = (
        "import sys, time, timm, visionbench.engine.train, visionbench.cli.train\n"
        "from visionbench.cli.main import main\n"
        "clock, start = sys.argv.pop(1), time.monotonic()\n"
        "try:\n    main()\nfinally:\n    open(clock, 'w').write(str(time.monotonic() - start))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT")}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path)}
    env |= {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    command = [sys.executable, "-c", timed, str(tmp_path / "seconds"), "train", "configs/smoke/synthetic.yaml"]
    for setting in ("model.name=resnet18", "model.pretrained=imagenet", f"trainer.out_dir={tmp_path}/runs"):
        command += ["--set", setting]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "timm's weights resnet18.a1_in1k are not in the Hugging Face cache" in done.stderr, done.stderr
    assert "hf download timm/resnet18.a1_in1k model.safetensors" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists(), "nothing written"
    seconds = float((tmp_path / "seconds").read_text())
    assert seconds < 15, f"{seconds:.1f} s from the command to its error (config, data and model built on the way)"


def test_freeze_patterns_batchnorm_statistics_and_unfreeze() -> None:
    model = create_model("resnet18", 3, in_chans=1, small_stem=True)
    names = freeze_names(model, ["layer1*", "conv1"])
    assert names and all(n.startswith(("layer1.", "conv1.")) for n in names)
    set_frozen(model, names, frozen=True)
    model.train()
    assert not model.layer1[0].bn1.training and model.layer2[0].bn1.training, "frozen BN stays in eval mode"
    stats = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    assert torch.equal(model.layer1[0].bn1.running_mean, stats)
    assert model.layer1[0].conv1.weight.grad is None and model.layer2[0].conv1.weight.grad is not None
    Unfreeze(model, names, at=2).before_epoch(type("S", (), {"epoch": 1})())
    assert model.layer1[0].conv1.weight.requires_grad and type(model.layer1[0].bn1) is nn.BatchNorm2d
    with pytest.raises(UserError, match="pattern 'head.*' matches no module; expected 'backbone'.*conv1"):
        freeze_names(model, ["head.*"])
    assert set(freeze_names(model, "backbone")) | head_parameter_names(model) == {
        n for n, _ in model.named_parameters()
    }


def test_backbone_lr_scale_applies_to_all_but_the_head() -> None:
    model = create_model("small_cnn", 10)
    head = head_parameter_names(model)
    assert head == {"fc.weight", "fc.bias"}
    groups = param_groups(model, OptimConfig(backbone_lr_scale=0.1, norm_bias_lr_scale=2.0), head)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["fc.weight"])] == 1.0 and scale[id(named["fc.bias"])] == 2.0
    assert scale[id(named["conv1.weight"])] == pytest.approx(0.1) and scale[id(named["conv1.bias"])] == pytest.approx(
        0.2
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.max_params=1000"], "model.max_params: small_cnn has 5,600 parameters, over the budget of 1,000"),
        (["trainer.unfreeze_at_epoch=2"], "trainer.unfreeze_at_epoch: needs model.freeze"),
        (["model.freeze=[nothing*]"], "model.freeze: pattern 'nothing*' matches no module"),
    ],
)
def test_bad_transfer_settings_exit_2_before_anything_is_written(tmp_path: Path, capsys, overrides, message) -> None:
    args = ["train", str(ROOT / "configs/smoke/synthetic.yaml"), "--set", f"trainer.out_dir={tmp_path}"]
    assert main([*args, *[x for o in overrides for x in ("--set", o)]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_an_experiment_folder_as_pretrained_loads_its_newest_finished_run(tmp_path: Path) -> None:
    from visionbench.engine.transfer import _read_source

    experiment = tmp_path / "runs" / "source"
    for stamp, status, value in [("20260101-000000", "finished", 1.0), ("20260102-000000", "finished", 2.0)] + [
        ("20260103-000000", "running", 3.0)  # newest, but unfinished: not a source
    ]:
        run = experiment / f"{stamp}-small_cnn-digits"
        (run / "checkpoints").mkdir(parents=True)
        (run / layout.CONFIG).write_text("model: {name: small_cnn}\n")
        (run / layout.SUMMARY).write_text(json.dumps({"status": status}))
        safetensors.torch.save_file({"w": torch.full((2,), value)}, str(run / layout.BEST))
    tensors, where = _read_source(str(experiment), "small_cnn")
    assert tensors["w"].tolist() == [2.0, 2.0] and "20260102-000000" in where
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="neither a run directory nor an experiment folder with a finished run"):
        _read_source(str(empty), "small_cnn")
