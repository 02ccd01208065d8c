"""`search`: trials of a config drawn from a space (space.py), run by workers that share one optuna study.

Storage is optuna's RDBStorage: a SQLite file in the study folder by default, a PostgreSQL URL when workers run on
several machines. What makes many workers safe:

- A grid is not sampled: its cells are enqueued once as WAITING trials, and a worker claims one by moving it to
  RUNNING in the database, which only one worker can do (optuna's own claim of enqueued trials). A worker that
  finds nothing to claim waits for the running trials instead of sampling, so no cell runs twice (the duplicate
  grid cells of optuna's GridSampler under several workers are Optuna #2039 and #4627).
- A running trial beats a heartbeat into the storage; a trial silent for `grace_seconds` (its worker was killed)
  is failed by whichever worker notices and re-enqueued with the same parameters (optuna's
  RetryHeartbeatStaleTrialCallback). Its retry resumes the dead trial's run directory from its last checkpoint.
- Each trial is `train()` in its own run directory `runs/<experiment>/<study>/trial-NNNN`; its validation metric
  is reported each epoch, so the pruner can stop it; the constraints are checked on the meta device before.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from visionbench.config import RunConfig, config_from_raw, read_config_file
from visionbench.engine.compare import STOP_GRACE_SECONDS, Cell, run_cell
from visionbench.engine.loop import RunStopped, TrainState
from visionbench.errors import UserError, first_line
from visionbench.search import scaling as scaling_
from visionbench.search.space import SCALING_PARAM, Param, Space, check_keys, grid_cells, override_text, read_space
from visionbench.utils import interrupts

ATTR = "visionbench"  # the study's user attribute holding what it was created with
DEFAULT_TRIALS = 20

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Everything a worker needs, resolved and validated once by `prepare` (picklable for worker processes)."""

    config_path: Path
    raw: dict[str, Any]  # the base config file's mapping
    overrides: tuple[str, ...]  # --set
    space: Space
    sampler: str
    trials: int  # random/tpe: trials to run; grid: its cells
    storage_url: str
    study_name: str
    study_dir: Path
    metric: str
    direction: str  # maximize | minimize
    variants: dict[float, tuple[str, ...]]  # scaling: phi -> overrides, only those that fit
    cells: tuple[dict[str, Any], ...]  # grid cells (empty for random/tpe)
    base_config: str  # the base config's YAML, for the study's record

    def trial_config(self, overrides: list[str]) -> RunConfig:
        return config_from_raw(
            self.raw, [*self.overrides, *overrides], str(self.config_path), experiment=self.config_path.stem
        )


# --- preparing ----------------------------------------------------------------------------------------------------


def prepare(
    config_path: Path,
    space_path: Path,
    overrides: list[str] = (),
    sampler: str | None = None,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    log=print,
) -> SearchSpec:
    """Read and check the config and the space: keys, bounds, the scaling variants and the grid, before any trial.

    Raises:
        UserError: a space key the config does not have, bad bounds, a grid cell the config refuses, no variant
            of the scaling that fits, a metric the runs will not have.
    """
    from visionbench.config import dump_config

    raw = read_config_file(config_path)
    space = read_space(space_path)
    base = config_from_raw(raw, list(overrides), str(config_path), experiment=config_path.stem)
    check_keys(space, raw, list(overrides), space_path)
    sampler = sampler or space.sampler
    infos: dict[str, Any] = {}
    info = data_info(base, infos)
    from visionbench.tasks import build_task

    task = build_task(base.task, info)
    if base.data.val_fraction <= 0:
        raise UserError(
            f"{config_path}: data.val_fraction is 0; a search selects on a validation split (never on test): "
            "set data.val_fraction > 0"
        )
    metric = space.metric or f"val/{task.main_metric}"
    if not metric.startswith("val/"):
        raise UserError(f"{space_path}: metric {metric!r}: expected a validation metric, val/<name>")
    direction = "maximize" if task.mode == "max" else "minimize"

    variants: dict[float, tuple[str, ...]] = {}
    if space.scaling is not None:
        if base.model.name != "resnet_cfg":
            raise UserError(f"{space_path}: scaling: applies to model resnet_cfg, the config has {base.model.name}")
        side = input_size(base, info)[1]

        def measure_variant(v: scaling_.Variant) -> tuple[int, int]:
            cfg = config_from_raw(raw, [*overrides, *v.overrides()], str(config_path))
            return measure(cfg, data_info(cfg, infos))

        found = scaling_.variants(
            space.scaling,
            side,
            measure_variant,
            space.constraints.max_params,
            space.constraints.max_flops,
        )
        for v in found:
            size = f"{v.image_size} px" if v.image_size else f"{side} px"
            mark = "fits" if v.fits else f"does not fit: {v.reason}"
            log(
                f"scaling phi={v.phi:g}: blocks {list(v.blocks)} channels {list(v.channels)} {size}, "
                f"{v.params:,} params, {v.flops:,} FLOPs: {mark}"
            )
        variants = {v.phi: tuple(v.overrides()) for v in found if v.fits}
        if not variants:
            raise UserError(f"{space_path}: scaling: no phi in {space.scaling.phi} fits the constraints")

    cells: list[dict[str, Any]] = []
    if sampler == "grid":
        try:
            cells = grid_cells(space, list(variants))
        except UserError as e:
            raise UserError(f"{space_path}: {e}") from None
        if trials is not None:
            cells = cells[:trials]
        for cell in cells:  # every cell must be a config; a refused one is an error now, not a failed trial later
            spec_overrides = _overrides(space, variants, cell)
            try:
                config_from_raw(raw, [*overrides, *spec_overrides], str(config_path))
            except UserError as e:
                raise UserError(f"{space_path}: grid cell {' '.join(spec_overrides)}: {e}") from None
    n_trials = len(cells) if sampler == "grid" else trials or space.trials or DEFAULT_TRIALS
    name = study_name or space_path.stem.removesuffix(".space")
    study_dir = Path(base.trainer.out_dir) / (base.trainer.experiment or config_path.stem) / name
    url = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    return SearchSpec(
        config_path=config_path,
        raw=raw,
        overrides=tuple(overrides),
        space=space,
        sampler=sampler,
        trials=n_trials,
        storage_url=url,
        study_name=name,
        study_dir=study_dir,
        metric=metric,
        direction=direction,
        variants=variants,
        cells=tuple(cells),
        base_config=dump_config(base),
    )


