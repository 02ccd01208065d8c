"""Results tables from fixture run directories, compared exactly: the pivot (rows × columns of config keys, mean ±
sample std over seeds, unfinished, failed and unreadable runs marked) and the per-run table below it."""

from __future__ import annotations

from pathlib import Path

from visionbench.cli.main import main
from visionbench.report.records import find_runs, load_record
from visionbench.report.tables import default_columns, pivot_tables, to_markdown

EXPERIMENT_MD = """\
# visionbench report

7 runs: 4 finished, 1 running, 1 failed, 1 unreadable.

## test/acc1 (%): model.name × data.name

| model.name | fashion-mnist | mnist | params | epochs | time/run |
|---|---:|---:|---:|---:|---:|
| resnet18 | failed: non-finite loss (nan) at epoch 2, step 120; the last good c… | running 3/10 | 11,173,962 | 10 | – |
| small_cnn | 85.00 % | 91.00 ± 1.00 % (n=3) | 41,030 | 3–5 | 30–50 s |
| vit_tiny | – | unreadable: summary.json is not JSON (Unterminated string starting at: … | – | – | – |

Cells: test/acc1 of the final model, in % (higher is better); mean ± sample std over the finished runs of a cell, with their number n; other runs are marked. params, epochs and time/run (wall clock of a finished run) are the row's; a–b is a range.

## 95 % interval of test/acc1 (%): model.name × data.name

| model.name | fashion-mnist | mnist |
|---|---:|---:|
| resnet18 | – | – |
| small_cnn | – (no per-image outputs) | \\[88.52, 93.48\\] % (t, n=3) |
| vit_tiny | – | – |

95 % confidence interval of each cell above. Several finished runs (t): Student's t on their mean, n-1 degrees of freedom; it measures training randomness and is wide for few seeds. One run (bootstrap): percentile bootstrap over its test images (1,000 resamples, seed 0), the metric recomputed on each; it measures test-set sampling only, not training randomness. A single run without per_image_test.safetensors (trained before it was written) has none.

## Runs

| run | model | dataset | params | test | best val (epoch) | epochs | time | status |
|---|---|---|---:|---:|---:|---:|---:|---|
| 20260101-100000-small_cnn-mnist | small_cnn | mnist | 41,030 | acc1 90.00 % | 90.50 % (3) | 3/3 | 30 s | finished |
| 20260101-100001-small_cnn-mnist | small_cnn | mnist | 41,030 | acc1 91.00 % | 91.50 % (3) | 3/3 | 32 s | finished |
| 20260101-100002-small_cnn-mnist | small_cnn | mnist | 41,030 | acc1 92.00 % | 92.50 % (3) | 3/3 | 34 s | finished |
| 20260101-100100-small_cnn-fashion-mnist | small_cnn | fashion-mnist | 41,030 | acc1 85.00 % | 85.50 % (5) | 5/5 | 50 s | finished |
| 20260101-100200-resnet18-mnist | resnet18 | mnist | 11,173,962 | acc1 – | 80.50 % (3) | 3/10 | 6.7 min | running 3/10 |
| 20260101-100300-resnet18-fashion-mnist | resnet18 | fashion-mnist | 11,173,962 | acc1 – | 90.50 % (1) | 1/10 | 6.7 min | failed: non-finite loss (nan) at epoch 2, step 120; the last good checkpoint is kept |
| 20260101-100400-vit_tiny-mnist | vit_tiny | mnist | – | – | – | – | – | unreadable: summary.json is not JSON (Unterminated string starting at: line 1 column 12 (char 11)) |
"""  # noqa: E501


def test_report_md_pivots_seeds_and_marks_running_failed_and_corrupt_runs(experiment: Path, capsys) -> None:
    assert main(["report", str(experiment)]) == 0
    md, html = experiment / "report.md", experiment / "report.html"
    assert md.read_text() == EXPERIMENT_MD
    out = capsys.readouterr().out
    assert out == f"{EXPERIMENT_MD}{md}\n{html}\n", "the markdown on stdout, then the two paths, one per line"


