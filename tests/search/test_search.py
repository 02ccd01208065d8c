"""`visionbench search`: grids, random/TPE trials, constraints on the meta device, pruners, shared studies on SQLite
and on a real PostgreSQL server, killed workers and killed studies, the report, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from visionbench import layout
from visionbench.cli.main import main

ROOT = Path(__file__).resolve().parents[2]

# Synthetic 16×16 images: a trial trains in about a second; the kill tests make trials last longer.
BASE = {
    "data": {
        "name": "synthetic",
        "val_fraction": 0.2,
        "kwargs": {"num_classes": 4, "n_train": 512, "n_test": 128, "channels": 1, "size": 16},
    },
    "model": {"name": "small_cnn"},
    "trainer": {"epochs": 2, "batch_size": 64, "checkpoint_every_minutes": None, "progress": "lines", "num_threads": 1},
    "optim": {"lr": 0.05},
}
GRID = {
    "sampler": "grid",
    "heartbeat_seconds": 1,
    "grace_seconds": 3,
    "params": {"optim.lr": {"choice": [0.02, 0.05]}, "trainer.seed": {"choice": [0, 1]}},
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _setup(tmp_path: Path, base: dict = BASE, space: dict = GRID) -> tuple[Path, Path]:
    base = json.loads(json.dumps(base))
    base["trainer"]["out_dir"] = str(tmp_path / "runs")
    return _write(tmp_path / "base.yaml", base), _write(tmp_path / "grid.yaml", space)


def _study(storage: str, name: str = "grid") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _cell(trial) -> tuple:
    return tuple(sorted(trial.params.items()))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, f"expected one line on stderr, got {err}"
    assert "Traceback" not in err[0]
    return err[0]


# --- a grid in one process ----------------------------------------------------------------------------------------


def test_grid_runs_every_cell_once_and_writes_the_report(tmp_path, capsys):
    config, space = _setup(tmp_path)
    assert main(["search", str(config), "--space", str(space)]) == 0
    study_dir = tmp_path / "runs" / "base" / "grid"
    study = _study(f"sqlite:///{study_dir / 'study.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(_cell(t) for t in complete) == sorted(
        (("optim.lr", lr), ("trainer.seed", seed)) for lr in (0.02, 0.05) for seed in (0, 1)
    ), "every grid cell exactly once"
    for t in complete:  # each trial is an ordinary run directory with the trial's overrides in its config
        run = Path(t.user_attrs["run_dir"])
        summary = json.loads((run / layout.SUMMARY).read_text())
        assert summary["status"] == "finished"
        assert t.value == summary["final"]["val/acc1"]
        cfg = yaml.safe_load((run / layout.CONFIG).read_text())
        assert cfg["optim"]["lr"] == t.params["optim.lr"] and cfg["trainer"]["seed"] == t.params["trainer.seed"]
    md = (study_dir / "report.md").read_text()
    for heading in ("## Best trials", "## Parameter importances", "## Optimisation history", "## Runs"):
        assert heading in md, heading
    assert (study_dir / layout.PLOTS / "optimization_history.png").stat().st_size > 1000
    html = (study_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "Best trials" in html
    out = capsys.readouterr().out
    assert "4 trials: 4 complete" in out and "best: trial" in out


def test_finished_study_is_not_rerun_with_resume(tmp_path):
    config, space = _setup(tmp_path)
    assert main(["search", str(config), "--space", str(space)]) == 0
    study_dir = tmp_path / "runs" / "base" / "grid"
    before = {p: p.stat().st_mtime_ns for p in study_dir.glob("trial-*/summary.json")}
    assert main(["search", str(config), "--space", str(space), "--resume"]) == 0
    study = _study(f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 4
    assert {p: p.stat().st_mtime_ns for p in study_dir.glob("trial-*/summary.json")} == before


# --- random and TPE, constraints, pruners -------------------------------------------------------------------------


def test_tpe_runs_the_number_of_trials_asked_and_prunes_over_budget_models_before_training(tmp_path):
    space = {
        "sampler": "tpe",
        "constraints": {"max_params": 10000},
        "params": {
            "model.kwargs.channels": {"choice": [[8, 16], [32, 64]]},  # 6,452 and ~60k parameters
            "optim.lr": {"log_float": [0.01, 0.2]},
        },
    }
    config, space_path = _setup(tmp_path, space=space)
    assert main(["search", str(config), "--space", str(space_path), "--trials", "6"]) == 0
    study = _study(f"sqlite:///{tmp_path / 'runs/base/grid/study.db'}")
    assert len(study.trials) == 6
    for t in study.trials:
        big = t.params["model.kwargs.channels"] == "[32, 64]"
        if big:
            assert t.state == TrialState.PRUNED and t.user_attrs["pruned_by"] == "constraints"
            assert "max_params 10,000" in t.user_attrs["reason"] and t.user_attrs["params"] > 10000
            assert "run_dir" not in t.user_attrs, "an infeasible trial must cost no training"
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs["params"] <= 10000
    assert len(list((tmp_path / "runs/base/grid").glob("trial-*"))) == sum(
        t.state == TrialState.COMPLETE for t in study.trials
    )


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_pruner_stops_bad_trials_from_per_epoch_reports(tmp_path, pruner):
    base = json.loads(json.dumps(BASE))
    base["trainer"]["epochs"] = 4
    space = {
        "sampler": "grid",
        "pruner": {"name": pruner, "startup_trials": 1, "warmup_epochs": 0, "min_epochs": 1, "reduction_factor": 2},
        # a tiny learning rate learns nothing: it falls behind the first trial at once
        "params": {"optim.lr": {"choice": [0.1, 1.0e-6, 2.0e-6]}},
    }
    config, space_path = _setup(tmp_path, base, space)
    assert main(["search", str(config), "--space", str(space_path)]) == 0
    study = _study(f"sqlite:///{tmp_path / 'runs/base/grid/study.db'}")
    states = {t.params["optim.lr"]: t for t in study.trials}
    assert states[0.1].state == TrialState.COMPLETE
    assert [len(t.intermediate_values) for t in study.trials if t.state == TrialState.COMPLETE] == [4]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "a trial that learns nothing is pruned"
    for t in pruned:
        assert t.user_attrs["pruned_by"] == "pruner" and len(t.intermediate_values) < 4
        summary = json.loads((Path(t.user_attrs["run_dir"]) / layout.SUMMARY).read_text())
        assert summary["status"] == "pruned" and summary["epochs_completed"] < 4


def test_compound_scaling_enumerates_the_variants_that_fit_the_budget(tmp_path, capsys):
    base = json.loads(json.dumps(BASE))
    base["model"] = {"name": "resnet_cfg", "kwargs": {"pool_size": 1}}
    base["trainer"]["epochs"] = 1
    space = {
        "sampler": "grid",
        "constraints": {"max_params": 200000},
        "scaling": {"blocks": [1, 1], "channels": [16, 32], "alpha": 2.0, "beta": 1.5, "gamma": 1.25, "phi": [0, 1, 2]},
        "params": {"optim.lr": {"choice": [0.05]}},
    }
    config, space_path = _setup(tmp_path, base, space)
    assert main(["search", str(config), "--space", str(space_path)]) == 0
    out = capsys.readouterr().out
    assert "scaling phi=0: blocks [1, 1] channels [16, 32] 16 px" in out
    assert "scaling phi=1: blocks [2, 2] channels [24, 48] 20 px" in out
    assert "scaling phi=2: blocks [4, 4] channels [40, 72] 25 px" in out and "does not fit: " in out
    study = _study(f"sqlite:///{tmp_path / 'runs/base/grid/study.db'}")
    assert sorted(t.params["scaling.phi"] for t in study.trials) == [0, 1], "only the variants that fit are searched"
    for t in study.trials:
        cfg = yaml.safe_load((Path(t.user_attrs["run_dir"]) / layout.CONFIG).read_text())
        assert cfg["data"]["image_size"] == {0: 16, 1: 20}[t.params["scaling.phi"]]
        assert t.user_attrs["params"] <= 200000


# --- shared studies: two workers, one killed ----------------------------------------------------------------------


def _slow_setup(tmp_path: Path) -> tuple[Path, Path]:
    base = json.loads(json.dumps(BASE))
    base["data"]["kwargs"]["n_train"] = 4096
    base["trainer"].update(epochs=10, checkpoint_every_steps=5)  # seconds per trial, checkpoints within epochs
    return _setup(tmp_path, base)


def _start(config: Path, space: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = config.parent / f"search-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "visionbench", "search", str(config), "--space", str(space), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    return proc, log


def _running_trial_with_checkpoint(storage: str, name: str, deadline: float, proc=None, log: Path | None = None):
    """A RUNNING trial whose run directory already holds a checkpoint (the kill lands mid-trial); a search that
    ended before one did is reported with its output's end, not waited for."""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the search ended ({proc.returncode}) before a trial checkpointed: {log.read_text()[-3000:]}"
            )
        try:
            for t in _study(storage, name).get_trials(states=(TrialState.RUNNING,)):
                run = t.user_attrs.get("run_dir")
                if run and (Path(run) / "checkpoints" / "last").exists():
                    return t
        except (KeyError, ValueError, sqlalchemy.exc.SQLAlchemyError):
            pass  # the study (or the database's folder) is not created yet
        time.sleep(0.1)
    raise AssertionError("no trial reached its first checkpoint in time")


