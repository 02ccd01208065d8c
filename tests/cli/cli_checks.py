"""Checks shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from visionbench import layout
from visionbench.cli.main import main


def refused(capsys, argv: list, needle: str) -> str:
    """Run `main(argv)` in-process and require bad input's answer: exit 2, nothing on stdout, one `error:` line on
    stderr holding `needle`, no traceback; returns that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert needle in err, err
    return err


def train_yaml(folder: Path, data: dict, task: dict | None = None) -> Path:
    """Train small_cnn for one epoch on 16x16 streamed images; returns the run directory."""
    cfg = {
        "data": {"image_size": 16, "num_workers": 0, "val_fraction": 0.2, **data},
        "model": {"name": "small_cnn"},
        "task": task or {},
        "trainer": {
            "epochs": 1,
            "batch_size": 8,
            "device": "cpu",
            "out_dir": str(folder / "runs"),
            "checkpoint_every_minutes": None,
            "progress": "lines",
        },
    }
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config)]) == 0
    (summary,) = (folder / "runs").glob(f"*/*/{layout.SUMMARY}")
    return summary.parent
