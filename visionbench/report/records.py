"""Records of run directories: which folders under the paths given are runs, and each run's summary.json plus its
path and its config.yaml as one dict.

The config is read as a plain dict rather than validated, so that runs written by an older visionbench still
report. Unfinished and failed runs keep their status and a run whose summary.json is missing or corrupt becomes
`unreadable`, never dropped: a table that silently loses a diverged seed overstates the mean (tables.py).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from visionbench import layout
from visionbench.config import YAMLLimitError, safe_load, yaml_problem
from visionbench.errors import UserError, first_line
from visionbench.utils.bounded import CONFIG_BYTES, UnreadableFile, read_text
from visionbench.utils.io import read_json

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"
NO_CONFIG = f"no {layout.CONFIG}"
# summary.json repeats a few config values: the fallback when config.yaml is missing or unreadable.
_SUMMARY_KEYS = {"model.name": "model", "data.name": "dataset", "trainer.epochs": "epochs"}
MISSING = object()  # what `config_value` gives for a key a record lacks; unlike None, a value no YAML can hold


# Folders that hold a run's marker without being a run: what `visionbench lr-find` writes (its config.yaml beside
# lr_find.json, lr_find.csv and lr_find.png), told by those files rather than by its `lr_find-` name, which --out
# can change; and any folder inside a run (explain/, analysis/, plots/, checkpoints/ or the user's own): runs do not
# nest. A search's study folder (report.md, study.db, plots/) holds no marker itself; its trials are runs.


def _has_marker(path: Path) -> bool:
    return any((path / marker).is_file() for marker in layout.REPORTABLE)


def _is_lr_find(path: Path) -> bool:
    return any((path / marker).is_file() for marker in layout.LR_FIND_MARKERS)


def _in_run(path: Path) -> bool:
    return _has_marker(path.resolve().parent)  # resolved: the parent of `.` is `.` itself


def _is_run(path: Path) -> bool:
    return path.is_dir() and _has_marker(path) and not _is_lr_find(path) and not _in_run(path)


def _not_a_run(path: Path) -> str | None:
    """What a folder given as a path is instead of a run: an lr-find output, or a folder inside a run."""
    if not path.is_dir():
        return None
    if _is_lr_find(path):
        return f"the output of `visionbench lr-find` ({', '.join(layout.LR_FIND_FILES[:3])}), not a training run"
    if (_has_marker(path) or path.name in layout.RUN_SUBFOLDERS) and _in_run(path):
        return f"a folder inside the run {path.resolve().parent}, not a run: report the run itself"
    return None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths`: each is a run (has summary.json or config.yaml), an experiment folder of
    runs, or an output folder of experiments (`runs/`). lr-find outputs are not runs, wherever they are found.

    Raises:
        UserError: a path does not exist or is a file, a path is an lr-find output or a folder inside a run and no
            other path holds a run, or no run directory is found at all.
    """
    runs: dict[Path, None] = {}  # ordered and without duplicates
    skipped: list[str] = []  # paths given that are not runs
    lr_finds = 0  # lr-find outputs found inside the folders given
    for path in paths:
        if _is_run(path):
            runs[path] = None
        elif (what := _not_a_run(path)) is not None:
            skipped.append(f"{path}: {what}")
        elif path.is_dir():
            found = {
                p.parent for m in layout.REPORTABLE for pattern in (f"*/{m}", f"*/*/{m}") for p in path.glob(pattern)
            }
            runs.update(dict.fromkeys(sorted(p for p in found if _is_run(p))))
            lr_finds += sum(1 for p in found if p.is_dir() and _is_lr_find(p))
        elif path.exists():
            raise UserError(f"{path}: not a run directory or a folder of runs")
        else:
            raise UserError(f"{path}: no such run directory or folder")
    if not runs and skipped:
        raise UserError(skipped[0])
    if not runs:
        ignored = f" ({lr_finds} lr-find output{'s' if lr_finds > 1 else ''} ignored)" if lr_finds else ""
        raise UserError(
            f"no run directories (with {layout.SUMMARY} or {layout.CONFIG}) under {', '.join(map(str, paths))}{ignored}"
        )
    for line in skipped:
        log.warning("skipped %s", line)
    return list(runs)