def data_info(cfg: RunConfig, cache: dict[str, Any]):
    """The DatasetInfo of a config's dataset (classes, input size), loaded once per dataset: augmentation and
    `data.image_size` do not change it here (`input_size` applies the size)."""
    from visionbench.config import AugmentConfig
    from visionbench.data import build_datasets

    key = cfg.data.model_dump_json(exclude={"augment", "image_size"})
    if key not in cache:
        cache[key] = build_datasets(cfg.data.model_copy(update={"image_size": None, "augment": AugmentConfig()})).info
    return cache[key]


def input_size(cfg: RunConfig, info) -> tuple[int, int, int]:
    C, H, W = info.input_size
    side = cfg.data.image_size
    return (C, side, side) if side else (C, H, W)


def measure(cfg: RunConfig, info) -> tuple[int, int]:
    """(params, FLOPs per image) of a config's model, on the meta device: no weights allocated, nothing trained."""
    from visionbench.engine.assembly import create_run_model
    from visionbench.models import inspect_on_meta

    size = input_size(cfg, info)
    shaped = dataclasses.replace(info, input_size=size)
    return inspect_on_meta(lambda: create_run_model(cfg, shaped), size, cfg.model.name)


def _overrides(space: Space, variants: dict[float, tuple[str, ...]], values: dict[str, Any]) -> list[str]:
    """The `key=value` overrides of a trial from its optuna parameter values (choices stored as YAML text)."""
    out: list[str] = []
    if SCALING_PARAM in values:
        out += variants[values[SCALING_PARAM]]
    for key, param in space.params.items():
        out.append(f"{key}={override_text(_value(param, values[key]))}")
    return out


def _value(param: Param, stored: Any) -> Any:
    if param.kind == "choice":
        from visionbench.search.space import _text

        return next(v for v in param.choice if _text(v) == stored)
    return stored


# --- storage and study --------------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """A storage URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{tail}" if ":" in creds else url