def test_latest_keeps_the_newest_run_of_each_cell(experiment: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(experiment), "--latest", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| small_cnn | 85.00 % | 92.00 % | 41,030 | 3–5 | 34–50 s |" in md, md
    assert "3 runs" not in md and md.count("-small_cnn-mnist |") == 1, md
    assert not (experiment / "report.md").exists(), "--out decides where the report goes"


def _records(root: Path) -> list[dict]:
    return [load_record(run) for run in find_runs([root])]


def test_any_two_config_keys_shape_the_table_in_numeric_order_and_pooled_differences_are_named(
    tmp_path: Path, make_run
) -> None:
    exp = tmp_path / "classes"
    for i, (model, classes, lr, value) in enumerate(
        [
            ("small_cnn", 10, 0.05, 0.60),
            ("small_cnn", 2, 0.05, 0.99),
            ("small_cnn", 5, 0.05, 0.80),
            ("small_cnn", 5, 0.01, 0.70),  # pooled with the run above, although its lr differs
            ("resnet18", 2, 0.05, 0.995),
        ]
    ):
        make_run(exp, f"2026010{i}-small-{i}", model=model, data_kwargs={"classes": classes}, lr=lr, value=value)
    records = _records(exp)
    cols = default_columns(records, ["model.name"])
    assert cols == ["data.kwargs.classes"], "the data key that differs between runs is the default column"
    (table,) = pivot_tables(records, ["model.name"], cols)
    assert table.title == "test/acc1 (%): model.name × data.kwargs.classes"
    assert to_markdown(table) == (
        "| model.name | 2 | 5 | 10 | params | epochs | time/run |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| resnet18 | 99.50 % | – | – | 41,030 | 3 | 30 s |\n"
        "| small_cnn | 99.00 % | 75.00 ± 7.07 % (n=2) | 60.00 % | 41,030 | 3 | 30 s |\n"
        "\n"
        "Cells: test/acc1 of the final model, in % (higher is better); mean ± sample std over the finished runs of a"
        " cell, with their number n; other runs are marked. params, epochs and time/run (wall clock of a finished"
        " run) are the row's; a–b is a range.\n"
        "\n"
        "Cells pool runs that also differ in optim.lr (0.01, 0.05): split them with --rows/--cols (comma-separated)."
    )
    (swapped,) = pivot_tables(records, ["data.kwargs.classes"], ["model.name", "optim.lr"])
    assert swapped.header == ["data.kwargs.classes", "name=resnet18, lr=0.05", "name=small_cnn, lr=0.01"] + [
        "name=small_cnn, lr=0.05",
        "params",
        "epochs",
        "time/run",
    ]
    assert not swapped.notes[1:], "nothing is pooled once lr is a column"


def test_a_lower_is_better_metric_is_raw_with_four_decimals(tmp_path: Path, make_run) -> None:
    exp = tmp_path / "lens"
    for seed, mae in enumerate((0.10, 0.12, 0.14)):
        make_run(exp, f"2026-{seed}", dataset="deeplense", metric="mae", mode="min", value=mae, seed=seed)
    (table,) = pivot_tables(_records(exp), ["model.name"], ["data.name"])
    assert table.title == "test/mae: model.name × data.name"
    assert [c.text for c in table.rows[0]] == ["small_cnn", "0.1200 ± 0.0200 (n=3)", "41,030", "3", "30 s"]
    assert "test/mae of the final model (lower is better);" in table.notes[0]


def test_default_columns_are_the_dataset_and_its_variants_not_the_keys_that_follow_the_dataset(
    tmp_path: Path, make_run
) -> None:
    exp = tmp_path / "mixed"
    make_run(exp, "a", dataset="synthetic", data_kwargs={"num_classes": 4, "size": 16})  # kwargs follow the dataset
    make_run(exp, "b", dataset="mnist")
    make_run(exp, "c", dataset="mnist", subset=300)  # a variant of MNIST
    records = _records(exp)
    assert default_columns(records, ["model.name"]) == ["data.name", "data.subset"]
    assert default_columns(records[1:], ["model.name"]) == ["data.subset"]
    assert default_columns(records[:1], ["model.name"]) == ["data.name"], "nothing differs: the dataset"
    assert default_columns(records[:1], ["data.name"]) == ["model.name"]
    (table,) = pivot_tables(records, ["model.name"], default_columns(records, ["model.name"]))
    assert table.header[1:4] == ["name=mnist, subset=300", "name=mnist, subset=null", "name=synthetic, subset=null"]
