"""The report's tables of uncertainty: under each pivot, the 95 % confidence interval of every cell's test metric,
and with `--versus ROW` a paired test of every other row against that row on the same test images (stats.py has
the numbers and what they mean).

A single run's interval and every paired test read the run's per-image test outputs (visionbench/per_image.py),
checked to reproduce the test value of its summary.json, so that a stale or foreign file cannot lend a run another's
numbers.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from visionbench import layout, per_image
from visionbench.errors import UserError
from visionbench.report import stats
from visionbench.report.records import config_value
from visionbench.report.tables import (
    Cell,
    Table,
    final_value,
    is_percent,
    label,
    metric_groups,
    pivot_cells,
    pivot_table,
)
from visionbench.utils.bounded import UnreadableFile

# What must be equal for two runs to have been tested on the same images, besides their targets (the digest)
_SAME_TEST_SET = ("data.name", "data.test_subset")
_LEVEL = f"{100 * stats.LEVEL:g} %"


@dataclasses.dataclass(frozen=True)
class _Pivot:
    """One main metric's pivot: its keys, its row and column labels in order, the records of each cell."""

    metric: str
    row_keys: list[str]
    col_keys: list[str]
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], list[dict[str, Any]]]

    def parts(self) -> tuple:
        """The fields in order, not copied (dataclasses.astuple would deep-copy every record)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def result_tables(
    records: list[dict[str, Any]], row_keys: list[str], col_keys: list[str], versus: str | None = None
) -> list[Table]:
    """Each main metric's pivot followed by its intervals; then, with `versus`, the paired tests of each pivot that
    has that row.

    Raises:
        UserError: `versus` is no row of any pivot; a run compared has no readable per-image test outputs, or
            outputs that do not give its test value; two runs compared were tested on different images.
    """
    tables, tests, labels = [], [], set()
    for metric, group in metric_groups(records).items():
        tables.append(pivot_table(group, metric, row_keys, col_keys))
        if metric is None:  # runs without a readable summary: no metric to bound
            continue
        pivot = _Pivot(metric, row_keys, col_keys, *pivot_cells(group, row_keys, col_keys))
        labels.update(pivot.rows)
        tables.append(_interval_table(pivot))
        if versus is not None and versus in pivot.rows:
            tests.append(_versus_table(pivot, versus))
    if versus is not None and not tests:
        raise UserError(f"--versus {versus}: no such row; the rows are: {', '.join(sorted(labels))}")
    return tables + tests


def _finished(records: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The runs of a cell that its pivot value averages: finished, with a test value."""
    return [r for r in records if r.get("status") == "finished" and final_value(r, metric) is not None]


def _fmt(value: float, metric: str, sign: str = "") -> str:
    return f"{100 * value:{sign}.2f}" if is_percent(metric) else f"{value:{sign}.4f}"


def _unit(metric: str) -> str:
    return " %" if is_percent(metric) else ""


def load_outputs(record: dict[str, Any], metric: str) -> per_image.PerImage:
    """A run's per-image test outputs, checked to be for `metric` and to give the test value of its summary.json.

    Raises:
        UnreadableFile: missing (`missing` set) or unreadable.
        UserError: for another metric, or giving another test value.
    """
    path = Path(record["run_dir"]) / layout.per_image()
    data = per_image.load(path)
    if data.metric != metric:
        raise UserError(f"{path}: per-image outputs for {data.metric}; the run's main metric is {metric}")
    mine, theirs = per_image.value(data), final_value(record, metric)
    if not math.isclose(mine, theirs, rel_tol=1e-4, abs_tol=2e-6):  # summary.json rounds to 6 decimals
        raise UserError(
            f"{path}: gives test/{metric} {mine:.6f}, {layout.SUMMARY} says {theirs:.6f}: not this run's final outputs"
        )
    return data


def _interval_cell(records: list[dict[str, Any]], metric: str) -> Cell:
    runs = _finished(records, metric)
    if len(runs) > 1:
        low, high = stats.t_interval([final_value(r, metric) for r in runs])
        how = f"t, n={len(runs)}"
    elif runs:
        try:
            data = load_outputs(runs[0], metric)
        except UnreadableFile as e:
            return Cell("– (no per-image outputs)" if e.missing else f"– ({e.reason})")
        except UserError as e:
            return Cell(f"– ({e})")
        low, high = stats.bootstrap_interval(data)
        how = f"bootstrap, {data.images:,} images"
    else:
        return Cell("–")
    return Cell(f"[{_fmt(low, metric)}, {_fmt(high, metric)}]{_unit(metric)} ({how})", sort=low)