def open_storage(spec: SearchSpec):
    """optuna's RDBStorage with heartbeats and retries of dead trials; a storage that cannot be reached is a
    UserError naming the URL (password hidden)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = spec.storage_url
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--storage {url}: cannot create {path.parent} ({e.strerror or e})") from None
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several local workers wait on SQLite's lock
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=spec.space.heartbeat_seconds,
                grace_period=spec.space.grace_seconds,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=spec.space.max_retries, inherit_intermediate_values=True
                ),
            )
    except Exception as e:  # noqa: BLE001  (sqlalchemy's and the drivers' errors: all mean "cannot use this URL")
        raise UserError(f"--storage {redact(url)}: cannot open the study storage ({first_line(e)})") from None


def _record(spec: SearchSpec) -> dict[str, Any]:
    return {
        "space": spec.space.fingerprint(),
        "sampler": spec.sampler,
        "config": spec.base_config,
        "metric": spec.metric,
        "cells": len(spec.cells),
    }


def open_study(spec: SearchSpec, storage, resume: bool):
    """Create the study (and enqueue a grid's cells), or with `resume` load it after checking that it was created
    with the same space, sampler and base config."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=spec.direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
        if study.user_attrs.get(ATTR) is None and _interrupted_creation(study):
            log.warning(
                "study %r: its creation was interrupted before it was complete; creating it again", spec.study_name
            )
            optuna.delete_study(study_name=spec.study_name, storage=storage)
            return open_study(spec, storage, resume)
        _check_same_study(spec, study, resume)
        return study
    for cell in spec.cells:
        study.enqueue_trial(cell, skip_if_exists=False)
    study.set_user_attr("visionbench_enqueued", len(spec.cells))
    study.set_user_attr(ATTR, _record(spec))  # last: a study with the record was created whole (grid included)
    return study


def _interrupted_creation(study) -> bool:
    """A study that `open_study` began (a kill came between its creation and its record): no record yet, and no
    trial other than the grid cells it was enqueueing. A foreign study has trials or attributes of its own; an empty
    one without attributes holds nothing to lose."""
    from optuna.trial import TrialState

    return set(study.user_attrs) <= {"visionbench_enqueued"} and all(
        t.state == TrialState.WAITING for t in study.trials
    )


def _check_same_study(spec: SearchSpec, study, resume: bool) -> None:
    record = study.user_attrs.get(ATTR)
    where = f"study {spec.study_name!r} in {redact(spec.storage_url)}"
    if record is None:
        raise UserError(f"{where} was not created by visionbench search; choose another --study-name")
    if record.get("space") != spec.space.fingerprint() or record.get("metric") != spec.metric:
        raise UserError(f"{where} was created with another search space; choose another --study-name")
    if record.get("sampler") != spec.sampler:
        raise UserError(f"{where} uses the {record.get('sampler')} sampler, not {spec.sampler}")
    if record.get("config") != spec.base_config:
        from visionbench.config import config_diff, safe_load, validate

        try:
            stored = validate(safe_load(record["config"]), where)
            differ = config_diff(stored, validate(safe_load(spec.base_config), ""))
        except UserError:
            differ = ["(unreadable)"]
        raise UserError(f"{where} was created from another base config ({', '.join(differ) or 'config'} differ)")
    if not resume:
        raise UserError(f"{where} exists ({len(study.trials)} trials); add --resume to continue it or to join it")


# --- workers ------------------------------------------------------------------------------------------------------


class _Heartbeat:
    """Records the trial's heartbeat every `interval` seconds in a thread while the trial runs."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001,S110  (a missed beat is retried; the trial is judged after grace_seconds)
                pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class TrialPruned(RunStopped):
    run_status = "pruned"


class ReportEpochs:
    """A loop callback: reports the metric of each evaluated epoch to the trial and stops it when pruned."""

    def __init__(self, trial, metric: str, pruner: str):
        self.trial, self.metric, self.pruner = trial, metric, pruner

    def after_epoch(self, state: TrainState) -> None:
        row = state.rows[-1]
        value = row.get(self.metric)
        if value is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resumed trial reports an epoch it reported before: optuna warns
            self.trial.report(float(value), row["epoch"])
        if self.trial.should_prune():
            raise TrialPruned(f"pruned by the {self.pruner} pruner after epoch {row['epoch']} ({self.metric} {value})")


def _sampler(spec: SearchSpec, seed: int):
    import optuna

    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: never sampled, the cells are enqueued


def _pruner(spec: SearchSpec):
    import optuna

    p = spec.space.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_epochs, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def _counted(trials) -> int:
    """Trials that use up the budget: all but the failed ones a retry replaces (failed without our error)."""
    from optuna.trial import TrialState

    return sum(1 for t in trials if not (t.state == TrialState.FAIL and "error" not in t.user_attrs))


def _claim_waiting(study, storage):
    """A WAITING trial moved to RUNNING by this worker, or None; the state change succeeds for one worker only."""
    import optuna
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            # NOTE: `_trial_id` is the storage's id; optuna's Study._pop_waiting_trial_id claims the same way
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def run_worker(spec: SearchSpec, index: int = 0, log=print, poll_seconds: float | None = None) -> int:
    """Claim and run trials until the study has all it needs and nothing is running; returns trials run here."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(spec)
    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    study = optuna.load_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=_sampler(spec, spec.space.seed + 1000 * index + len(study.trials)),
        pruner=_pruner(spec),
    )
    poll = poll_seconds or min(2.0, spec.space.heartbeat_seconds)
    infos: dict[str, Any] = {}
    done = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed, and enqueued again
        trial = _claim_waiting(study, storage)
        if trial is None and spec.sampler != "grid" and _counted(study.get_trials(deepcopy=False)) < spec.trials:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize": ours beats
                trial = study.ask()
        if trial is None:
            active = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            if not active:
                return done
            time.sleep(poll)  # another worker's trial may die and come back as a retry
            continue
        with _Heartbeat(storage, trial._trial_id, spec.space.heartbeat_seconds):
            _run_trial(spec, study, storage, trial, infos, index, log)
        done += 1


