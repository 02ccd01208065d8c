"""A multi-label run's `task.threshold` decides which labels are positive for every command: predict's JSON, the
labels explain attributes and analyze's consistency count probabilities over 0.3 (the F1 metric's rule), where
explain and analyze once used logit > 0 whatever the threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import train_yaml
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.data import build_datasets
from visionbench.engine.inference import load_run, split_images

THRESHOLD = 0.3


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """csv_manifest `path,labels` of 24 random RGB PNGs, one epoch: probabilities near 0.5, many of them in
    (0.3, 0.5], where the two rules disagree."""
    folder = tmp_path_factory.mktemp("threshold")
    (folder / "data").mkdir()
    labels = ["cat", "dog", "cat;dog", "", "bird;cat", "dog;bird"]
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "data" / f"{i}.png")
    rows = [f"{i}.png,{labels[i % len(labels)]}" for i in range(24)]
    (folder / "data" / "train.csv").write_text("path,labels\n" + "\n".join(rows) + "\n")
    data = {"name": "csv_manifest", "kwargs": {"train": str(folder / "data" / "train.csv"), "test_fraction": 0.25}}
    return train_yaml(folder, data, task={"threshold": THRESHOLD})


def test_predict_explain_and_analyze_count_the_same_labels_positive(run, capsys):
    loaded = load_run(run)
    images, targets = split_images(loaded, "test", 100)
    files = build_datasets(loaded.cfg.data).test.paths  # the test split's files, in its order
    assert len(files) == len(images) == 6

    capsys.readouterr()
    assert main(["predict", str(run), *files, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_index = [sorted(r["predictions"], key=lambda p: p["index"]) for r in records]
    probs = torch.tensor([[p["probability"] for p in r] for r in by_index])
    positive = torch.tensor([[p["positive"] for p in r] for r in by_index])
    assert all(r["threshold"] == THRESHOLD for r in records)
    assert torch.equal(positive, probs.double() > THRESHOLD)
    assert (positive & (probs <= 0.5)).any(), "no label between the two rules: the test could not tell them apart"

    assert main(["explain", str(run), "--method", "saliency", "--n", "100", "--target", "predicted"]) == 0
    panels = json.loads((run / layout.EXPLAIN / "saliency-test" / "panels.json").read_text())["labels"]
    attributed = {(p["index"], p["target"]) for p in panels}
    assert attributed == {tuple(ij) for ij in (positive | (targets > 0.5)).nonzero().tolist()}, "predicted or true"

    assert main(["analyze", str(run), "--suite", "consistency", "--images", "10"]) == 0
    with (run / layout.ANALYSIS / "consistency.csv").open() as f:
        hflip = next(float(r["value"]) for r in csv.DictReader(f) if r["transform"] == "hflip")
    mean, std = torch.tensor(loaded.info.mean)[:, None, None], torch.tensor(loaded.info.std)[:, None, None]
    flipped = ((images * std + mean).clamp(0, 1).flip(-1) - mean) / std
    with torch.no_grad():
        same = (loaded.model(flipped).sigmoid().double() > THRESHOLD) == positive
    assert hflip == pytest.approx(same.all(1).float().mean().item()), "unchanged under the flip, at the threshold"