def _check_every_cell_once(storage: str, name: str, killed) -> None:
    trials = _study(storage, name).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert Counter(_cell(t) for t in complete) == Counter(
        (("optim.lr", lr), ("trainer.seed", seed)) for lr in (0.02, 0.05) for seed in (0, 1)
    ), "every cell done exactly once"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [killed.number], "the killed trial alone is failed (its heartbeat stopped)"
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == killed.number]
    assert _cell(retry) == _cell(killed)
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"], "the retry continues the same run directory"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_grid_and_a_killed_workers_trial_is_retried(tmp_path, backend, request):
    config, space = _slow_setup(tmp_path)
    if backend == "sqlite":
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        storage = request.getfixturevalue("postgres_url")
    study_name = f"grid-{backend}-{os.getpid()}-{time.monotonic_ns()}"
    proc, log = _start(config, space, "--workers", "2", "--storage", storage, "--study-name", study_name)
    try:
        victim = _running_trial_with_checkpoint(storage, study_name, time.monotonic() + 300, proc, log)
        pid = int(victim.user_attrs["worker"].split(":")[1])
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=480) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert f"was killed by signal {signal.SIGKILL}" in text, text[-3000:]
    assert f"resuming {victim.user_attrs['run_dir']}" in text, "the retry resumes from the dead trial's checkpoint"
    _check_every_cell_once(storage, study_name, victim)


