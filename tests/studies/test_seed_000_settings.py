"""Seed 000 (DeepLense deep regression): every cell config holds the study's settings, written here from the seed.

The seed README (`GSoC2022-Deep-Regression`) states the hyper-parameters shared by every row (batch 128, lr 3e-3),
the epochs (300), the architectures, which rows were ImageNet-pretrained, the ViT patch size per model and the MAE
of the 10 cells it fills. The rest of the recipe is in the study's own notebooks (ML4SCI/DeepLense,
`DeepLense_Regression_Zhongchao_Guan/deepreg-model{1,2,3}.ipynb`, ResNet-34 runs), cited row by row below.

Also here, for every config under configs/: it loads, and its header carries no bare figure (a percentage or an MAE
that is neither marked `reference:` nor backed by an evidence line naming `visionbench@<commit>`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from visionbench.config import load_config, read_config_file

ROOT = Path(__file__).resolve().parents[2]
DEEPLENSE = ROOT / "configs" / "deeplense"

README = "seed 000 README"
NOTEBOOK = "study notebook deepreg-model{}.ipynb"  # ML4SCI/DeepLense, DeepLense_Regression_Zhongchao_Guan/

# The seed README's MAE table (test MAE in dex): the 10 cells it fills, architecture rows x Model I/II/III columns.
MAE_TABLE = {
    ("resnet34", "i"): "0.2849",
    ("resnet34", "ii"): "0.2162",
    ("resnet34", "iii"): "0.1332",
    ("vit", "i"): "0.4420",
    ("vit", "ii"): "0.2437",
    ("vit", "iii"): "0.2175",
    ("cnn_t", "iii"): "0.1459",
    ("mobilenetv2", "iii"): "0.1568",
    ("cvt13", "ii"): "0.2548",
    ("cvt13", "iii"): "0.1403",
}
ARCHS = ("resnet34", "vit", "cnn_t", "mobilenetv2", "cvt13")
ROW_LABEL = {"vit": "Pure VIT", "cnn_t": "CNN-T", "cvt13": "CvT-13"}
MODELS = ("i", "ii", "iii")
NOTEBOOK_NUMBER = {"i": 1, "ii": 2, "iii": 3}
# The notebooks' `train_len` (train + validation images; the test files hold 5,000) and image side (np.memmap shape)
TRAIN_LEN = {"i": 28897, "ii": 29896, "iii": 29812}
IMAGE_SIDE = {"i": 150, "ii": 64, "iii": 64}


def _stem(arch: str, model: str) -> str:
    return f"{arch}_model_{model}"


# (dotted key, the study's value, where it is stated) for every cell
RECIPE: list[tuple[str, Any, str]] = [
    ("trainer.batch_size", 128, f"{README}: Hyper-parameters, batch_size=128"),
    ("optim.lr", 3e-3, f"{README}: Hyper-parameters, lr=3e-3"),
    ("trainer.epochs", 300, f"{README}: MAE table, Epoch column (300 for every row)"),
    ("optim.name", "radamw", "{nb}: Learner(opt_func=ranger); fastai's ranger is RAdam with decoupled weight decay"),
    ("optim.betas", [0.95, 0.99], "{nb}: fastai's ranger, mom=0.95 and RAdam's sqr_mom=0.99"),
    ("optim.eps", 1e-6, "{nb}: fastai's ranger, eps=1e-6"),
    ("optim.weight_decay", 0.01, "{nb}: fastai's ranger, wd=0.01"),
    ("optim.no_decay_norm_bias", True, "{nb}: fastai's Learner, wd_bn_bias=False"),
    ("optim.lookahead_k", 6, "{nb}: fastai's ranger wraps RAdam in Lookahead(k=6, alpha=0.5)"),
    ("optim.lookahead_alpha", 0.5, "{nb}: fastai's ranger wraps RAdam in Lookahead(k=6, alpha=0.5)"),
    ("optim.schedule", "one_cycle", "{nb}: learner.fit_one_cycle(epochs, lr)"),
    ("optim.warmup_epochs", 0.0, "{nb}: fit_one_cycle's pct_start 0.25 (our one_cycle's default rise: a quarter)"),
    ("task.loss", "rmse", "{nb}: Learner(loss_func=rmse_loss), the square root of the batch's mean squared error"),
    ("task.standardize_targets", False, "{nb}: AxionData, label = np.log10(label), no standardisation"),
    ("trainer.precision", "fp32", "{nb}: a plain fastai Learner, no to_fp16()"),
    ("data.name", "deeplense", f"{README}: the DeepLense Model I/II/III data"),
    ("data.val_fraction", 0.1, "{nb}: '0.9 for train, 0.1 for validation'"),
    ("data.mean", [0.0], "{nb}: AxionData min-max scales each image, no Normalize follows"),
    ("data.std", [1.0], "{nb}: AxionData min-max scales each image, no Normalize follows"),
    ("data.image_size", None, "{nb}: the images are fed at their own size (np.memmap shape)"),
    ("data.augment.flip", True, "{nb}: train_transform, RandomHorizontalFlip()"),
    ("data.augment.vflip", True, "{nb}: train_transform, RandomVerticalFlip()"),
    ("data.augment.rotate_degrees", 180.0, "{nb}: train_transform, RandomRotation(degrees=(0, 360))"),
]


# Per cell: the column's data, the row's architecture, its ImageNet weights, the ViT patch size
def _cell_rows(arch: str, m: str) -> list[tuple[str, Any, str]]:
    rows = [
        ("data.kwargs.preset", f"model_{m}", f"{README}: MAE table, column Model {m.upper()}"),
        ("data.kwargs.n", TRAIN_LEN[m] + 5000, f"{{nb}}: train_len = {TRAIN_LEN[m]}, test_len = 5000"),
    ]
    if arch == "resnet34":
        rows += [
            ("model.name", "torchvision:resnet34", f"{README}: row ResNet34; {{nb}}: models.resnet34"),
            ("model.pretrained", "imagenet", f"{README}: row 'ResNet34 (pretrained on ImageNet)'"),
            (
                "model.pretrained_key_map",
                [[r"^conv1\.weight$", "study_replaced.conv1.weight"]],
                "{nb}: backbone.conv1 = Conv2d(1, 64, kernel_size=(7, 7), ...), a new first convolution",
            ),
        ]
    elif arch == "vit":
        patch = 15 if m == "i" else 8
        rows += [
            ("model.name", "vit", f"{README}: row 'Pure VIT'"),
            ("model.kwargs.patch_size", patch, f"{README}: row 'Pure VIT', Model {m.upper()}: ({patch}*{patch})"),
        ]
    elif arch == "cnn_t":
        rows += [("model.name", "cnn_t", f"{README}: row 'CNN-T' (Li, Wu and Xiong 2022)")]
    elif arch == "mobilenetv2":
        rows += [
            ("model.name", "torchvision:mobilenet_v2", f"{README}: row 'MobileNet V2', citing torchvision's model"),
            (
                "model.pretrained",
                "imagenet:IMAGENET1K_V1",
                f"{README}: row 'MobileNet V2 (pretrained on ImageNet)'; {{nb}}: torchvision 0.12's pretrained=True",
            ),
        ]
    elif arch == "cvt13":
        rows += [("model.name", "cvt_13", f"{README}: row 'CvT-13'")]
    if arch not in ("resnet34", "mobilenetv2"):
        rows += [("model.pretrained", None, f"{README}: row '{ROW_LABEL[arch]}', not marked pretrained on ImageNet")]
    return rows


CELL_ROWS = {_stem(arch, m): _cell_rows(arch, m) for arch, m in MAE_TABLE}

TABLE = [
    (stem, key, value, where.format(nb=NOTEBOOK.format(NOTEBOOK_NUMBER[stem.rsplit("_", 1)[1]])))
    for stem, rows in CELL_ROWS.items()
    for key, value, where in [*RECIPE, *rows]
]


def _get(cfg_dump: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg_dump
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted}: no {part!r} in the resolved config"
        node = node[part]
    return node


@pytest.mark.parametrize(("stem", "key", "value", "where"), TABLE, ids=[f"{r[0]}:{r[1]}" for r in TABLE])
def test_cell_config_holds_the_seed_setting(stem: str, key: str, value: Any, where: str) -> None:
    cfg = load_config(DEEPLENSE / f"{stem}.yaml")
    assert _get(cfg.model_dump(), key) == value, f"{stem}: {key} should be {value!r} ({where})"


def test_the_cell_configs_are_exactly_the_cells_the_seed_table_fills() -> None:
    present = {(a, m) for a in ARCHS for m in MODELS if (DEEPLENSE / f"{_stem(a, m)}.yaml").exists()}
    assert present == set(MAE_TABLE), (
        f"missing {set(MAE_TABLE) - present}, not in the seed's table {present - set(MAE_TABLE)}"
    )


@pytest.mark.parametrize(("cell", "mae"), MAE_TABLE.items(), ids=[_stem(*c) for c in MAE_TABLE])
def test_cell_header_quotes_the_seed_mae_as_a_reference(cell: tuple[str, str], mae: str) -> None:
    header = [line for line in (DEEPLENSE / f"{_stem(*cell)}.yaml").read_text().splitlines() if line.startswith("#")]
    expected = f"# reference: MAE {mae} (seed 000 README, not measured by visionbench)"
    assert expected in header, f"{_stem(*cell)}: header lacks {expected!r}"
    figures = [line for line in header if re.search(r"\b0\.\d{4}\b", line)]  # the seed's MAEs have 4 decimals
    assert figures == [expected], f"{_stem(*cell)}: MAE-like figures besides the reference: {figures}"


@pytest.mark.parametrize("stem", CELL_ROWS)
def test_cell_keeps_the_study_test_split_and_image_size(stem: str) -> None:
    from visionbench.data import lensing_sim

    model = stem.rsplit("_", 1)[1]
    cfg = load_config(DEEPLENSE / f"{stem}.yaml")
    n, fraction = cfg.data.kwargs["n"], cfg.data.kwargs["test_fraction"]
    assert round(n * fraction) == 5000, f"{stem}: {n} images at test_fraction {fraction} do not leave 5,000 to test"
    assert lensing_sim.PRESETS[cfg.data.kwargs["preset"]].num_pix == IMAGE_SIDE[model]


@pytest.mark.parametrize(("model", "grid"), [("i", (10, 10)), ("ii", (8, 8)), ("iii", (8, 8))])
def test_vit_cells_patchify_to_the_seed_token_grid(model: str, grid: tuple[int, int]) -> None:
    from visionbench.models import create_model, token_grid

    cfg = load_config(DEEPLENSE / f"vit_model_{model}.yaml")
    side = IMAGE_SIDE[model]
    vit = create_model(cfg.model.name, 1, in_chans=1, img_size=(side, side), **cfg.model.kwargs)
    assert token_grid(vit)[1] == grid


def test_resnet34_cell_loads_imagenet_weights_but_keeps_a_new_first_convolution(tmp_path: Path) -> None:
    """The study built torchvision's ResNet-34 with its weights, then replaced conv1 by a new one-channel
    convolution: the key map must keep the file's conv1 out while everything else but the head is loaded."""
    import safetensors.torch
    import torch

    from visionbench.engine.transfer import load_pretrained
    from visionbench.models import create_model

    cfg = load_config(DEEPLENSE / "resnet34_model_ii.yaml")
    torch.manual_seed(0)
    weights = create_model(cfg.model.name, 1000, in_chans=3, img_size=(224, 224)).state_dict()  # the ImageNet layout
    path = tmp_path / "resnet34_imagenet.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    model = create_model(cfg.model.name, 1, in_chans=1, img_size=(64, 64))
    before = model.conv1.weight.detach().clone()
    report = load_pretrained(model, str(path), cfg.model.name, key_map=cfg.model.pretrained_key_map)
    assert report.random == ["conv1.weight"] and not report.adapted and not report.mismatched, report
    assert set(report.head) == {"fc.weight", "fc.bias"}, report.head
    torch.testing.assert_close(model.conv1.weight, before, msg="conv1 stays as initialised")
    torch.testing.assert_close(model.layer4[2].conv2.weight, weights["layer4.2.conv2.weight"])


