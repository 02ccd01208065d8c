"""A search's optuna study: its storage, its creation or resumption, the claim of its trials and the record of
their results.

Storage is optuna's RDBStorage: a SQLite file in the study folder by default, a PostgreSQL URL when workers run on
several machines. What makes many workers safe:

- A grid is not sampled: its cells are enqueued once as WAITING trials, and a worker claims one by moving it to
  RUNNING in the database, which only one worker can do (optuna's own claim of enqueued trials). A worker that
  finds nothing to claim waits for the running trials instead of sampling, so no cell runs twice (the duplicate
  grid cells of optuna's GridSampler under several workers are Optuna #2039 and #4627).
- A running trial beats a heartbeat into the storage; a trial silent for `grace_seconds` (its worker was killed)
  is failed by whichever worker notices and re-enqueued with the same parameters (optuna's
  RetryHeartbeatStaleTrialCallback). Its retry resumes the dead trial's run directory from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from visionbench.errors import UserError, first_line
from visionbench.search.spec import SearchSpec

ATTR = "visionbench"  # the study's user attribute holding what it was created with

log = logging.getLogger(__name__)


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


# --- a worker's view: the study with its sampler and pruner, the next trial -----------------------------------------


def load_study(spec: SearchSpec, storage, index: int):
    """The study as worker `index` runs it: its own sampler seed (so workers draw different trials), the pruner."""
    import optuna

    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    return optuna.load_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=_sampler(spec, spec.space.seed + 1000 * index + len(study.trials)),
        pruner=_pruner(spec),
    )


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


def next_trial(spec: SearchSpec, study, storage):
    """A trial for this worker, or None: first dead workers' trials are failed (and enqueued again), then a waiting
    trial is claimed, else a new one is sampled while random/tpe trials remain in the budget."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trial = _claim_waiting(study, storage)
    if trial is None and spec.sampler != "grid" and _counted(study.get_trials(deepcopy=False)) < spec.trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize": ours beats
            trial = study.ask()
    return trial


def unfinished(study) -> list:
    """Trials running or waiting (some worker's, or a dead one's retry to come)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))


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


def run_number(storage, trial) -> int:
    """The number of the trial whose run this one is: the dead trial's when it is a retry, else its own."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = storage.get_trial(trial._trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        number = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return trial.number if number is None else number


# --- results ------------------------------------------------------------------------------------------------------


def tell_pruned(study, trial, by: str, reason: str) -> None:
    """Record a trial pruned `by` the pruner, or before training by its config, model or constraints."""
    from optuna.trial import TrialState

    trial.set_user_attr("pruned_by", by)
    trial.set_user_attr("reason", reason)
    study.tell(trial, state=TrialState.PRUNED)


def tell_result(spec: SearchSpec, study, trial, summary: dict[str, Any], error: str | None) -> str:
    """Record a trained trial: its final metric from the run's `summary` (failed without one, with `error` or
    "no metric"), and the matching test metric beside it; returns the line to log."""
    from optuna.trial import TrialState

    final = summary.get("final") or {}
    value = final.get(spec.metric)
    if value is None or not math.isfinite(float(value)):
        error = error or f"the run has no {spec.metric}"
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        return f"failed: {error}"
    test_key = "test/" + spec.metric.removeprefix("val/")
    test = final.get(test_key)
    if test is not None:
        trial.set_user_attr(test_key, test)
    study.tell(trial, float(value))
    return f"{spec.metric} {value:.4f}" + (f", {test_key} {test:.4f}" if test is not None else "")
