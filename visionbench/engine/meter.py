"""`TrainMeter`: the task's training metrics (metrics.csv's `train/<metric>`, e.g. `train/acc1`, `train/map`,
`train/mae`) measured on the training batches as they pass: no extra pass over the data, no device sync per batch.

Each micro-batch's logits and targets are kept on the device (the logits copied, B x C values: a CUDA-graph replay,
compile_mode reduce-overhead, reuses its output's memory) and fed to the task's metrics (`Task.train_metrics`: the
torchmetrics objects that val and test use, so both columns share one definition) a chunk of `CHUNK_BYTES` at a
time. torchmetrics' updates check their arguments on the host (a sync on a GPU), so the sync comes once per chunk,
not once per batch; a small dataset's epoch is one chunk. Sums (accuracy's counts, MAE's total) stay a few numbers; a
metric that keeps every output (AP) holds the epoch's scores and targets on the device, at most `KEEP_BYTES`: beyond
that the epoch's value is left out of metrics.csv (an empty cell) rather than estimated.

The values are those of the model as it trains: train mode (dropout on, BatchNorm on batch statistics), weights
changing from batch to batch, augmented images. They are not an evaluation of the epoch's final weights on the
training split.

A checkpoint holds the partial state (`state_dict`: the metrics' states and the chunk not yet fed), so a resumed
epoch ends with the uninterrupted one's value, bit for bit. Under DDP each rank measures its shard and the epoch's
value is that of all ranks (torchmetrics syncs in compute); at a mid-epoch checkpoint the ranks' states are first
moved into rank 0's (`gather`), the rank whose checkpoint is written and alone restores it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from visionbench.engine.runtime import distributed
from visionbench.tasks.base import Task

CHUNK_BYTES = 64 * 2**20  # logits and targets held before they are fed to the metrics
KEEP_BYTES = 2**30  # what a metric that keeps every output (AP) may hold for one epoch


class TrainMeter:
    """The task's `train_metrics` over the batches of one epoch; `add` each micro-batch, `compute` at its end.

    Args:
        task: the run's task (on `device`).
        device: where the outputs and the metrics' states live.
    """

    def __init__(self, task: Task, device: torch.device):
        self.device, self.task = device, task
        self._metrics = None  # built when first fed (`metrics`)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending_bytes = 0
        self.updated = False  # the metrics have been fed since the epoch began
        self.over = False  # the epoch's outputs outgrew KEEP_BYTES: no value this epoch

    @property
    def metrics(self):
        """The task's train metrics, built when first needed: at the epoch's end on a small dataset, so that the
        first steps do not wait for torchmetrics' import (about a second on a small CPU)."""
        if self._metrics is None:
            self._metrics = self.task.train_metrics().to(self.device)
            for metric in _stateful(self._metrics):  # their states go into state_dict (a wrapper does not pass it on)
                metric.persistent(True)
        return self._metrics

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if self.over:
            return
        logits = logits.detach().clone()
        self.pending.append((logits, targets))
        self.pending_bytes += _nbytes(logits) + _nbytes(targets)
        if self.pending_bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        """Feed the held outputs to the metrics."""
        if not self.pending:
            return
        logits, targets = (torch.cat(parts) for parts in zip(*self.pending, strict=True))
        self.pending, self.pending_bytes = [], 0
        self.metrics.update(logits, targets)
        self.updated = True
        if self._kept_bytes() > KEEP_BYTES:
            self.over = True
            self.metrics.reset()

    def compute(self) -> dict[str, float]:
        """The epoch's values (rounded as evaluate rounds them; an undefined one left out), then a fresh epoch."""
        self.flush()
        skip = self.over or not self.updated
        if distributed():  # every rank computes (a collective) or none does
            flag = torch.tensor([float(skip)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            skip = bool(flag.item())
        values = {} if skip else {k: float(v) for k, v in self.metrics.compute().items()}
        self.reset()
        return {k: round(v, 6) for k, v in values.items() if math.isfinite(v)}

    def reset(self) -> None:
        self.metrics.reset()
        self.pending, self.pending_bytes = [], 0
        self.updated = self.over = False

    def gather(self) -> None:
        """Under DDP, at a mid-epoch checkpoint (every rank calls it): the ranks' states merged into rank 0's, the
        others emptied; the epoch's compute, which syncs them again, sees every batch once. Outside DDP nothing:
        the checkpoint keeps the held chunk as it is, so the chunks after a resume are the uninterrupted run's."""
        if not distributed():
            return
        self.flush()
        leaves = _stateful(self.metrics)
        merged = []
        for metric in leaves:
            lists = {k for k, v in metric.metric_state.items() if isinstance(v, list)}
            metric.sync()
            # a list state (AP's outputs) comes back concatenated; merge_state wants it as a list again
            merged.append({k: [v] if k in lists else v for k, v in metric.metric_state.items()})
            metric.unsync()
        self.metrics.reset()
        if dist.get_rank() == 0:
            for metric, state in zip(leaves, merged, strict=True):
                metric.merge_state(state)

    def state_dict(self) -> dict[str, Any]:
        pending = [torch.cat(parts) for parts in zip(*self.pending, strict=True)] if self.pending else [None, None]
        return {
            "metrics": self.metrics.state_dict(),
            "logits": pending[0],
            "targets": pending[1],
            "updated": self.updated,
            "over": self.over,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`'s partial epoch; under DDP on rank 0 alone (it holds every rank's part: `gather`)."""
        self.reset()
        if distributed() and dist.get_rank() != 0:
            return
        self.metrics.load_state_dict(state["metrics"])
        self.metrics.to(self.device)  # the checkpoint is read onto the CPU
        if state["logits"] is not None:
            self.pending = [(state["logits"].to(self.device), state["targets"].to(self.device))]
            self.pending_bytes = sum(_nbytes(t) for t in self.pending[0])
        self.updated, self.over = bool(state["updated"]), bool(state["over"])

    def _kept_bytes(self) -> int:
        return sum(
            _nbytes(t)
            for metric in _stateful(self.metrics)
            for value in metric.metric_state.values()
            if isinstance(value, list)
            for t in value
        )


def _stateful(module: torch.nn.Module) -> list:
    """The torchmetrics objects below `module` that hold states of their own (a wrapper's child holds its own)."""
    from torchmetrics import Metric

    return [m for m in module.modules() if isinstance(m, Metric) and m.metric_state]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
