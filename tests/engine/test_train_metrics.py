"""Per-epoch training metrics (`train/acc1`, `train/map`, `train/mae`): measured on the training batches as they
pass, equal to the metric computed independently over the outputs the model gave in training, and kept exactly
across a mid-epoch checkpoint and resume (with the held chunk, and with chunks fed before the checkpoint)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torchmetrics.classification import MultilabelAveragePrecision

from visionbench import layout
from visionbench.config import TrainerConfig
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.data.loader import DeviceLoader, LoaderSpec
from visionbench.engine import meter as meter_module
from visionbench.engine.checkpoint import load_checkpoint, save_checkpoint
from visionbench.engine.loop import Trainer, TrainState, fit
from visionbench.tasks.base import create_task

N, C, SIZE, BATCH = 96, 5, 6, 16  # 6 batches per epoch
TIME_COLUMNS = ("elapsed_seconds", layout.WALL_TIME)


def _split(task: str) -> TensorSplit:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (N, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    if task == "classification":
        targets = torch.randint(0, C, (N,), generator=g)
    elif task == "multilabel":
        targets = torch.randint(0, 2, (N, C), generator=g).float()
        targets[torch.rand(N, C, generator=g) < 0.1] = -1.0  # VOC's `difficult`: ignored by the loss and AP
    else:
        targets = torch.randn(N, 2, generator=g, dtype=torch.float32) * 3 + 10
    return TensorSplit(images=images, targets=targets)


def _trainer(task_name: str, **trainer_kwargs) -> Trainer:
    """A linear model on random images; the same weights and data on every call (a resume builds it again)."""
    torch.manual_seed(0)
    split = _split(task_name)
    outputs = 2 if task_name == "regression" else C
    info = DatasetInfo("t", task_name, outputs, tuple(f"c{i}" for i in range(outputs)), (1, SIZE, SIZE), (0.5,), (0.3,))
    task = create_task(task_name, info)
    task.fit_targets(split.targets)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, outputs))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cfg = TrainerConfig(epochs=2, batch_size=BATCH, checkpoint_every_minutes=None, **trainer_kwargs)
    cpu = torch.device("cpu")
    loader = DeviceLoader(split, info, cpu, LoaderSpec(BATCH, train=True, seed=3), augment=None)
    return Trainer(
        model=model,
        task=task,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        train_loader=loader,
        eval_loaders={},
        cfg=cfg,
        device=cpu,
    )


def _train_outputs(trainer: Trainer) -> tuple[list[dict], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Train for the config's epochs, catching the model's training-mode outputs with a forward hook; the targets
    come from the loader's own order (a pure function of seed and epoch). The metrics rows, and one (logits,
    targets) per epoch."""
    caught: list[torch.Tensor] = []
    trainer.model.register_forward_hook(lambda m, i, out: caught.append(out.detach().clone()) if m.training else None)
    state = fit(trainer, TrainState(loss_sum=torch.zeros(())))
    per_epoch = len(trainer.train_loader)
    assert len(caught) == per_epoch * trainer.cfg.epochs
    results = []
    for epoch in range(trainer.cfg.epochs):
        targets = torch.cat([t for _, t in trainer.train_loader.epoch(epoch)])
        results.append((torch.cat(caught[epoch * per_epoch : (epoch + 1) * per_epoch]), targets))
    return state.rows, results


def test_train_acc1_is_the_accuracy_over_the_epochs_batches():
    trainer = _trainer("classification")
    rows, outputs = _train_outputs(trainer)
    for row, (logits, targets) in zip(rows, outputs, strict=True):
        correct = int((logits.argmax(1) == targets).sum())
        assert row["train/acc1"] == pytest.approx(correct / len(targets), abs=1e-6)
    first, last = (row["train/acc1"] for row in rows)
    assert first != last, "the weights change between epochs: so does the measure"


def test_train_map_is_torchmetrics_ap_over_the_stored_outputs():
    trainer = _trainer("multilabel")
    rows, outputs = _train_outputs(trainer)
    for row, (logits, targets) in zip(rows, outputs, strict=True):
        per_class = MultilabelAveragePrecision(C, average=None, ignore_index=-1)(logits, targets.long())
        has_positive = (targets == 1).any(0)
        expected = float(per_class[has_positive].mean())
        assert 0.0 <= row["train/map"] <= 1.0
        assert row["train/map"] == pytest.approx(expected, abs=1e-6)


