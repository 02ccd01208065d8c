"""`visionbench analyze`: the suite's parts on a trained synthetic run, their invariants, and bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from visionbench import layout
from visionbench.analysis import suite as S
from visionbench.cli.main import main
from visionbench.config import config_from_raw

BASE = {
    "data": {"name": "synthetic", "val_fraction": 0.2, "kwargs": {"num_classes": 4, "n_train": 512, "n_test": 96,
                                                                  "channels": 1, "size": 28}},
    "model": {"name": "small_cnn"},
    "trainer": {"epochs": 3, "batch_size": 64, "checkpoint_every_minutes": None, "progress": "lines"},
    "optim": {"lr": 0.05},
}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from visionbench.engine.train import train

    raw = json.loads(json.dumps(BASE))
    raw["trainer"]["out_dir"] = str(tmp_path_factory.mktemp("runs"))
    return train(config_from_raw(raw, experiment="analyze"))


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_analyze_writes_every_part_and_the_report_shows_them(run_dir, capsys):
    assert main(["analyze", str(run_dir), "--images", "96", "--weights", "last"]) == 0  # the final model
    out = run_dir / layout.ANALYSIS
    robustness = _rows(out / "robustness.csv")
    assert len(robustness) == 1 + 3 * 5 and robustness[0]["corruption"] == "none"
    assert {r["corruption"] for r in robustness[1:]} == {"gaussian_noise", "gaussian_blur", "contrast"}
    assert all(0.0 <= float(r["metric"]) <= 1.0 for r in robustness)
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    assert float(robustness[0]["metric"]) == pytest.approx(summary["final"]["test/acc1"], abs=1e-6), "clean = test"
    assert len(_rows(out / "consistency.csv")) == 1 + 4 * len(S.SHIFTS)
    assert len(_rows(out / "frequency.csv")) == 2 * len(S.FREQ_RADII)
    for png in ("robustness.png", "frequency.png", "embeddings.png", "erf.png"):
        assert (out / png).stat().st_size > 1000, png
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "analysis/robustness.png" in html and "analysis/erf.png" in html


def test_invariants_of_the_transforms(run_dir):
    from visionbench.engine.inference import load_run

    run = load_run(run_dir)
    ev = S.Evaluator(run.model, run.task, torch.tensor(run.info.mean), torch.tensor(run.info.std))
    pixels = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(32) % 4
    clean = ev.score(pixels, targets)
    spectrum = torch.fft.fft2(pixels)
    assert torch.allclose(torch.fft.ifft2(spectrum).real, pixels, atol=1e-5)  # all frequencies: the image itself
    shifted = S._shift(pixels, 2, -1)
    assert torch.equal(shifted[..., 2:, :-1], pixels[..., :-2, 1:]) and shifted[..., :2, :].abs().sum() == 0
    assert torch.equal(S._shift(pixels, 0, 0), pixels)
    assert ev.score(pixels.clone(), targets) == clean, "scoring does not depend on anything but the images"


def test_effective_receptive_field_is_zero_outside_the_units_reach(run_dir):
    from visionbench.engine.inference import load_run

    run = load_run(run_dir)
    erf = S.effective_receptive_field(run.model, torch.randn(8, 1, 28, 28))
    assert erf.shape == (28, 28) and erf.max() == 1.0
    assert erf[0].abs().sum() == 0 and erf[:, 0].abs().sum() == 0, "small_cnn's conv2 unit cannot see the borders"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--suite", "erf,colour"], "--suite 'colour': expected some of"),
        (["--split", "holdout"], "--split: expected train, val or test"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, args, expected):
    assert main(["analyze", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_consistency_decides_with_the_tasks_threshold():
    """A label at probability 0.32 (0.28 once shifted in from the zero border) changes its decision at threshold
    0.3 and not at logit > 0 (0.5), which analyze once used whatever the run's threshold."""
    from visionbench.data.base import DatasetInfo
    from visionbench.tasks import create_task

    class Stub:  # the outputs are each image's mean pixel: a shift pads zeros and lowers it
        def __init__(self, threshold):
            self.task = create_task(
                "multilabel", DatasetInfo("t", "multilabel", 1, ("a",), (1, 8, 8)), threshold=threshold
            )

        def outputs(self, pixels):
            return pixels.mean((2, 3))

    pixels = torch.stack([torch.full((1, 8, 8), 0.32), torch.full((1, 8, 8), 0.9)])
    at_03 = {r["transform"]: r["value"] for r in S.consistency(Stub(0.3), pixels)}
    assert at_03["hflip"] == 1.0 and all(v == 0.5 for k, v in at_03.items() if k != "hflip"), at_03
    assert all(r["value"] == 1.0 for r in S.consistency(Stub(0.5), pixels)), "0.32 and 0.28 are both negative"
