"""Per-image test outputs of real 1-epoch runs (`train` and `eval` write them) and `visionbench report --versus` on
them: the paired test printed with its p-value and interval, and runs tested on other images refused in one line.
small_cnn on the generated `synthetic` gratings, CPU, no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_checks import refused

from visionbench import layout, per_image
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.data import build_datasets
from visionbench.report import stats

TINY = ["trainer.epochs=1", "trainer.device=cpu", "data.kwargs.n_train=128", "data.kwargs.n_test=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Seeds 0 and 1 on the same test images, and seed 2 on a synthetic set drawn with another seed."""
    out = tmp_path_factory.mktemp("runs")
    found = {}
    for name, extra in {
        "seed0": [],
        "seed1": ["trainer.seed=1"],
        "other": ["trainer.seed=2", "data.kwargs.seed=1"],
    }.items():
        sets = [*TINY, *extra, f"trainer.out_dir={out}", f"trainer.experiment={name}"]
        assert main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])]) == 0
        (summary,) = (out / name).glob(f"*/{layout.SUMMARY}")
        found[name] = summary.parent
    return found


def _summary(run: Path) -> dict:
    return json.loads((run / layout.SUMMARY).read_text())


def test_a_finished_run_stores_its_per_image_test_outputs(runs: dict[str, Path]) -> None:
    run = runs["seed0"]
    data = per_image.load(run / layout.per_image())
    a = data.arrays
    test = build_datasets(load_config(run / layout.CONFIG).data).test
    assert data.metric == "acc1" and data.split == "test" and data.images == 64
    assert np.array_equal(a["targets"], test.targets.numpy()), "the test images' targets, in the split's order"
    assert np.array_equal(a["correct"], a["preds"] == a["targets"])
    assert per_image.value(data) == pytest.approx(_summary(run)["final"]["test/acc1"], abs=1e-6)
    assert a["probs"].dtype == np.float16 and a["probs"].shape == (64, 4)
    np.testing.assert_allclose(a["probs"].astype(np.float32).sum(1), 1, atol=5e-3)
    assert np.array_equal(a["true_prob"], a["probs"][np.arange(64), a["targets"]])
    assert np.array_equal(a["probs"][np.arange(64), a["preds"]], a["probs"].max(1)), "rounding keeps the order"
    assert (run / layout.per_image()).stat().st_size < 2000, "compact: 64 images, 4 classes"


def test_eval_writes_the_per_image_outputs_of_the_split_it_evaluates(runs: dict[str, Path]) -> None:
    run = runs["seed1"]
    assert main(["eval", str(run), "--split", "test"]) == 0
    result = json.loads((run / layout.eval_result("test", "none", "best")).read_text())
    data = per_image.load(run / layout.eval_per_image("test", "none", "best"))
    assert data.images == result["images"] == 64
    assert per_image.value(data) == pytest.approx(result["test/acc1"], abs=1e-6)


def test_report_versus_prints_the_paired_test_of_two_seeds(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    paths = [str(runs["seed0"]), str(runs["seed1"])]
    assert main(["report", *paths, "--rows", "trainer.seed", "--versus", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## test/acc1 against 0: paired tests on the same test images" in out, out
    (row,) = [line for line in out.splitlines() if line.startswith("| 1 | synthetic | 64 |")]
    _, _, _, diff, interval, p, test = (cell.strip() for cell in row.strip("|").split("|"))
    a, b = (per_image.load(r / layout.per_image()).arrays["correct"] for r in (runs["seed0"], runs["seed1"]))
    expected = stats.mcnemar(a, b)
    accuracies = [_summary(r)["final"]["test/acc1"] for r in (runs["seed0"], runs["seed1"])]
    assert float(diff) == pytest.approx(100 * (accuracies[1] - accuracies[0]), abs=0.006)
    low, high = (float(x) for x in re.fullmatch(r"\\\[([-+.\d]+), ([-+.\d]+)\\\]", interval).groups())
    assert low <= float(diff) <= high and (low, high) == pytest.approx(
        (100 * expected.low, 100 * expected.high), abs=0.006
    )
    assert 0 < float(p) <= 1 and float(p) == pytest.approx(expected.p, rel=1e-2), (p, expected)
    assert test.startswith("McNemar exact (") and test.endswith(" images)"), test
    assert "95 % interval of test/acc1 (%): trainer.seed × data.name" in out


def test_report_versus_refuses_runs_tested_on_other_images(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    paths = [runs["seed0"], runs["other"]]
    # --cols data.name: by default the synthetic set's seed would be a column of its own, and nothing paired across it
    refused(
        capsys,
        ["report", *paths, "--rows", "trainer.seed", "--cols", "data.name", "--versus", "0", "--out", tmp_path],
        "not tested on the same test images (their test targets differ)",
    )
