"""`visionbench study FILE --short` end to end on the generated `synthetic` dataset: every run trains, README.md has
the study's table (seeds as mean ± std with n) and its figures exist, saliency grids drawn by the study among them;
a second invocation trains and draws nothing, a third redraws only a grid folder left half-drawn; a finished run
whose config changed is refused in one line; --short writes apart from the full study."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from visionbench import layout
from visionbench.cli.main import main

CONFIG = """\
data:
  name: synthetic
  val_fraction: 0.25
  kwargs: {num_classes: 3, n_train: 64, n_test: 32, channels: 1, size: 16}
model: {name: small_cnn}
optim: {name: sgd, lr: 0.05}
trainer: {epochs: 3, batch_size: 32, device: cpu, progress: lines, checkpoint_every_minutes: null}
"""
STUDY = """\
title: Two small CNNs
short: {trainer.epochs: 1}
cells:
  - {config: tiny.yaml, labels: {arch: a}, seeds: [0, 1], notes: ['lr {optim.lr}']}
  - {config: tiny.yaml, labels: {arch: b}, set: {optim.lr: 0.1}}
tables:
  - title: Results
    rows: arch
    columns: [{metric: test/acc1, header: Accuracy, format: .2%}, train/loss, {metric: val/loss, header: Loss (Valid)}]
    extra: [epochs]
figures:
  - {kind: curves, title: Validation loss, metrics: [val/loss], lines: arch}
  - {kind: runs, title: Curves, figures: [curves]}
  - {kind: explain, title: Saliency, method: saliency, n: 2}
"""


def test_short_study_runs_every_cell_writes_its_table_and_figures_then_skips_and_refuses_changes(
    tmp_path: Path, capsys
) -> None:
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["study", str(study), "--short", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 cells, 3 runs in " in printed and printed.count(": finished in ") == 3, printed
    short = tmp_path / "out-short"
    assert not out.exists() and (short / layout.STUDY_README).is_file() and (short / layout.STUDY_HTML).is_file()
    md = (short / layout.STUDY_README).read_text(encoding="utf-8")
    lines = md.splitlines()
    header = lines.index("| arch | Accuracy | train/loss | Loss (Valid) | epochs |")
    row_a, row_b = lines[header + 2], lines[header + 3]
    assert re.fullmatch(
        r"\| a \(lr 0\.05\) \| \d+\.\d\d% ± \d+\.\d\d% \(n=2\) \| [\d.]+ ± [\d.]+ \(n=2\) \| .* \| 1 \|", row_a
    )
    assert re.fullmatch(r"\| b \| \d+\.\d\d% \| \d\.\d{4} \| \d\.\d{4} \| 1 \|", row_b), row_b
    figures = [unquote(src) for src in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)]
    saliency = [f for f in figures if "/explain/saliency-test/" in f]
    assert len(figures) - len(saliency) == 1 + 3 and all((short / f).is_file() for f in figures), figures
    assert {Path(f).parent.parent.parent.name for f in saliency} == {"arch=a__seed=0", "arch=a__seed=1", "arch=b"}
    assert (short / layout.STUDY_FIGURES / "val_loss.svg").is_file()
    summaries = sorted(short.glob(f"{layout.STUDY_RUNS}/*/{layout.SUMMARY}"))
    assert len(summaries) == 3
    written = [p.stat().st_mtime_ns for p in summaries]

    grids = sorted(short.glob("runs/*/explain/saliency-test/*.png"))
    drawn = [p.stat().st_mtime_ns for p in grids]
    assert main(["study", str(study), "--short", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert again.count(": finished before, skipped") == 3 and "explain saliency" not in again, again
    assert [p.stat().st_mtime_ns for p in summaries] == written and [p.stat().st_mtime_ns for p in grids] == drawn

    # an interrupt between a run's grids and its panels file leaves the folder half-drawn: the next call redraws it
    half = grids[0].parent
    (half / layout.EXPLAIN_PANELS).unlink()
    for png in half.glob("*.png"):
        png.unlink()
    assert main(["study", str(study), "--short", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("explain saliency") == 1
    assert (half / layout.EXPLAIN_PANELS).is_file() and sorted(half.glob("*.png"))

    assert main(["study", str(study), "--short", "--out", str(out), "--set", "optim.lr=0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ran before with another config (optim.lr differ) and 2 more" in err[0], err
    assert [p.stat().st_mtime_ns for p in summaries] == written
