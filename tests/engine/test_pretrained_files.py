"""model.pretrained from a user's own files: torch.save'd state_dicts in the usual layouts (a notebook's, a training
script's checkpoint, DataParallel / torch.compile prefixes), a key map, a pickled call refused unrun, weights of
another image size or patch size resampled, keep_head, and what a run records of it all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.engine.train import train
from visionbench.engine.transfer import load_pretrained, transfer_tensors
from visionbench.errors import UserError
from visionbench.models import create_model

ROOT = Path(__file__).resolve().parents[2]


def _tiny_vit(img: int, patch: int = 4, classes: int = 10) -> nn.Module:
    return create_model(
        "vit", classes, in_chans=1, img_size=(img, img), patch_size=patch, embed_dim=32, depth=1, num_heads=2
    )


def _fresh(name: str = "small_cnn", seed: int = 1, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, 10, **kwargs)


def _assert_equal_but_head(model: nn.Module, reference: dict[str, torch.Tensor], head: set[str]) -> None:
    for key, value in model.state_dict().items():
        if key not in head:
            assert torch.equal(value, reference[key]), f"{key} differs from the file"


def test_a_torchvision_state_dict_saved_as_pth_loads_bit_equal(tmp_path: Path) -> None:
    """A notebook's `torch.save(model.state_dict(), "model.pth")` of torchvision's ResNet-18."""
    torch.manual_seed(0)
    saved = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "model.pth"
    torch.save(saved.state_dict(), path)
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    head = {"fc.weight", "fc.bias"}
    fresh_head = model.fc.weight.clone()
    report = load_pretrained(model, str(path), "resnet18", head=head)
    _assert_equal_but_head(model, saved.state_dict(), head)
    assert torch.equal(model.fc.weight, fresh_head) and sorted(report.head) == sorted(head)
    assert report.random == [] and report.mismatched == [] and report.unused == []

    kept = torchvision.models.resnet18(num_classes=10)
    report = load_pretrained(kept, str(path), "resnet18", head=head, keep_head=True)
    _assert_equal_but_head(kept, saved.state_dict(), set())
    assert report.head == [] and len(report.loaded) == len(saved.state_dict())


def _layouts(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, object]:
    averaged = torch.optim.swa_utils.AveragedModel(model)  # module.<name> and n_averaged
    return {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3, "hyper_parameters": {"lr": 0.1}},  # Lightning's keys
        "model": {"epoch": 3, "model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        "model_state_dict": {"model_state_dict": sd, "loss": 0.25},
        "nested once": {"model": {"state_dict": sd}},
        "DataParallel": nn.DataParallel(model).state_dict(),
        "torch.compile": torch.compile(model).state_dict(),  # compiled lazily: state_dict alone compiles nothing
        "DDP around torch.compile": {f"module._orig_mod.{k}": v for k, v in sd.items()},
        "AveragedModel": averaged.state_dict(),
    }


@pytest.mark.parametrize(
    "layout_name",
    [
        "bare",
        "state_dict",
        "model",
        "model_state_dict",
        "nested once",
        "DataParallel",
        "torch.compile",
        "DDP around torch.compile",
        "AveragedModel",
    ],
)
def test_the_usual_checkpoint_layouts_load_bit_equal(tmp_path: Path, layout_name: str) -> None:
    saved = _fresh(seed=0)
    sd = saved.state_dict()
    saved_file = tmp_path / "checkpoint.pt"
    obj = _layouts(sd, saved)[layout_name]
    if layout_name in ("DataParallel", "torch.compile"):
        prefix = "module." if layout_name == "DataParallel" else "_orig_mod."
        assert all(k.startswith(prefix) for k in obj), "the wrapper's own names"
    torch.save(obj, saved_file)
    model = _fresh()
    report = load_pretrained(model, str(saved_file), "small_cnn")
    _assert_equal_but_head(model, sd, {"fc.weight", "fc.bias"})
    assert report.random == [] and report.mismatched == [] and report.warning("small_cnn") is None
    assert report.unused == (["n_averaged"] if layout_name == "AveragedModel" else [])


@pytest.mark.parametrize("suffix", [".bin", ".pth"])
def test_a_legacy_or_bin_file_of_torch_save_is_read_too(tmp_path: Path, suffix: str) -> None:
    """Hugging Face's pytorch_model.bin is torch.save's zip; files of torch < 1.6 are the legacy format."""
    sd = _fresh(seed=0).state_dict()
    path = tmp_path / f"weights{suffix}"
    torch.save(sd, path, _use_new_zipfile_serialization=suffix == ".bin")
    model = _fresh()
    load_pretrained(model, str(path), "small_cnn")
    _assert_equal_but_head(model, sd, {"fc.weight", "fc.bias"})


def test_a_key_map_renames_the_files_keys_and_a_miss_suggests_one(tmp_path: Path) -> None:
    sd = _fresh(seed=0).state_dict()
    path = tmp_path / "backbone.pth"
    torch.save({f"backbone.{k}": v for k, v in sd.items()}, path)
    with pytest.raises(UserError) as e:
        load_pretrained(_fresh(), str(path), "small_cnn")
    message = str(e.value)
    assert (
        "no tensor of" in message and "named like 'backbone.conv1.weight', the model's like 'conv1.weight'" in message
    )
    assert "model.pretrained_key_map: [['^backbone\\.', '']] would match" in message and "\n" not in message

    model = _fresh()
    report = load_pretrained(model, str(path), "small_cnn", key_map=[["^backbone\\.", ""]])
    _assert_equal_but_head(model, sd, {"fc.weight", "fc.bias"})
    assert report.random == [] and report.unused == []
    # pairs apply in order, each to what the one before produced
    load_pretrained(_fresh(), str(path), "small_cnn", key_map=[["^backbone\\.", "x."], ["^x\\.", ""]])
    with pytest.raises(UserError, match=r"model.pretrained_key_map: .*both 'backbone.conv1.weight' and .* become"):
        load_pretrained(_fresh(), str(path), "small_cnn", key_map=[["^backbone\\.conv1\\.\\w+", "w"]])


def test_a_pickled_call_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "notebook.pth"
    torch.save({"model": _fresh().state_dict(), "extra": Payload()}, path)
    with pytest.raises(UserError) as e:
        load_pretrained(_fresh(), str(path), "small_cnn")
    message = str(e.value)
    assert message.startswith(f"model.pretrained: {path}: refused: not a state_dict") and "system" in message
    assert "\n" not in message and "weights_only" not in message, message
    assert not marker.exists(), "the payload ran"

    torch.save(_fresh(), path)  # the whole model pickled: its class would have to be imported and run
    with pytest.raises(UserError, match=r"refused: not a state_dict as torch.save\(model.state_dict\(\), path\)"):
        load_pretrained(_fresh(), str(path), "small_cnn")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epoch": 3, "model": {"lr": 0.1}}, r"holds no tensors; expected a state_dict, or one under 'state_dict'"),
        ([1, 2], "holds no tensors.*found a list"),
        ({"state_dict": {}}, "holds no tensors.*found an empty dict"),
        ({"w": torch.tensor([1.0, float("nan")])}, "the weights hold NaN or infinite values"),
    ],
)
def test_a_file_without_usable_tensors_is_one_line(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match=message) as e:
        load_pretrained(_fresh(), str(path), "small_cnn")
    assert str(e.value).startswith(f"model.pretrained: {path}") and "\n" not in str(e.value)


def test_other_files_are_refused_in_one_line_naming_what_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "weights.ckpt").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a pickle\n")
    os.mkfifo(tmp_path / "fifo.pth")
    for path, message in [
        (tmp_path / "weights.ckpt", "expected a .safetensors, .pth, .pt or .bin file, a run directory, an experiment"),
        (tmp_path / "fifo.pth", "weights file is a FIFO, expected a regular file"),
        (tmp_path / "missing.pth", "cannot read weights file"),
        (tmp_path / "text.pth", r"not a state_dict as torch.save\(model.state_dict\(\), path\) writes"),
    ]:
        with pytest.raises(UserError, match=message) as e:
            load_pretrained(_fresh(), str(path), "small_cnn")
        assert str(e.value).startswith("model.pretrained: ") and "\n" not in str(e.value)


def test_a_vit_saved_at_32_px_loads_at_48_px_with_its_position_embeddings_resampled(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _tiny_vit(32)
    path = tmp_path / "vit32.pth"
    torch.save(source.state_dict(), path)
    model = _tiny_vit(48)
    report = load_pretrained(model, str(path), "vit")
    assert report.resampled == [("pos_embed", (1, 65, 32), (1, 145, 32))], "8x8 patches + class token -> 12x12 + 1"
    assert report.random == [] and report.mismatched == [] and report.warning("vit") is None
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1]), "the class token's embedding is kept"
    assert torch.equal(model.cls_token, source.cls_token)
    from timm.layers import resample_abs_pos_embed

    torch.testing.assert_close(model.pos_embed, resample_abs_pos_embed(source.pos_embed, [12, 12], num_prefix_tokens=1))
    assert not torch.allclose(model.pos_embed[:, 1:13], source.pos_embed[:, 1:13]), "a new grid, not a copy"
    logits = model(torch.randn(2, 1, 48, 48))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_a_patch_size_change_resamples_the_patch_embedding_and_the_grid(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _tiny_vit(32, patch=4)
    path = tmp_path / "p4.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = _tiny_vit(32, patch=8)
    report = load_pretrained(model, str(path), "vit")
    assert report.resampled == [
        ("pos_embed", (1, 65, 32), (1, 17, 32)),
        ("patch_embed.proj.weight", (32, 1, 4, 4), (32, 1, 8, 8)),
    ]
    from timm.layers import resample_patch_embed

    torch.testing.assert_close(
        model.patch_embed.proj.weight, resample_patch_embed(source.patch_embed.proj.weight, [8, 8])
    )
    assert "resampled patch_embed.proj.weight 32x1x4x4 -> 32x1x8x8" in report.line()
    logits = model(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_the_r50_hybrid_of_224_px_fits_at_384_px() -> None:
    """Shapes only, on the meta device: the 98M-parameter model is not built twice for real."""
    with torch.device("meta"):
        source = create_model("vit_r50_hybrid", 1000, img_size=(224, 224))
        model = create_model("vit_r50_hybrid", 10, img_size=(384, 384))
    report = transfer_tensors(model, source.state_dict(), "vit_base_r50_s16_224 weights", "vit_r50_hybrid")
    assert report.resampled == [("pos_embed", (1, 197, 768), (1, 577, 768))]
    assert report.random == [] and report.mismatched == [] and report.head == ["head.weight", "head.bias"]
    assert len(report.loaded) == len(model.state_dict()) - 2


def test_keep_head_loads_the_classifier_and_refuses_another_width(tmp_path: Path) -> None:
    saved = _fresh(seed=0)
    path = tmp_path / "cnn.pth"
    torch.save(saved.state_dict(), path)
    model = _fresh()
    report = load_pretrained(model, str(path), "small_cnn", keep_head=True)
    _assert_equal_but_head(model, saved.state_dict(), set())
    assert report.head == [] and report.keep_head and "head kept" in report.line()
    narrow = create_model("small_cnn", 4)
    with pytest.raises(
        UserError, match=r"model.keep_head: the head of .*cnn.pth has 10 outputs \(fc.weight\), the task has 4"
    ):
        load_pretrained(narrow, str(path), "small_cnn", keep_head=True)
    torch.save({k: v for k, v in saved.state_dict().items() if not k.startswith("fc.")}, path)
    with pytest.raises(UserError, match="model.keep_head: .* has no head tensor 'fc.weight'"):
        load_pretrained(_fresh(), str(path), "small_cnn", keep_head=True)


def _run(tmp_path: Path, experiment: str, *overrides: str, cli: bool = True) -> Path:
    """A 1-epoch run of the synthetic smoke config; through the CLI, or the engine alone (no plots: faster)."""
    overrides = (f"trainer.out_dir={tmp_path}", f"trainer.experiment={experiment}", "trainer.epochs=1", *overrides)
    if cli:
        assert main(["train", "configs/smoke/synthetic.yaml", *[x for o in overrides for x in ("--set", o)]]) == 0
    else:
        train(load_config("configs/smoke/synthetic.yaml", list(overrides)))
    (run,) = (tmp_path / experiment).iterdir()
    return run


def test_a_run_prints_warns_and_records_what_its_pretrained_file_gave(tmp_path: Path, capsys) -> None:
    """A real 1-epoch ViT run at 48 px from the weights of one at 32 px, saved as a notebook would with
    DataParallel and one tensor missing: the start line, the warning and summary.json's "pretrained" entry say what
    was loaded, resampled, left random and left fresh."""
    vit = ["model.name=vit", "model.kwargs={embed_dim: 32, depth: 1, num_heads: 2, patch_size: 4}"]
    vit += ["data.kwargs.n_train=128", "data.kwargs.n_test=32"]
    source = _run(tmp_path, "small", *vit, "data.kwargs.size=32", cli=False)
    sd = safetensors.torch.load_file(str(source / layout.BEST))
    path = tmp_path / "notebook.pth"
    dropped = "blocks.0.attn.proj.bias"
    torch.save({"epoch": 1, "model": {f"module.{k}": v for k, v in sd.items() if k != dropped}}, path)
    capsys.readouterr()
    target = _run(tmp_path, "large", *vit, "data.kwargs.size=48", f"model.pretrained={path}")
    out, err = capsys.readouterr()
    summary = json.loads((target / layout.SUMMARY).read_text())
    assert summary["status"] == "finished" and summary["data_info"]["input_size"] == [1, 48, 48]
    assert summary["pretrained"] == {
        "source": str(path),
        "keep_head": False,
        "loaded": len(sd) - 3,
        "head": ["head.weight", "head.bias"],
        "shape_mismatch_count": 0,
        "shape_mismatch": [],
        "random_count": 1,
        "random": [dropped],
        "resampled": [{"key": "pos_embed", "file": [1, 65, 32], "model": [1, 145, 32]}],
        "adapted": [],
        "unused_file_keys": 0,
    }
    start = f"pretrained: {len(sd) - 3} tensors loaded from {path}; head left fresh (head.weight, head.bias); "
    assert start + "resampled pos_embed 1x65x32 -> 1x145x32; 1 not in the file, left random" in out, out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"1 not in the file, left random (e.g. {dropped})" in warnings[0], err

    # a resume loads the checkpoint, not the file again; the record of the first start stays
    assert main(["train", "--resume", str(target)]) == 0
    resumed = json.loads((target / layout.SUMMARY).read_text())
    assert resumed["status"] == "finished" and resumed["pretrained"] == summary["pretrained"]
    assert "pretrained:" not in capsys.readouterr().out
