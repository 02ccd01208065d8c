"""trainer.time_budget_minutes: the schedule runs on the training time spent and the run ends at the budget; the
summary accounts for it. A fake clock (one second per optimizer step) makes every figure exact. Also the
TensorBoard event files of trainer.tensorboard, read back with TensorBoard's own reader."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import OptimConfig
from visionbench.engine import loop
from visionbench.engine.schedule import TimeBudget, budget_schedule_fn

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"


class FakeClock:
    """Each reading is one second after the previous one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, list[dict[str, str]]]:
    out = tmp_path / "runs"
    sets = [f"trainer.out_dir={out}", "trainer.epochs=100", "trainer.batch_size=48", *overrides]
    assert main(["train", str(SMOKE), *[x for o in sets for x in ("--set", o)]]) == 0
    (run,) = out.glob("synthetic/*")
    with open(run / layout.METRICS, newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads((run / layout.SUMMARY).read_text()), rows


def test_the_schedule_anneals_to_its_end_exactly_at_the_budget(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(loop, "budget_clock", FakeClock())
    # 409 training images / 48 = 8 steps an epoch: a 30-second budget (30 steps) ends inside epoch 4
    summary, rows = _run(tmp_path, "trainer.time_budget_minutes=0.5", "optim.schedule=cosine")
    assert summary["status"] == "finished"
    assert summary["time_budget"] == {
        "minutes": 0.5,
        "counts_eval": False,
        "used_seconds": 30.0,
        "used_fraction": 1.0,
        "ended_by": "budget",
    }
    assert summary["final"]["step"] == 30 and summary["epochs_completed"] == 4
    assert float(summary["final"]["lr"]) == 0.0, "cosine reached its end at the budget"
    assert "test/acc1" in summary["final"], "the partial last epoch is evaluated on test"
    peak = 0.05
    for row in rows:  # after step s the learning rate is the cosine at s / 30 of the budget
        s = int(row["step"])
        assert float(row["lr"]) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * s / 30)), rel=1e-5, abs=1e-9)


def test_counting_evaluation_spends_the_budget_sooner(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(loop, "budget_clock", FakeClock())
    summary, _ = _run(tmp_path, "trainer.time_budget_minutes=0.5", "trainer.time_budget_counts_eval=true")
    # each epoch end reads the clock once more: 8 steps + 1 s of "evaluation" an epoch
    assert summary["time_budget"]["ended_by"] == "budget" and summary["time_budget"]["counts_eval"] is True
    assert summary["final"]["step"] < 30


def test_a_budget_longer_than_the_epochs_ends_by_epochs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(loop, "budget_clock", FakeClock())
    summary, _ = _run(tmp_path, "trainer.time_budget_minutes=10", "trainer.epochs=2")
    assert summary["time_budget"]["ended_by"] == "epochs" and summary["time_budget"]["used_seconds"] == 16.0


@pytest.mark.parametrize("schedule", ["cosine", "one_cycle", "step", "constant"])
def test_budget_schedules_follow_the_budget_not_the_steps(schedule: str) -> None:
    cfg = OptimConfig(schedule=schedule, warmup_epochs=1.0, step_epochs=[5.0], min_lr_factor=0.1)
    budget = TimeBudget(minutes=1.0)
    factor = budget_schedule_fn(cfg, steps_per_epoch=10, epochs=10, budget=budget)
    # step 0: the first of 10 real warmup steps (0.1), times the schedule at the budget's start (one_cycle rises
    # from 0 over the first quarter of the budget instead)
    assert factor(0) == pytest.approx(0.0 if schedule == "one_cycle" else 0.1, abs=1e-5)
    budget.used = 60.0  # spent
    end = factor(10_000)
    expected_end = {"cosine": 0.1, "one_cycle": 0.1, "step": 0.1, "constant": 1.0}[schedule]
    assert end == pytest.approx(expected_end, abs=1e-6)
    budget.used = 15.0  # a quarter: the warmup (10 real steps) is over after step 10 whatever the time
    quarter = factor(10)
    expected_quarter = {
        "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)),
        "one_cycle": 1.0,  # the top of the triangle, at a quarter of the budget
        "step": 1.0,  # the milestone sits at 5/10 of the budget
        "constant": 1.0,
    }[schedule]
    assert quarter == pytest.approx(expected_quarter, abs=1e-5)


def test_tensorboard_event_files_hold_every_epoch(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    sets = [f"trainer.out_dir={out}", "trainer.tensorboard=true"]
    assert main(["train", str(SMOKE), *[x for o in sets for x in ("--set", o)]]) == 0
    (run,) = out.glob("synthetic/*")
    events = EventAccumulator(str(run / layout.TENSORBOARD))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/acc1", "val/loss", "lr", "test/acc1"} <= tags
    assert [e.step for e in events.Scalars("val/acc1")] == [1, 2]
    csv_last = (run / layout.METRICS).read_text().splitlines()[-1].split(",")
    header = (run / layout.METRICS).read_text().splitlines()[0].split(",")
    assert events.Scalars("val/acc1")[-1].value == pytest.approx(float(csv_last[header.index("val/acc1")]))