def test_the_torchvision_weights_named_are_the_study_ones() -> None:
    from torchvision.models import get_model_weights

    assert get_model_weights("resnet34").DEFAULT.name == "IMAGENET1K_V1", "`imagenet` must stay the study's weights"
    assert "IMAGENET1K_V1" in get_model_weights("mobilenet_v2").__members__


# ---------------------------------------------------------------------------------------------------------------
# Every config under configs/


CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_loads(config: Path) -> None:
    if config.parent.name == "studies":  # a study file: its cells' configs, with the study's overrides
        from visionbench.study import read_study

        assert read_study(config).cells, f"{config}: a study with no cells"
    elif config.name.endswith(".space.yaml"):
        from visionbench.search.space import read_space

        assert read_space(config).params, f"{config}: a search space with no params"
    elif "matrix" in read_config_file(config):
        from visionbench.engine.compare import read_matrix

        cells, keys = read_matrix(config)
        assert cells and keys, f"{config}: a compare config with no cells"
    else:
        load_config(config)


# A figure: a percentage, or an MAE with a number next to it. Marked: a study's own figure (`reference:`), a
# measurement of ours with its evidence (`visionbench@<commit>`), or a goal (`target:`), which claims nothing.
FIGURE = re.compile(r"\d\s*%|\bMAE\b\D{0,12}\d|\d\s*(?:dex\s+)?(?:test\s+|val\s+)?MAE\b")
MARKERS = ("reference:", "visionbench@", "target:")