def _interval_table(pivot: _Pivot) -> Table:
    metric, row_keys, col_keys, rows, cols, cells = pivot.parts()
    what = f"test/{metric}" + (" (%)" if is_percent(metric) else "")
    return Table(
        title=f"{_LEVEL} interval of {what}: {', '.join(row_keys)} × {', '.join(col_keys)}",
        header=[", ".join(row_keys), *cols],
        numeric=[False, *([True] * len(cols))],
        rows=[[Cell(row), *(_interval_cell(cells.get((row, col), []), metric) for col in cols)] for row in rows],
        notes=[
            f"{_LEVEL} confidence interval of each cell above. Several finished runs (t): Student's t on their"
            " mean, n-1 degrees of freedom; it measures training randomness and is wide for few seeds. One run"
            f" (bootstrap): percentile bootstrap over its test images ({stats.RESAMPLES:,} resamples, seed"
            f" {stats.SEED}), the metric recomputed on each; it measures test-set sampling only, not training"
            f" randomness. A single run without {layout.per_image()} (trained before it was written) has none."
        ],
    )


def _check_same_images(runs: list[dict[str, Any]], outputs: list[per_image.PerImage], versus: str) -> None:
    """Refuse to pair runs that were not tested on the same images in the same order."""
    first, data = runs[0], outputs[0]
    for rec, other in zip(runs[1:], outputs[1:], strict=True):
        differ = [k for k in _SAME_TEST_SET if label(config_value(rec, k)) != label(config_value(first, k))]
        if other.images != data.images:
            differ.append(f"{other.images:,} against {data.images:,} test images")
        elif other.targets_digest != data.targets_digest:
            differ.append("their test targets differ")
        if differ:
            raise UserError(
                f"--versus {versus}: {rec['run_dir']} and {first['run_dir']} were not tested on the same test images"
                f" ({'; '.join(differ)})"
            )


def _outputs(runs: list[dict[str, Any]], metric: str, versus: str) -> list[per_image.PerImage]:
    try:
        return [load_outputs(rec, metric) for rec in runs]
    except UnreadableFile as e:
        why = "trained before visionbench wrote it" if e.missing else e.reason
        raise UserError(f"--versus {versus}: {e.path}: no usable per-image test outputs ({why})") from None
    except UserError as e:
        raise UserError(f"--versus {versus}: {e}") from None


def _versus_table(pivot: _Pivot, versus: str) -> Table:
    metric, row_keys, col_keys, rows, cols, cells = pivot.parts()
    table_rows = []
    for col in cols:
        base_runs = _finished(cells.get((versus, col), []), metric)
        if not base_runs:
            continue
        base = _outputs(base_runs, metric, versus)
        _check_same_images(base_runs, base, versus)  # a cell's runs are scored on the same resamples too
        for row in rows:
            runs = _finished(cells.get((row, col), []), metric)
            if row == versus or not runs:
                continue
            outputs = _outputs(runs, metric, versus)
            _check_same_images(base_runs + runs, base + outputs, versus)
            table_rows.append(_versus_row(row, col, stats.paired(base, outputs), len(base), len(outputs), metric))
    unit = " (pp)" if is_percent(metric) else ""
    return Table(
        title=f"test/{metric} against {versus}: paired tests on the same test images",
        header=[
            ", ".join(row_keys),
            ", ".join(col_keys),
            "images",
            f"difference{unit}",
            f"{_LEVEL} interval",
            "p",
            "test",
        ],
        numeric=[False, False, True, True, True, True, False],
        rows=table_rows,
        notes=([] if table_rows else [f"No other row has a finished run in a column of {versus}."])
        + [
            f"difference: the row's test/{metric} minus {versus}'s on the same test images"
            + (", in percentage points" if is_percent(metric) else "")
            + ". Where both cells hold one run and the metric is accuracy: McNemar's exact test on the images that"
            " one run gets right and the other wrong (row's vs the other's), with the matching exact interval. Else a"
            f" paired bootstrap over the test images ({stats.RESAMPLES:,} resamples, seed {stats.SEED}): percentile"
            f" interval, p no smaller than 1/{stats.RESAMPLES + 1:,}; a cell of several runs enters as the mean over"
            " its runs on each resample (seeds are not paired). Test-set sampling only; p-values are not corrected"
            " for multiple comparisons."
        ],
    )


def _versus_row(row: str, col: str, c: stats.Comparison, n_base: int, n_row: int, metric: str) -> list[Cell]:
    runs = f" ({n_row} vs {n_base} runs)" if max(n_base, n_row) > 1 else ""
    return [
        Cell(row),
        Cell(col),
        Cell(f"{c.images:,}", sort=c.images),
        Cell(_fmt(c.difference, metric, "+"), sort=c.difference),
        Cell(f"[{_fmt(c.low, metric, '+')}, {_fmt(c.high, metric, '+')}]", sort=c.low),
        Cell(f"{c.p:.3g}", sort=c.p),
        Cell(c.test + runs),
    ]
