"""Per-tag logs of a run in TensorBoard's CSV export layout, with one SVG curve per tag: what the VOC study (seed 004)
publishes for each version (`run-resnet18-tag-train_loss.csv`, `train_loss.svg`, ...), from the run's metrics.csv
alone.

TensorBoard's "download CSV" of a scalar tag writes the rows `Wall time,Step,Value`. Here a tag is a metrics.csv
column (`train/loss`, `val/map`), the step is the epoch and the wall time is the row's `wall_time` (Unix seconds when
the epoch's row was recorded), each cell written as metrics.csv holds it. An epoch whose cell is empty (a split not
evaluated that epoch) has no row, as TensorBoard has no point there.

Files are named after the tag with `/` written `_` (`val/map` -> `val_map`), or as `names` says (a study that spells
`val` as `valid`): `run-<run name>-tag-<name>.csv`, TensorBoard's naming, and `<name>.svg`. The folder's index
(`tag_logs.json`) lists each file written there and the run it is from (the run's path from the folder). A file not
in the index (the user's own) or in it for another run is never written over: the whole call is refused, naming it,
before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from visionbench import layout
from visionbench.errors import UserError
from visionbench.report.plots import _pyplot, _read_rows, _save
from visionbench.report.records import find_runs
from visionbench.utils.io import read_json, write_json, write_text
from visionbench.utils.names import storable

HEADER = ("Wall time", "Step", "Value")
MAX_FILE_BYTES = 255  # a file name's limit on Linux, macOS and Windows file systems


@dataclasses.dataclass
class TagLogs:
    """What `_plan` checked and `write` writes: each tag's points (wall time, epoch, value as metrics.csv
    holds them) under its file name, into `out_dir`."""

    run_dir: Path
    out_dir: Path
    run_name: str
    series: dict[str, tuple[str, list[tuple[str, int, str]]]]  # file name -> (tag, points)

    def csv_name(self, name: str) -> str:
        return f"run-{self.run_name}-tag-{name}.csv"

    def files(self) -> list[str]:
        return [f for name in self.series for f in (self.csv_name(name), f"{name}.svg")]

    def write(self) -> list[Path]:
        """The index first (a file it names is ours to write), then each tag's CSV and SVG; returns their paths."""
        index = _read_index(self.out_dir)
        write_json(
            self.out_dir / layout.TAG_LOGS_INDEX,
            {"files": {**index, **dict.fromkeys(self.files(), _key(self.run_dir, self.out_dir))}},
        )
        paths = []
        for name, (tag, points) in self.series.items():
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(points)
            write_text(self.out_dir / self.csv_name(name), buf.getvalue())
            paths += [self.out_dir / self.csv_name(name), _draw(self.out_dir / f"{name}.svg", tag, name, points)]
        return paths


def write_tag_logs(
    run_dir: Path,
    out_dir: Path,
    tags: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    run_name: str | None = None,
) -> list[Path]:
    """Write a run's per-tag CSV logs and SVG curves into `out_dir` (created when missing).

    Args:
        run_dir: the run directory whose metrics.csv is read.
        out_dir: where the files go: outside any run directory, or under `run_dir`'s own plots/.
        tags: metrics.csv columns to write (default: every `split/metric` column with a value).
        names: file name of a tag, for the tags whose name is not the tag with `/` written `_` (e.g.
            `{"val/map": "valid_ap"}`); each key must be a tag written.
        run_name: the run's name in the CSV file names (default: the run directory's name).

    Returns:
        The paths written, a CSV and an SVG per tag.

    Raises:
        UserError: no metrics.csv, a tag that is not a column or has no value, an epoch without its wall time (a
            run written before visionbench recorded it), a name that is not a plain file name or names two tags, an
            `out_dir` that is a file or lies inside a run directory elsewhere than under `run_dir`'s plots/, or a
            file in the way that these logs did not write (then nothing is written).
    """
    return _plan(run_dir, out_dir, tags, names, run_name).write()


def _plan(
    run_dir: Path, out_dir: Path, tags: Sequence[str] | None, names: Mapping[str, str] | None, run_name: str | None
) -> TagLogs:
    """`write_tag_logs`' checks and data, nothing written yet: several runs are all checked before any is written."""
    columns, rows = _metrics(run_dir)
    if tags is None:
        tags = [c for c in columns if "/" in c and any(r.get(c) for r in rows)]
    names = dict(names or {})
    for key in names:
        if key not in tags:
            raise UserError(f"tag log names: {key!r} is not among the tags written ({', '.join(tags) or 'none'})")
    run_name = _file_name(run_name if run_name is not None else run_dir.name, "the run name")
    series: dict[str, tuple[str, list[tuple[str, int, str]]]] = {}
    for tag in tags:
        name = _file_name(names.get(tag, tag.replace("/", "_")), f"the file name of tag {tag!r}")
        if name in series:
            raise UserError(f"tag log names: tags {series[name][0]!r} and {tag!r} would both be written as {name!r}")
        series[name] = (tag, _points(run_dir, columns, rows, tag))
    logs = TagLogs(run_dir, out_dir, run_name, series)
    for file in logs.files():
        if len(file.encode()) > MAX_FILE_BYTES:
            raise UserError(f"tag logs: {file!r} is longer than a file name may be; give a shorter run name or names")
    _check_out(logs)
    return logs


