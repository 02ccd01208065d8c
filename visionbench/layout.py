"""The run directory's format: the name of every file and folder in it, in one place.

A run directory is `runs/<experiment>/<YYYYmmdd-HHMMSS>-<model>-<dataset>/`. `train` writes the resolved `config.yaml`,
`env.json`, `metrics.csv` (one row per epoch), `summary.json`, `checkpoints/last` (everything a bit-identical resume
needs), `checkpoints/best.safetensors` and the task's artifacts of the final model on the val and test splits
(`confusion_matrix_test.json`, `per_class_val.csv`, `reliability_test.json`, `predictions_test.csv` ...); `report`
adds `plots/` (and `plots/tag_logs/` with `--tag-logs`), `explain` adds `explain/<method>-<split>/`, `analyze` adds
`analysis/`, `eval` adds `eval-<split>-<tta>-<weights>.json`, `eval --calibrate` adds `temperature-<weights>.json`,
`export` writes under `export/`. `lr-find` writes its own folder of `lr_find.*` files beside a `config.yaml`.

A study folder (`visionbench study`) holds `README.md` and `report.html`, the figures drawn across its cells under
`figures/`, and one run directory per cell and seed under `runs/<label=value__...>/`.

The writer (engine), the readers (report, inference, transfer, compare) and the tests name these files through this
module only. It sits beside `config.py`, below engine and report, and imports nothing of visionbench.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = f"{CHECKPOINTS}/last"
BEST = f"{CHECKPOINTS}/best.safetensors"
TENSORBOARD = "tensorboard"
PLOTS = "plots"
EXPLAIN = "explain"
ANALYSIS = "analysis"
EXPORT = "export"

LR_FIND_CSV = "lr_find.csv"
LR_FIND_PNG = "lr_find.png"
LR_FIND_JSON = "lr_find.json"
LR_FIND_FILES = (LR_FIND_JSON, LR_FIND_CSV, LR_FIND_PNG, CONFIG)  # all that an lr-find folder holds

# metrics.csv's column of when each row was recorded, in Unix seconds (the per-tag logs' `Wall time`)
WALL_TIME = "wall_time"

# Task artifacts of the final model on a split: `<name>_<split>.json`, or `.csv` for a table of columns
CONFUSION_MATRIX = "confusion_matrix"
PREDICTIONS = "predictions"
PER_CLASS = "per_class"  # .csv: precision, recall, F1 and support per class
RELIABILITY = "reliability"  # .json: ECE, Brier score and the reliability diagram's bins; plots/reliability.png
ERROR_BY_RANGE = "error_by_range"  # .csv: regression's MAE per quantile bin of the true target
CURVES = "curves"  # plots/curves.png and the values it shows, plots/curves.csv
TAG_LOGS = "tag_logs"  # plots/tag_logs/: `report --tag-logs`' per-tag CSV logs and SVG curves (report/tag_logs.py)
TAG_LOGS_INDEX = "tag_logs.json"  # in a folder of tag logs: each file written there and the run it is from
PER_IMAGE = "per_image"  # per-image outputs (per_image.py): what report's intervals and paired tests resample

# analyze's parts under analysis/ that write `<name>.csv` and `<name>.png`
FAILURES = "failures"  # the most confident wrong decisions, as a table and an image grid
CUE_CONFLICT = "cue_conflict"  # shape bias per shape class; the figure of it
CUE_CONFLICT_DECISIONS = "cue_conflict_decisions"  # each stimulus's decision (a table only)
SHAPE_TEXTURE_PROXY = "shape_texture_proxy"  # accuracy on patch-shuffled, blurred and edge images

# Files that only `train` and `lr-find` write beside a resolved config.yaml: what tells their folders from any other
# folder that happens to hold a config.yaml
WRITTEN_BY_RUNS = (SUMMARY, ENV, CHECKPOINTS, LR_FIND_JSON)
# What `report` takes for a run: a summary, or a config.yaml alone (a run that died before its first summary)
REPORTABLE = (SUMMARY, CONFIG)
LR_FIND_MARKERS = (LR_FIND_JSON, LR_FIND_CSV)
RUN_SUBFOLDERS = (EXPLAIN, ANALYSIS, PLOTS, CHECKPOINTS)


# A study folder
STUDY_README = "README.md"
STUDY_HTML = "report.html"
STUDY_FIGURES = "figures"
STUDY_RUNS = "runs"


def cell_dir_name(parts: list[str]) -> str:
    """The folder name of a cell of `compare` or `study`: its `key=value` parts, made safe for a file name."""
    return "__".join(re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s) for s in parts)[:200]


def artifact(name: str, split: str = "test", suffix: str = ".json") -> str:
    """The file of a task artifact on a split: `confusion_matrix_test.json`, `predictions_test.csv` ..."""
    return f"{name}_{split}{suffix}"


def explain_folder(method: str, split: str) -> str:
    """The folder under `explain/` that `visionbench explain` writes one method's grids of a split into."""
    return f"{EXPLAIN}/{method}-{split}"


EXPLAIN_PANELS = "panels.json"  # in an explain folder, written after its grids: the folder is complete


def eval_result(split: str, tta: str, weights: str) -> str:
    """The file `visionbench eval` writes: one per split, test-time augmentation and weights."""
    return f"eval-{split}-{tta}-{weights}.json"


def temperature(weights: str) -> str:
    """The temperature `visionbench eval --calibrate` fits for a run's `best` or `last` weights."""
    return f"temperature-{weights}.json"


def per_image(split: str = "test") -> str:
    """The per-image outputs of the final model on a split, written at the end of `train`."""
    return artifact(PER_IMAGE, split, ".safetensors")


def eval_per_image(split: str, tta: str, weights: str) -> str:
    """The per-image outputs `visionbench eval` writes beside its `eval_result`."""
    return f"eval-{split}-{tta}-{weights}-{PER_IMAGE}.safetensors"


def is_run_dir(folder: Path) -> bool:
    """A folder written by `train` or `lr-find`: other commands must not write into it."""
    return (folder / CONFIG).is_file() and any((folder / name).exists() for name in WRITTEN_BY_RUNS)


def enclosing_run_dir(path: Path) -> Path | None:
    """The run directory that `path` (which need not exist) lies in, if any; the last component is not resolved,
    so a link there is not followed."""
    target = path.parent.resolve() / path.name
    return next((folder for folder in target.parents if is_run_dir(folder)), None)