def test_a_killed_study_resumes_with_resume(tmp_path):
    config, space = _slow_setup(tmp_path)
    storage = f"sqlite:///{tmp_path / 'runs/base/grid/study.db'}"
    proc, log = _start(config, space)
    try:
        victim = _running_trial_with_checkpoint(storage, "grid", time.monotonic() + 300, proc, log)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole search: no worker is left
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc, log = _start(config, space, "--resume")
    assert proc.wait(timeout=480) == 0, log.read_text()[-3000:]
    assert f"resuming {victim.user_attrs['run_dir']}" in log.read_text()
    _check_every_cell_once(storage, "grid", victim)


# --- bad input: one line, exit status 2 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"optim.lrr": {"float": [0.1, 0.2]}}, "params.optim.lrr: not a valid key or value of the config"),
        ({"optim.lr": {"float": [0.2, 0.1]}}, "expected [low, high] with low < high, got [0.2, 0.1]"),
        ({"optim.lr": {"log_float": [0.0, 0.1]}}, "log_float: expected low > 0"),
        ({"optim.lr": {"float": [0.1, 0.2], "int": [1, 2]}}, "expected exactly one of choice, int, float, log_float"),
        ({"optim.lr": {"uniform": [0.1, 0.2]}}, "params.optim.lr.uniform"),
        ({"optim.lr": {"choice": []}}, "choice: expected a non-empty list"),
        ({"optim.lr": {"float": [0.01, 0.1]}}, "needs grid_points (or use choice) under the grid sampler"),
        ({"trainer.batch_size": {"choice": [0, 64]}}, "trainer.batch_size"),
    ],
)
def test_bad_space_is_one_line_and_exit_2(tmp_path, capsys, params, expected):
    config, space = _setup(tmp_path, space={"sampler": "grid", "params": params})
    assert main(["search", str(config), "--space", str(space)]) == 2
    line = _error_line(capsys)
    assert expected in line and str(space) in line, line
    assert not (tmp_path / "runs").exists(), "nothing is written on bad input"