def _run_trial(spec: SearchSpec, study, storage, trial, infos: dict[str, Any], index: int, log) -> None:
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from visionbench.engine import rundir

    values = _suggest(spec, trial)
    frozen = storage.get_trial(trial._trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        number = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    number = trial.number if number is None else number
    sets = _overrides(spec.space, spec.variants, values)
    tag = f"[trial {trial.number}{f' (retry of {number})' if number != trial.number else ''}]"
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{index}")
    trial.set_user_attr("overrides", sets)

    def prune(by: str, reason: str) -> None:
        trial.set_user_attr("pruned_by", by)
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.PRUNED)
        log(f"{tag} pruned before training ({by}): {reason}")

    try:
        cfg = spec.trial_config(sets)
    except UserError as e:
        return prune("config", str(e))
    try:
        params, flops = measure(cfg, data_info(cfg, infos))
    except UserError as e:
        return prune("model", str(e))
    trial.set_user_attr("params", params)
    trial.set_user_attr("flops", flops)
    limits = spec.space.constraints
    if limits.max_params is not None and params > limits.max_params:
        return prune("constraints", f"{params:,} parameters > max_params {int(limits.max_params):,}")
    if limits.max_flops is not None and flops > limits.max_flops:
        return prune("constraints", f"{flops:,} FLOPs > max_flops {int(limits.max_flops):,}")

    run_dir = spec.study_dir / f"trial-{number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    log(f"{tag} {' '.join(sets)}: {params:,} params, training in {run_dir}")
    from visionbench.report.plots import plot_run

    outcome = run_cell(
        Cell(sets, cfg, run_dir), after=plot_run, callbacks=[ReportEpochs(trial, spec.metric, spec.space.pruner.name)]
    )
    if outcome.status == "pruned":
        trial.set_user_attr("pruned_by", "pruner")
        trial.set_user_attr("reason", outcome.error)
        study.tell(trial, state=TrialState.PRUNED)
        log(f"{tag} {outcome.error}")
        return
    summary = rundir.read_summary(run_dir) if outcome.status in ("finished", "skipped") else {}
    value = (summary.get("final") or {}).get(spec.metric)
    if value is None or not math.isfinite(float(value)):
        error = outcome.error or f"the run has no {spec.metric}"
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        log(f"{tag} failed: {error}")
        return
    test_key = "test/" + spec.metric.removeprefix("val/")
    test = (summary.get("final") or {}).get(test_key)
    if test is not None:
        trial.set_user_attr(test_key, test)
    study.tell(trial, float(value))
    log(f"{tag} {spec.metric} {value:.4f}" + (f", {test_key} {test:.4f}" if test is not None else ""))


def _suggest(spec: SearchSpec, trial) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if spec.variants:
        values[SCALING_PARAM] = trial.suggest_categorical(SCALING_PARAM, list(spec.variants))
    for key, param in spec.space.params.items():
        dist = param.distribution()
        if param.kind == "choice":
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif param.kind == "int":
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def _worker_main(spec: SearchSpec, index: int, threads: int, parent_pid: int) -> None:
    interrupts.worker_signals(parent_pid)  # dies with the parent; its SIGTERM stops a trial at a checkpoint
    import torch

    torch.set_num_threads(threads)
    try:
        with interrupts.handle_signals():
            run_worker(spec, index, log=lambda line: print(f"worker {index}: {line}", flush=True))
    except UserError as e:
        print(f"error: worker {index}: {e}", flush=True)
        raise SystemExit(e.exit_code) from None
    except interrupts.Interrupted as e:  # its running trial resumes from its checkpoint when it is retried
        print(f"worker {index}: stopped by {interrupts.signal_name(e.signum)}", flush=True)
        interrupts.exit_fast(e.exit_code)


def run_search(spec: SearchSpec, workers: int, log=print) -> list[int | None]:
    """Run `workers` worker processes (in this process when 1) until the study is done; returns their exit codes."""
    if workers <= 1:
        run_worker(spec, 0, log)
        return [0]
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    threads = max(1, (os.cpu_count() or 1) // workers)
    args = [(spec, i, threads, os.getpid()) for i in range(workers)]
    procs = [ctx.Process(target=_worker_main, args=a, daemon=False) for a in args]
    try:
        for p in procs:
            p.start()
        log(f"{workers} workers: pids {' '.join(str(p.pid) for p in procs)}")
        for i, p in enumerate(procs):
            p.join()
            if p.exitcode and p.exitcode < 0:
                log(f"worker {i} (pid {p.pid}) was killed by signal {-p.exitcode}; its trial is retried by the others")
    except BaseException:  # a stop signal: no worker trains on without us
        interrupts.stop_processes([p for p in procs if p.pid is not None], STOP_GRACE_SECONDS)
        raise
    return [p.exitcode for p in procs]
