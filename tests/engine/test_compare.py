"""`visionbench compare`: the matrix's cells, fixed run directories, skipping finished cells, resuming an
interrupted one, going on after a failure, worker processes, and the one-line errors of a bad matrix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.cli.main import main
from visionbench.engine.compare import cell_name, read_matrix, stale_cells
from visionbench.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
BASE = """\
data:
  name: synthetic
  val_fraction: 0.2
  kwargs: {{num_classes: 4, n_train: 256, n_test: 64, channels: 1, size: 16}}
model:
  name: small_cnn
optim: {{name: sgd, lr: 0.05}}
trainer:
  epochs: {epochs}
  batch_size: 32
  device: cpu
  progress: lines
  checkpoint_every_minutes: null
  out_dir: {out}
matrix:
{matrix}
"""


def _config(tmp_path: Path, matrix: str, epochs: int = 1, name: str = "study") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE.format(epochs=epochs, out=tmp_path / "runs", matrix=matrix))
    return path


def test_cells_are_the_product_of_the_matrix_with_fixed_directories(tmp_path: Path) -> None:
    path = _config(tmp_path, "  optim.lr: [0.1, 0.01]\n  trainer.seed: [0, 1, 2]")
    cells, keys = read_matrix(path)
    assert keys == ["optim.lr", "trainer.seed"] and len(cells) == 6
    assert [c.cfg.optim.lr for c in cells] == [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    assert [c.cfg.trainer.seed for c in cells] == [0, 1, 2, 0, 1, 2]
    assert cells[4].run_dir == tmp_path / "runs" / "study" / "optim.lr=0.01__trainer.seed=1"
    assert cell_name(["data.kwargs.classes=[0, 1]"]) == "data.kwargs.classes=_0_1_"


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ("  model.nme: [a, b]", "matrix cell model.nme=a: "),
        ("  model.name: []", "matrix.model.name: expected a non-empty list"),
        ("  optim.lr: [0.1, -1]", "matrix cell optim.lr=-1: "),
        ("  []", "expected a `matrix:` mapping"),
        # 100^5 cells would hang the enumeration: counted first
        (
            "\n".join(
                f"  trainer.{k}: [{', '.join(map(str, range(1, 101)))}]"
                for k in ("epochs", "batch_size", "eval_batch_size", "accumulate_steps", "eval_every_epochs")
            ),
            "matrix: 10,000,000,000 cells (100 x 100",
        ),
    ],
)
def test_a_bad_matrix_is_one_line_and_exit_2_before_any_cell_runs(tmp_path: Path, capsys, matrix, message) -> None:
    path = _config(tmp_path, matrix)
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    if "nme" in message:
        assert "closest valid keys: model.name" in err[0]
    assert not (tmp_path / "runs").exists()


def test_compare_runs_every_cell_writes_the_report_and_skips_finished_cells(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, "  model.name: [small_cnn, fastnet_s]\n  trainer.seed: [0, 1]")
    assert main(["compare", str(path)]) == 0
    out = capsys.readouterr().out
    experiment = tmp_path / "runs" / "study"
    summaries = sorted(experiment.glob(f"*/{layout.SUMMARY}"))
    assert len(summaries) == 4
    assert all(json.loads(p.read_text())["status"] == "finished" for p in summaries)
    assert (experiment / "report.md").is_file() and (experiment / "report.html").is_file()
    assert f"report: {experiment / 'report.md'}" in out
    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    assert main(["compare", str(path)]) == 0
    again = capsys.readouterr().out
    assert again.count("finished before, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps, "nothing trained again"


def test_a_failed_cell_does_not_stop_the_others_and_is_listed(tmp_path: Path, capsys) -> None:
    # VGG-16 refuses 16-pixel images at build time: a failure of that cell only
    path = _config(tmp_path, "  model.name: [small_cnn, vgg16, fastnet_s]")
    assert main(["compare", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 cells failed:" in out and "model.name=vgg16:" in out
    finished = [p for p in (tmp_path / "runs" / "study").glob(f"*/{layout.SUMMARY}")]
    assert len(finished) == 2


def test_an_interrupted_compare_finishes_only_the_missing_cells(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, "  trainer.seed: [0, 1, 2]", epochs=8)
    experiment = tmp_path / "runs" / "study"
    args = [sys.executable, "-m", "visionbench", "compare", str(path), "--set", "trainer.checkpoint_every_steps=2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    second = experiment / "trainer.seed=1" / "checkpoints" / "last"
    deadline = time.monotonic() + 300
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert second.exists(), "the second cell had started when the kill came"
    first = experiment / "trainer.seed=0" / layout.SUMMARY
    assert json.loads(first.read_text())["status"] == "finished"
    stamp = first.stat().st_mtime_ns
    assert not (experiment / "trainer.seed=2").exists()

    assert main(["compare", str(path), "--set", "trainer.checkpoint_every_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "trainer.seed=0: finished before, skipped" in out
    assert "resuming" in out and "trainer.seed=1" in out
    assert first.stat().st_mtime_ns == stamp
    for seed in (1, 2):
        summary = json.loads((experiment / f"trainer.seed={seed}" / layout.SUMMARY).read_text())
        assert summary["status"] == "finished" and summary["epochs_completed"] == 8


def test_cells_run_in_worker_processes_with_jobs(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, "  trainer.seed: [0, 1]")
    assert main(["compare", str(path), "--jobs", "2"]) == 0
    summaries = list((tmp_path / "runs" / "study").glob(f"*/{layout.SUMMARY}"))
    assert len(summaries) == 2 and all(json.loads(p.read_text())["status"] == "finished" for p in summaries)


def test_read_matrix_refuses_two_cells_with_one_name(tmp_path: Path) -> None:
    path = _config(tmp_path, "  model.kwargs.note: ['a b', 'a/b']")
    with pytest.raises(UserError, match="two cells the same name"):
        read_matrix(path)


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "compare").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_compare_configs_have_valid_cells(config: Path) -> None:
    cells, keys = read_matrix(config)
    assert len(cells) > 1 and keys


def test_a_seed_matrix_key_pools_the_seeds_of_each_model_as_mean_and_std(tmp_path: Path, capsys) -> None:
    """models x seeds: one row per model, the seeds of a model in one cell (the README's fashion_mnist_seeds)."""
    path = _config(tmp_path, "  model.name: [small_cnn, fastnet_s]\n  trainer.seed: [0, 1]")
    tiny = ["--set", "data.kwargs.n_train=64", "--set", "data.kwargs.n_test=16"]
    assert main(["compare", str(path), *tiny]) == 0
    capsys.readouterr()
    md = (tmp_path / "runs" / "study" / "report.md").read_text(encoding="utf-8")
    pivot = md.split("## test/acc1 (%): model.name × data.name\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert pivot[0] == "| model.name | synthetic | params | epochs | time/run |", pivot
    rows = pivot[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| fastnet_s", "| small_cnn"], rows
    for row in rows:
        assert re.fullmatch(r"\| \w+ \| \d+\.\d\d ± \d+\.\d\d % \(n=2\) \|.*", row), row
    assert "trainer.seed" not in md.split("## Runs", 1)[0], "a seed is no axis of the pivot"


def test_a_cell_run_before_with_another_config_is_refused_or_trained_again_when_asked(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, "  trainer.seed: [0, 1]")
    assert main(["compare", str(path)]) == 0
    summaries = sorted((tmp_path / "runs" / "study").glob(f"*/{layout.SUMMARY}"))
    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    capsys.readouterr()

    # the finished cells hold 1-epoch results: never reported as those of the 2-epoch config
    assert main(["compare", str(path), "--set", "trainer.epochs=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "trainer.seed=0: ran before with another config (trainer.epochs differ) and 1 more" in err[0], err
    assert "--rerun-changed" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps, "nothing touched"

    # settings that do not change what a run measures are no change
    assert main(["compare", str(path), "--set", "trainer.num_threads=1", "--set", "trainer.progress=bar"]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 2

    assert main(["compare", str(path), "--set", "trainer.epochs=2", "--rerun-changed"]) == 0
    out = capsys.readouterr().out
    assert out.count("config changed (trainer.epochs), trained again: finished in") == 2, out
    for p in summaries:
        assert json.loads(p.read_text())["epochs_completed"] == 2
    assert stale_cells(read_matrix(path, ["trainer.epochs=2"])[0]) == [], "the cells now hold the new config's runs"