def test_unreachable_storage_is_one_line_and_exit_2(tmp_path, capsys):
    config, space = _setup(tmp_path)
    url = "postgresql://visionbench:secret@127.0.0.1:1/nowhere"
    assert main(["search", str(config), "--space", str(space), "--storage", url]) == 2
    line = _error_line(capsys)
    assert "--storage postgresql://visionbench:***@127.0.0.1:1/nowhere: cannot open the study storage" in line
    assert "secret" not in line


def test_study_created_with_another_space_is_refused(tmp_path, capsys):
    config, space = _setup(tmp_path)
    assert main(["search", str(config), "--space", str(space)]) == 0
    capsys.readouterr()
    other = json.loads(json.dumps(GRID))
    other["params"]["optim.lr"] = {"choice": [0.02, 0.2]}
    _write(space, other)
    assert main(["search", str(config), "--space", str(space), "--resume"]) == 2
    assert "was created with another search space; choose another --study-name" in _error_line(capsys)


def test_existing_study_needs_resume(tmp_path, capsys):
    config, space = _setup(tmp_path)
    assert main(["search", str(config), "--space", str(space)]) == 0
    capsys.readouterr()
    assert main(["search", str(config), "--space", str(space)]) == 2
    assert "exists (4 trials); add --resume to continue it or to join it" in _error_line(capsys)


def test_a_study_whose_creation_was_killed_is_created_again_with_resume(tmp_path):
    config, space = _setup(tmp_path)
    study_dir = tmp_path / "runs" / "base" / "grid"
    study_dir.mkdir(parents=True)
    storage = f"sqlite:///{study_dir / 'study.db'}"
    half = optuna.create_study(storage=storage, study_name="grid", direction="maximize")  # as a kill leaves it:
    half.enqueue_trial({"optim.lr": 0.02, "trainer.seed": 0})  # one cell enqueued, no record yet
    assert main(["search", str(config), "--space", str(space), "--resume"]) == 0
    complete = [t for t in _study(storage).trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({_cell(t) for t in complete}) == 4


def test_a_foreign_study_with_trials_is_not_deleted(tmp_path, capsys):
    config, space = _setup(tmp_path)
    study_dir = tmp_path / "runs" / "base" / "grid"
    study_dir.mkdir(parents=True)
    storage = f"sqlite:///{study_dir / 'study.db'}"
    foreign = optuna.create_study(storage=storage, study_name="grid", direction="maximize")
    foreign.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    assert main(["search", str(config), "--space", str(space), "--resume"]) == 2
    assert "was not created by visionbench search" in _error_line(capsys)
    assert len(_study(storage).trials) == 1