def bare_figures(text: str) -> list[str]:
    """The comment lines of a config that state a figure without a marker."""
    lines = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    return [line for line in lines if FIGURE.search(line) and not any(m in line for m in MARKERS)]


def test_header_lint_tells_marked_figures_from_bare_ones() -> None:
    text = "\n".join(
        [
            "# 93.1 % val top-1",  # bare
            "# The study reported test MAE 0.2431 dex.",  # bare
            "# 0.234 dex test MAE on 2 vCPUs",  # bare
            "# 93.1 ± 0.2 % val top-1, 5 seeds, 1xH100, 4m10s, visionbench@abc1234",
            "# reference: MAE 0.2162 (seed 000 README, not measured by visionbench)",
            "# target: >= 94 % test accuracy in <= 3 s",
            "# L1 loss (MAE in dex), batch 128, lr 3e-3, 300 epochs",  # no figure
            "data: {name: mnist}  # inline comments are not linted: 5 %",
        ]
    )
    assert bare_figures(text) == [
        "# 93.1 % val top-1",
        "# The study reported test MAE 0.2431 dex.",
        "# 0.234 dex test MAE on 2 vCPUs",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_headers_state_no_bare_figure(config: Path) -> None:
    assert not bare_figures(config.read_text()), (
        f"{config.relative_to(ROOT)}: a figure needs `reference:` (a study's own) or an evidence line with "
        "visionbench@<commit> (ours); a figure with no run behind it goes"
    )
