"""Results tables from run directories: one record per run (from summary.json), then a markdown table.

Unfinished and failed runs are shown with their status, never dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visionbench.errors import UserError


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths`: each is a run (has summary.json), an experiment folder of runs, or an
    output folder of experiments (`runs/`)."""
    runs: list[Path] = []
    for path in paths:
        if (path / "summary.json").is_file():
            runs.append(path)
        elif path.is_dir():
            runs += sorted(p.parent for p in [*path.glob("*/summary.json"), *path.glob("*/*/summary.json")])
        else:
            raise UserError(f"{path}: not a run directory or a folder of runs")
    if not runs:
        raise UserError(f"no run directories (with summary.json) under {', '.join(map(str, paths))}")
    return runs


def load_record(run_dir: Path) -> dict[str, Any]:
    """The summary of one run, with its path; a corrupt summary.json is a UserError naming the file."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir / 'summary.json'}: not readable JSON ({e})") from None
    return {"run_dir": str(run_dir), **summary}


def latest_per_cell(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the newest run (by directory name, which starts with its timestamp) of each (model, dataset)."""
    newest: dict[tuple, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: Path(r["run_dir"]).name):
        newest[(rec.get("model"), rec.get("dataset"))] = rec
    return list(newest.values())


def _fmt(value: Any, metric: str) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{100 * value:.2f} %" if metric.startswith("acc") else f"{value:.4f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """model | dataset | params | test metric | best val | epochs | time | status."""
    lines = [
        "| model | dataset | params | test | best val (epoch) | epochs | time | status |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for rec in records:
        metric = rec.get("main_metric", "acc1")
        final, best = rec.get("final") or {}, rec.get("best") or {}
        best_val = best.get(f"val/{metric}")
        best_cell = f"{_fmt(best_val, metric)} ({best.get('epoch')})" if best_val is not None else "–"
        seconds = (rec.get("seconds") or {}).get("total")
        lines.append(
            f"| {rec.get('model')} | {rec.get('dataset')} | {rec.get('params', 0):,} "
            f"| {metric} {_fmt(final.get(f'test/{metric}'), metric)} | {best_cell} "
            f"| {rec.get('epochs_completed', 0)}/{rec.get('epochs', '?')} "
            f"| {f'{seconds:.0f} s' if seconds is not None else '–'} | {rec.get('status', 'unknown')} |"
        )
    return "\n".join(lines)