def write_run_tag_logs(paths: list[Path]) -> list[Path]:
    """`visionbench report --tag-logs`: each run's logs (the runs among `paths` that have a metrics.csv) into its
    own `plots/tag_logs/`, every run checked before any file is written."""
    runs = [run for run in find_runs(paths) if (run / layout.METRICS).is_file()]
    plans = [_plan(run, run / layout.PLOTS / layout.TAG_LOGS, None, None, None) for run in runs]
    return [path for plan in plans for path in plan.write()]


def _metrics(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    path = run_dir / layout.METRICS
    if not path.is_file() and not path.is_symlink():
        raise UserError(f"{path}: no such file; per-tag logs are written from a run's {layout.METRICS}")
    return _read_rows(path)


def _points(run_dir: Path, columns: list[str], rows: list[dict[str, str]], tag: str) -> list[tuple[str, int, str]]:
    """(wall time, epoch, value) of each epoch with a value of `tag`, the cells as metrics.csv has them."""
    path = run_dir / layout.METRICS
    if tag not in columns:
        shown = ", ".join(c for c in columns if "/" in c) or "none"
        raise UserError(f"{path}: no column {tag!r} (its split/metric columns: {shown})")
    if layout.WALL_TIME not in columns:
        raise UserError(
            f"{path}: no {layout.WALL_TIME} column (a run written before visionbench recorded it); per-tag logs need "
            "each epoch's wall-clock time"
        )
    points = []
    for row in rows:
        value = row.get(tag)
        if not value:
            continue
        epoch, wall = row.get("epoch") or "", row.get(layout.WALL_TIME) or ""
        if not epoch.isdigit() or not _finite(value) or not _finite(wall):
            raise UserError(
                f"{path}: the row of epoch {epoch or '?'} has {tag}={value!r}, {layout.WALL_TIME}={wall!r}; "
                "expected an epoch number, a finite value and the Unix time it was recorded"
            )
        points.append((wall, int(epoch), value))
    if not points:
        raise UserError(f"{path}: column {tag!r} has no value in any epoch")
    return points


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _file_name(name: object, what: str) -> str:
    """`name` if it is a plain file name component, else a UserError saying which name (`what`) is not."""
    if (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or storable(name) != name
    ):
        raise UserError(
            f"tag logs: {what} is {name!r}; expected a file name without '/', '\\', a leading '.' or control characters"
        )
    return name


def _key(run_dir: Path, out_dir: Path) -> str:
    """How the index names the run: its path from the folder, which stays true when both move together."""
    return Path(os.path.relpath(run_dir.resolve(), out_dir.resolve())).as_posix()


def _read_index(out_dir: Path) -> dict[str, str]:
    """The index's files and the run each is from; {} when the folder has none yet."""
    path = out_dir / layout.TAG_LOGS_INDEX
    if not path.exists() and not path.is_symlink():
        return {}
    index = read_json(path, what=layout.TAG_LOGS_INDEX)
    files = index.get("files") if isinstance(index, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise UserError(f'{path}: expected {{"files": {{file name: run directory}}}}, the index tag logs write')
    return files


def _check_out(logs: TagLogs) -> None:
    """Refuse an `out_dir` that is a file or lies in a run directory (but the run's own plots/), and any file in
    the way that the index does not list for this very run."""
    out = logs.out_dir
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; tag logs are written into a folder")
    inside = layout.enclosing_run_dir(out / layout.TAG_LOGS_INDEX)
    own = logs.run_dir.resolve() / layout.PLOTS
    if inside is not None and own != out.resolve() and own not in out.resolve().parents:
        raise UserError(
            f"{out}: inside the run directory {inside}; tag logs go into a run directory only under the run's own "
            f"{layout.PLOTS}/ folder"
        )
    if not out.is_dir():
        return
    index, key = _read_index(out), _key(logs.run_dir, out)
    for name in logs.files():
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if index.get(name) != key or path.is_symlink() or not path.is_file():
            whose = f"was written for another run ({index[name]})" if name in index else "was not written by tag logs"
            raise UserError(f"{path}: exists and {whose}; nothing written (give another folder)")


def _draw(path: Path, tag: str, name: str, points: list[tuple[str, int, str]]) -> Path:
    """The tag's values per epoch as `<name>.svg`: TensorBoard's scalar chart, one line, titled by the file name."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _pyplot().subplots(figsize=(5, 3.5))
    epochs, values = [p[1] for p in points], [float(p[2]) for p in points]
    ax.plot(epochs, values, marker="o" if len(points) < 30 else None)
    ax.set(xlabel="epoch", ylabel=tag, title=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(fig, path, png=False)