def _read_config(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """config.yaml as a dict, and the reason when it cannot be read ({} then); read with the config reader's
    bounds (regular file, size, alias expansion, depth)."""
    try:
        config = safe_load(read_text(run_dir / layout.CONFIG, layout.CONFIG, CONFIG_BYTES))
    except UnreadableFile as e:
        return {}, NO_CONFIG if e.missing else e.reason
    except YAMLLimitError as e:
        return {}, f"{layout.CONFIG} refused{yaml_problem(e)}"
    except yaml.YAMLError as e:
        return {}, f"{layout.CONFIG} is not YAML ({first_line(e, 80)})"
    if not isinstance(config, dict):
        return {}, f"{layout.CONFIG} is not a mapping"
    return config, None


def load_record(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json with `run_dir` and `config` (config.yaml as a dict) added.

    A missing or corrupt summary.json, or a config.yaml that exists but cannot be read (not YAML, an alias bomb,
    nested too deep), gives status `unreadable` with the reason in `error` instead of raising, so that one broken
    directory cannot hide the other runs; a run with a readable summary and no config.yaml (an older layout) keeps
    its status, `config_error` saying why its config is empty. Every file is read with bounds (utils/bounded.py).
    """
    config, config_error = _read_config(run_dir)
    base: dict[str, Any] = {"run_dir": str(run_dir)}
    extra: dict[str, Any] = {"config": config, **({"config_error": config_error} if config_error else {})}
    try:
        summary = read_json(run_dir / layout.SUMMARY, what=layout.SUMMARY)
    except UnreadableFile as e:
        return {**base, "status": UNREADABLE, "error": f"no {layout.SUMMARY}" if e.missing else e.reason, **extra}
    if not isinstance(summary, dict):
        return {**base, "status": UNREADABLE, "error": f"{layout.SUMMARY} is not a JSON object", **extra}
    for key in ("final", "best", "seconds", "test_details"):  # what the tables and figures index into
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            return {**base, "status": UNREADABLE, "error": f"{layout.SUMMARY}: `{key}` is not an object", **extra}
    if config_error and config_error != NO_CONFIG:  # a wrong config would put the run in the wrong cell
        return {**base, **summary, "status": UNREADABLE, "error": config_error, **extra}
    return {**base, **summary, "status": str(summary.get("status", "unknown")), **extra}


def is_readable(record: dict[str, Any]) -> bool:
    return record.get("status") != UNREADABLE


def config_value(record: dict[str, Any], key: str) -> Any:
    """The value of a dotted config key in the record's config.yaml (summary.json's copy for model, dataset and
    epochs when the config lacks it); `MISSING` when absent."""
    node: Any = record.get("config") or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            fallback = _SUMMARY_KEYS.get(key)
            return record[fallback] if fallback and record.get(fallback) is not None else MISSING
        node = node[part]
    return node


def _flatten(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs; an empty mapping is no leaf, so `kwargs: {}` and `kwargs: {classes: 5}` differ
    only in `kwargs.classes`."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def config_keys(records: list[dict[str, Any]]) -> list[str]:
    """Every dotted leaf key of the records' configs, sorted."""
    keys = set(_SUMMARY_KEYS)
    for rec in records:
        keys.update(k for k, _ in _flatten(rec.get("config") or {}))
    return sorted(keys)


def check_keys(records: list[dict[str, Any]], keys: list[str], option: str) -> None:
    """A key that no run's config has is a typo, not a column of dashes.

    Raises:
        UserError: naming the option, the key and the closest keys that exist.
    """
    known = config_keys(records)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UserError(f"{option} {key}: no run's {layout.CONFIG} has this key{hint}")
