"""The `deeplense` dataset on the original release format: plain and object `.npy` files, refused pickles,
per-image min-max normalisation, and a short regression run with its scatter plot and `eval` reproducing it."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from visionbench import layout
from visionbench.cli.main import main
from visionbench.data.deeplense import deeplense
from visionbench.errors import UserError


def _lens(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A ring of the given radius plus noise: enough signal for a small net to read the radius."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    ring = np.exp(-((np.hypot(xx, yy) - radius) ** 2) / 2.0)
    return (ring * 50 + rng.normal(0, 2, (size, size))).astype(np.float32)


def write_regression_release(folder: Path, n: int, size: int = 16, seed: int = 0) -> list[float]:
    """A flat folder of `[image, m_a]` object arrays, as the DeepLense axion release; returns log10 m_a."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    log_masses = []
    for i in range(n):
        log_m = float(rng.uniform(-24, -22))
        image = _lens(rng, size, radius=2 + (log_m + 24) * 2)
        item = np.empty(2, dtype=object)
        item[0], item[1] = image, 10.0**log_m
        np.save(folder / f"axion_sim_{i}.npy", item, allow_pickle=True)
        log_masses.append(log_m)
    return log_masses


def test_object_release_files_become_log10_regression_targets(tmp_path):
    log_masses = write_regression_release(tmp_path / "axion", 10)
    raw = deeplense(path=str(tmp_path / "axion"), test_fraction=0.2)
    assert raw.info.task == "regression" and raw.info.input_size == (1, 16, 16)
    assert len(raw.train) == 8 and len(raw.test) == 2
    # files are read in sorted name order: axion_sim_0, axion_sim_1, ..., not numeric order
    names = sorted(f"axion_sim_{i}.npy" for i in range(10))
    expected = [log_masses[int(name[10:-4])] for name in names]
    got = torch.cat([raw.train.targets, raw.test.targets]).flatten().tolist()
    assert got == pytest.approx(expected, abs=1e-5)
    images = torch.cat([raw.train.images, raw.test.images])
    flat = images.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(10)) and torch.allclose(flat.max(1).values, torch.ones(10))


def test_class_folders_of_plain_images_are_the_classification_variant(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("axion", "cdm", "no_sub"):
        (tmp_path / name).mkdir()
        for i in range(4):
            np.save(tmp_path / name / f"{i}.npy", rng.normal(size=(1, 12, 12)).astype(np.float32))
    constant = tmp_path / "cdm" / "4.npy"
    np.save(constant, np.full((12, 12), 3.0, dtype=np.float32))
    raw = deeplense(path=str(tmp_path), test_fraction=0.25)
    assert raw.info.task == "classification" and raw.info.class_names == ("axion", "cdm", "no_sub")
    labels = torch.cat([raw.train.targets, raw.test.targets]).tolist()
    assert labels == [0] * 4 + [1] * 5 + [2] * 4
    assert torch.cat([raw.train.images, raw.test.images])[8].abs().max() == 0  # a constant image becomes zeros


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_calling_anything_but_numpy_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    item = np.empty(2, dtype=object)
    item[0], item[1] = exploit, 1e-23
    np.save(folder / "a.npy", item, allow_pickle=True)
    with pytest.raises(UserError, match=r"a\.npy: refused to unpickle .*system"):
        deeplense(path=str(folder))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an npy file", "not a readable .npy"),
        (None, "no label"),
    ],
)
def test_bad_release_files_name_the_file(tmp_path, content, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    if content is None:
        np.save(folder / "x.npy", np.zeros((8, 8), dtype=np.float32))  # a plain image in a flat (regression) folder
    else:
        (folder / "x.npy").write_bytes(content)
    with pytest.raises(UserError, match=message) as e:
        deeplense(path=str(folder))
    assert str(folder / "x.npy") in str(e.value) and "\n" not in str(e.value)


def test_regression_run_writes_the_scatter_plot_and_eval_reproduces_it(tmp_path, capsys):
    write_regression_release(tmp_path / "axion", 160)
    out = tmp_path / "runs"
    config = tmp_path / "lens.yaml"
    config.write_text(
        f"""
data:
  name: deeplense
  kwargs: {{path: {tmp_path / "axion"}, test_fraction: 0.25}}
  val_fraction: 0.0
  augment: {{flip: true, vflip: true, rot90: true}}
model: {{name: small_cnn}}
optim: {{name: adamw, lr: 3.0e-3, schedule: cosine}}
trainer: {{epochs: 8, batch_size: 16, out_dir: {out}}}
"""
    )
    assert main(["train", str(config)]) == 0
    run = next(out.glob(f"*/*/{layout.SUMMARY}")).parent
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["main_metric"] == "mae" and summary["task_stats"]["target_mean"][0] == pytest.approx(-23, abs=0.3)
    final = summary["final"]
    rows = list(csv.DictReader((run / layout.artifact(layout.PREDICTIONS, suffix=".csv")).open()))
    assert len(rows) == 40 and set(rows[0]) == {"true", "pred"}
    mae = sum(abs(float(r["true"]) - float(r["pred"])) for r in rows) / len(rows)
    assert mae == pytest.approx(final["test/mae"], abs=1e-4)
    spread = np.mean([abs(float(r["true"]) - np.mean([float(q["true"]) for q in rows])) for r in rows])
    assert final["test/mae"] < spread, "the ring radius is learnable: better than predicting the mean"
    assert math.isfinite(final["test/r2"]) and final["test/rmse"] >= final["test/mae"]
    assert (run / layout.PLOTS / "pred_vs_true.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / layout.PLOTS / "curves.png").is_file()
    assert main(["eval", str(run), "--split", "test", "--weights", "last"]) == 0
    again = json.loads((run / "eval-test-none-last.json").read_text())
    assert again["test/mae"] == pytest.approx(final["test/mae"], abs=1e-5)
