"""`visionbench report RUN_DIRS... | EXPERIMENT_DIR [--out DIR] [--rows KEY] [--cols KEY] [--latest] [--versus ROW]
[--tag-logs]`: results tables of finished and unfinished runs with 95 % intervals as report.md, paired tests against a
row, and a self-contained report.html with every run's figures; each run's per-tag logs with `--tag-logs`."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    paths: list[Path] = typer.Argument(..., help="Run directories, experiment folders or folders of experiments."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for report.md and report.html [default: the folder given, if only one, else .]."
    ),
    rows: str | None = typer.Option(None, help="Dotted config key(s), comma-separated, of the rows [model.name]."),
    cols: str | None = typer.Option(
        None, help="Dotted config key(s) of the columns [data.name and the data.* keys varied within a dataset]."
    ),
    latest: bool = typer.Option(False, help="Only the newest run of each table cell."),
    versus: str | None = typer.Option(
        None, help="A row label (ROW) as the table shows it: test every other row against it on the same test images."
    ),
    tag_logs: bool = typer.Option(
        False,
        "--tag-logs",
        help="Also write each run's per-epoch metrics as TensorBoard-style CSV logs (Wall time,Step,Value) and SVG "
        "curves, one of each per metric, into <run>/plots/tag_logs/.",
    ),
) -> None:
    """Write report.md and report.html, print the markdown, then the two paths (one per line)."""
    from visionbench.report.page import default_out_dir, write_report

    if tag_logs:
        from visionbench.report.tag_logs import write_run_tag_logs

        write_run_tag_logs(paths)

    out_dir = out or default_out_dir(paths)
    md_path, html_path = write_report(paths, out_dir, rows=rows, cols=cols, latest=latest, versus=versus)
    print(md_path.read_text(encoding="utf-8"), end="")
    print(md_path)
    print(html_path)
