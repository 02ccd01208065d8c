"""Golden runs: a seeded, deterministic 2-epoch CPU run of small_cnn on the synthetic task must give the stored
metrics (tests/golden/*.json) within tolerance. Regenerate only with `pytest --update-golden`, and review the diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.cli.main import main

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@pytest.mark.parametrize("model", ["small_cnn", "fastnet_s", "resnet_cfg_small"])
def test_seeded_run_matches_golden_metrics(model, tmp_path, update_golden):
    sets = [f"model.name={model}", "trainer.deterministic=true", "trainer.epochs=2", f"trainer.out_dir={tmp_path}"]
    assert main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])]) == 0
    (summary_path,) = tmp_path.glob(f"*/*/{layout.SUMMARY}")
    summary = json.loads(summary_path.read_text())
    got = {k: v for k, v in summary["final"].items() if k not in ("elapsed_seconds", layout.WALL_TIME)}
    got["params"] = summary["params"]
    path = GOLDEN / f"{model}_synthetic.json"
    if update_golden:
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert set(got) == set(expected), f"metric names changed: {sorted(set(got) ^ set(expected))}"
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-4), f"{key}: got {got[key]}, golden {value}"