def test_train_mae_is_in_the_targets_units():
    trainer = _trainer("regression")
    rows, outputs = _train_outputs(trainer)
    for row, (logits, targets) in zip(rows, outputs, strict=True):
        mae = float((trainer.task.activate(logits) - targets).abs().mean())
        assert row["train/mae"] == pytest.approx(mae, rel=1e-5)
        assert row["train/mae"] > 0.5, "in the targets' units (spread 3), not standardised ones"


def test_no_train_metric_under_mixup():
    """A mixed image carries two labels: accuracy against either is not what val measures."""
    trainer = _trainer("classification")
    assert trainer.meter is not None
    mixed = dataclasses.replace(trainer, mix=lambda x, y: (x, nn.functional.one_hot(y, C).float()))
    assert mixed.meter is None
    rows = fit(mixed, TrainState(loss_sum=torch.zeros(()))).rows
    assert all("train/loss" in r and "train/acc1" not in r for r in rows)


class _Snapshot:
    """Checkpoint callback that keeps the state at one mid-epoch step, written and read as the run's checkpoint."""

    def __init__(self, trainer: Trainer, step: int, path):
        self.trainer, self.step, self.path = trainer, step, path

    def checkpoint(self, state: TrainState) -> None:
        if state.step == self.step:
            save_checkpoint(self.path, self.trainer.state_dict(state))


def _rows(state: TrainState) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in state.rows]


@pytest.mark.parametrize(
    ("task_name", "chunk_bytes"),
    [("classification", None), ("multilabel", None), ("multilabel", 1), ("regression", None), ("regression", 2000)],
)
def test_resume_mid_epoch_gives_the_uninterrupted_train_metrics(task_name, chunk_bytes, tmp_path, monkeypatch):
    """A chunk larger than the epoch: the checkpoint holds the unfed outputs; a small one: the metric states
    (AP's kept outputs, MAE's float sums fed at the same boundaries either way)."""
    if chunk_bytes is not None:
        monkeypatch.setattr(meter_module, "CHUNK_BYTES", chunk_bytes)
    ckpt = tmp_path / "last"
    trainer = _trainer(task_name, checkpoint_every_steps=1)
    trainer.callbacks.append(_Snapshot(trainer, step=9, path=ckpt))  # epoch 2, batch 3 of 6
    whole = fit(trainer, TrainState(loss_sum=torch.zeros(())))
    main = f"train/{trainer.task.main_metric}"
    assert all(main in r for r in whole.rows)

    resumed = _trainer(task_name, checkpoint_every_steps=1)
    state = resumed.load_state_dict(load_checkpoint(ckpt))
    assert (state.epoch, state.batch) == (1, 3)
    assert _rows(fit(resumed, state)) == _rows(whole)


def test_a_checkpoint_without_train_metrics_resumes_over_the_batches_after_it(tmp_path):
    """Checkpoints written before the meter existed still resume; that epoch's value covers what follows."""
    ckpt = tmp_path / "last"
    trainer = _trainer("classification", checkpoint_every_steps=1)
    trainer.callbacks.append(_Snapshot(trainer, step=3, path=ckpt))
    fit(trainer, TrainState(loss_sum=torch.zeros(())))
    old = load_checkpoint(ckpt)
    del old["train_metrics"]
    resumed = _trainer("classification", checkpoint_every_steps=1)
    rows = fit(resumed, resumed.load_state_dict(old)).rows
    assert 0.0 <= rows[0]["train/acc1"] <= 1.0 and math.isfinite(rows[1]["train/acc1"])


def test_outputs_beyond_the_keep_limit_leave_the_cell_empty(monkeypatch):
    """An AP that would hold more than KEEP_BYTES of outputs is left out, not estimated; sums are never limited."""
    monkeypatch.setattr(meter_module, "KEEP_BYTES", 1000)
    monkeypatch.setattr(meter_module, "CHUNK_BYTES", 1)
    rows = fit(_trainer("multilabel"), TrainState(loss_sum=torch.zeros(()))).rows
    assert all("train/loss" in r and "train/map" not in r for r in rows)
    rows = fit(_trainer("classification"), TrainState(loss_sum=torch.zeros(()))).rows
    assert all("train/acc1" in r for r in rows)
