"""The workers of a search: processes that claim trials of the shared study (study.py) and run each as `train()`
in its own run directory `runs/<experiment>/<study>/trial-NNNN`, beating its heartbeat meanwhile. A trial's
candidate is checked on the meta device first (spec.py); its validation metric is reported each epoch, so the pruner
can stop it. Worker processes die with the parent; a stop signal stops them at a checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
import warnings
from typing import Any

from visionbench.engine.compare import STOP_GRACE_SECONDS, Cell, run_cell
from visionbench.engine.loop import RunStopped, TrainState
from visionbench.errors import UserError
from visionbench.search import study as study_
from visionbench.search.spec import Infeasible, SearchSpec, candidate, check_constraints, suggest, trial_overrides
from visionbench.utils import interrupts


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


def run_worker(spec: SearchSpec, index: int = 0, log=print, poll_seconds: float | None = None) -> int:
    """Claim and run trials until the study has all it needs and nothing is running; returns trials run here."""
    storage = study_.open_storage(spec)
    study = study_.load_study(spec, storage, index)
    poll = poll_seconds or min(2.0, spec.space.heartbeat_seconds)
    infos: dict[str, Any] = {}
    done = 0
    while True:
        trial = study_.next_trial(spec, study, storage)
        if trial is None:
            if not study_.unfinished(study):
                return done
            time.sleep(poll)  # another worker's trial may die and come back as a retry
            continue
        with _Heartbeat(storage, trial._trial_id, spec.space.heartbeat_seconds):
            _run_trial(spec, study, storage, trial, infos, index, log)
        done += 1


def _run_trial(spec: SearchSpec, study, storage, trial, infos: dict[str, Any], index: int, log) -> None:
    """1. draw the values, 2. check the candidate on the meta device (pruned before training when it does not fit),
    3. train it in the run directory of its number (a retry's is the dead trial's), 4. record the outcome."""
    from visionbench.engine import rundir
    from visionbench.report.plots import plot_run

    sets = trial_overrides(spec.space, spec.variants, suggest(spec, trial))
    number = study_.run_number(storage, trial)
    tag = f"[trial {trial.number}{f' (retry of {number})' if number != trial.number else ''}]"
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{index}")
    trial.set_user_attr("overrides", sets)
    try:
        cfg, params, flops = candidate(spec, sets, infos)
        trial.set_user_attr("params", params)
        trial.set_user_attr("flops", flops)
        check_constraints(spec.space.constraints, params, flops)
    except Infeasible as e:
        study_.tell_pruned(study, trial, e.by, e.reason)
        log(f"{tag} pruned before training ({e.by}): {e.reason}")
        return

    run_dir = spec.study_dir / f"trial-{number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    log(f"{tag} {' '.join(sets)}: {params:,} params, training in {run_dir}")
    report = ReportEpochs(trial, spec.metric, spec.space.pruner.name)
    outcome = run_cell(Cell(sets, cfg, run_dir), after=plot_run, callbacks=[report])
    if outcome.status == "pruned":
        study_.tell_pruned(study, trial, "pruner", outcome.error)
        log(f"{tag} {outcome.error}")
        return
    summary = rundir.read_summary(run_dir) if outcome.status in ("finished", "skipped") else {}
    log(f"{tag} {study_.tell_result(spec, study, trial, summary, outcome.error)}")


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
