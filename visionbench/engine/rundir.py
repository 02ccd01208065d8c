"""Writing a run directory (its format: `visionbench/layout.py`): a fresh folder, the config, the environment,
metrics and summary, and which config keys may differ between a run and the config that meets it again.
Every file is written atomically, so a kill never leaves a half-written one.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import visionbench
from visionbench import layout
from visionbench.config import RunConfig, config_diff, dump_config
from visionbench.errors import UserError
from visionbench.utils.io import read_json, write_json, write_text

# Settings of how a run is carried out, not of what it measures: where it is written, how it reports, how often it
# checkpoints, how many CPU threads it uses, where its data files are found. They may differ between a run and the
# config that continues it (`train --resume`) or meets it again (`compare`).
RUN_SETTINGS = frozenset(
    {
        "trainer.progress",
        "trainer.num_threads",
        "trainer.checkpoint_every_minutes",
        "trainer.checkpoint_every_epochs",
        "trainer.checkpoint_every_steps",
        "trainer.tensorboard",
        "trainer.plots",
        "data.root",
        "data.download",
    }
)
# Where a run lives: fixed once it exists.
PLACE_KEYS = frozenset({"trainer.out_dir", "trainer.experiment"})


def new_run_dir(cfg: RunConfig, prefix: str = "") -> Path:
    """Create a fresh, uniquely named run directory for `cfg` (`prefix` names other outputs, e.g. lr_find-)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{cfg.model.name}-{cfg.data.name}")
    parent = Path(cfg.trainer.out_dir) / (cfg.trainer.experiment or "default")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = parent / (f"{prefix}{stamp}-{slug}" if n == 0 else f"{prefix}{stamp}-{slug}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:  # a file in the way, no permission, a read-only disk
            raise UserError(f"trainer.out_dir: cannot create {path.parent} ({e.strerror or e})") from None
    raise RuntimeError(f"could not create a run directory under {parent}")


def find_resumable(cfg: RunConfig) -> Path:
    """The newest run of `cfg`'s experiment that has a checkpoint and did not finish."""
    parent = Path(cfg.trainer.out_dir) / (cfg.trainer.experiment or "default")
    for path in sorted(parent.glob("*/"), reverse=True):
        if (path / layout.LAST).exists() and read_summary(path).get("status") != "finished":
            return path
    raise UserError(f"--resume auto: no unfinished run with a checkpoint under {parent}")


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json as a dict; {} when it is missing or unreadable (a run that died early), read with read_json's
    bounds, so a FIFO, a huge or a deeply nested file cannot hang or crash the caller."""
    try:
        summary = read_json(run_dir / layout.SUMMARY, what=layout.SUMMARY)
    except UserError:
        return {}
    return summary if isinstance(summary, dict) else {}


def config_changes(new: RunConfig, stored: RunConfig) -> list[str]:
    """The dotted keys whose values differ between `new` and a run's `stored` config and change what it measures
    (not `RUN_SETTINGS` nor where the run lives)."""
    return [k for k in config_diff(new, stored) if k not in RUN_SETTINGS | PLACE_KEYS]


def with_run_settings(stored: RunConfig, new: RunConfig) -> RunConfig:
    """`stored` (a run's config) with `new`'s `RUN_SETTINGS`: what a resume runs with."""
    sections: dict[str, dict[str, Any]] = {}
    for key in RUN_SETTINGS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    return stored.model_copy(
        update={section: getattr(stored, section).model_copy(update=values) for section, values in sections.items()}
    )


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    write_text(run_dir / layout.CONFIG, dump_config(cfg))


def write_env(run_dir: Path, cfg: RunConfig, device: torch.device) -> None:
    env = {
        "visionbench": visionbench.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "seed": cfg.trainer.seed,
        "deterministic": cfg.trainer.deterministic,
        "argv": sys.argv,
        **_git_state(),
    }
    for name in ("torchvision", "timm", "torchmetrics", "numpy"):
        try:  # the installed distribution's version: importing them to ask would cost a small run seconds
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    write_json(run_dir / layout.ENV, env)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv from all rows so far; columns are the union in first-seen order (epoch, step, ... first)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(run_dir / layout.METRICS, buf.getvalue())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / layout.SUMMARY, summary)


def _git_state() -> dict[str, Any]:
    """The commit and dirty flag of the visionbench checkout (airbench saves its source; we save the SHA)."""
    root = Path(visionbench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": None, "git_dirty": None}
    if sha.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
