"""One assembly: what a `RunConfig` builds before anything is trained (data, task, model, mixing, transfer,
loaders, optimizer, schedule), in one order, so that the seeded random draws are the same wherever it is built.

`train` and `lr-find` take the whole `Assembly` (`assemble`); `search`'s trials and inference build their parts here,
so a config means the same model and data wherever it is used.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import torch

from visionbench.config import RunConfig
from visionbench.data import DatasetInfo, Datasets, LoaderSpec, build_datasets, build_loader
from visionbench.data.transforms import normalize, resize
from visionbench.engine.optim import build_optimizer
from visionbench.engine.runtime import grad_scaler
from visionbench.engine.schedule import TimeBudget, build_scheduler
from visionbench.engine.transfer import Transfer, freeze_names, head_parameter_names, load_pretrained, set_frozen
from visionbench.errors import UserError
from visionbench.models import create_model, inspect_model
from visionbench.tasks import build_task
from visionbench.tasks.base import Task


@dataclasses.dataclass
class Assembly:
    """Everything a RunConfig builds for training, on its device (see `assemble`)."""

    data: Datasets
    task: Task
    model: torch.nn.Module
    params: int
    flops: int | None  # None until the run ends (the recorder counts them): counting imports torch._dynamo
    mix: Any  # timm's Mixup for data.augment.mixup_alpha / cutmix_alpha, else None
    head: set[str]  # the head's parameter names (optim.backbone_lr_scale, transfer)
    frozen: list[str]  # parameter names frozen by model.freeze
    transfer: Transfer | None  # what model.pretrained loaded (None without it, and on a resume)
    train_loader: Any  # a DeviceLoader or StreamLoader
    eval_loaders: dict[str, Any]  # split name -> loader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    budget: TimeBudget | None  # trainer.time_budget_minutes
    steps_per_epoch: int
    seconds_data: float  # building the datasets and their loaders


def assemble(
    cfg: RunConfig,
    device: torch.device,
    shard: tuple[int, int] = (0, 1),
    resumed: bool = False,
    eval_splits: tuple[str, ...] = ("val", "test"),
) -> Assembly:
    """Data, task, model, optimizer and schedule of `cfg` on `device`, refusing bad input (data, model size, mixing,
    pretrained weights) before anything is written. Call it right after seeding: it draws the model's initial weights.

    Args:
        shard: (rank, world size) under DDP: this process's part of each batch and split.
        resumed: a checkpoint will overwrite the weights: no pretrained weights, no initialisation from the data.
        eval_splits: the splits that get an evaluation loader, where the dataset has them.
    """
    tcfg = cfg.trainer
    t_data = time.monotonic()
    data = build_datasets(cfg.data)
    task = build_task(cfg.task, data.info)
    task.fit_targets(data.train.targets)
    model, params, flops = build_model(cfg, data, flops=False)  # counted as the run ends (start-up)
    check_budget(cfg, params)
    mix = build_mix(cfg, task, data.info)
    head, frozen, transfer = prepare_transfer(cfg, model, load=not resumed, warn=shard[0] == 0)
    spec = LoaderSpec(tcfg.batch_size, train=True, seed=tcfg.seed, channels_last=tcfg.channels_last, shard=shard)
    train_loader = build_loader(data, "train", cfg.data, device, spec)
    splits = [s for s in eval_splits if getattr(data, s) is not None]
    eval_loaders = {s: eval_loader(data, s, cfg, device, shard) for s in splits}
    seconds_data = time.monotonic() - t_data
    if not resumed and hasattr(model, "init_from_data") and not data.streamed:  # fastnet's whitening layer
        images = resize(data.train.images[:5000], data.info.input_size[1:], cfg.data.interpolation)  # as batches are
        model.init_from_data(normalize(images, train_loader.mean.cpu(), train_loader.std.cpu()))
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    task.to(device)
    optimizer = build_optimizer(model, cfg.optim, head, keep=set(frozen) if tcfg.unfreeze_at_epoch else set())
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.accumulate_steps)
    budget = None
    if tcfg.time_budget_minutes is not None:
        budget = TimeBudget(tcfg.time_budget_minutes, tcfg.time_budget_counts_eval)
    return Assembly(
        data=data,
        task=task,
        model=model,
        params=params,
        flops=flops,
        mix=mix,
        head=head,
        frozen=frozen,
        transfer=transfer,
        train_loader=train_loader,
        eval_loaders=eval_loaders,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optim, steps_per_epoch, tcfg.epochs, budget),
        scaler=grad_scaler(device, tcfg.precision),
        budget=budget,
        steps_per_epoch=steps_per_epoch,
        seconds_data=seconds_data,
    )


def create_run_model(cfg: RunConfig, info: DatasetInfo) -> torch.nn.Module:
    """The configured model for a dataset's input size and outputs (random init, no check run)."""
    C, H, W = info.input_size
    return create_model(cfg.model.name, info.num_outputs, in_chans=C, img_size=(H, W), **cfg.model.kwargs)


def build_model(cfg: RunConfig, data: Datasets, flops: bool = True) -> tuple[torch.nn.Module, int, int | None]:
    """The configured model for `data`, checked against the input size; returns (model, params, flops: None unless
    `flops`)."""
    model = create_run_model(cfg, data.info)
    params, n_flops = inspect_model(model, data.info.input_size, cfg.model.name, flops=flops)
    return model, params, n_flops


def build_mix(cfg: RunConfig, task: Task, info: DatasetInfo):
    """timm's Mixup for augment.mixup_alpha / cutmix_alpha (tasks with one class per image; whole batches, on the
    device)."""
    aug = cfg.data.augment
    if not (aug.mixup_alpha or aug.cutmix_alpha):
        return None
    if not task.one_class_per_image:
        raise UserError(f"data.augment.mixup_alpha / cutmix_alpha: classification only, this task is {info.task}")
    if cfg.trainer.batch_size % 2:
        raise UserError(
            f"trainer.batch_size: mixup/cutmix pair images, expected an even size, got {cfg.trainer.batch_size}"
        )
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha,
        prob=aug.mix_prob,
        switch_prob=aug.mix_switch_prob,
        mode="batch",
        label_smoothing=0.0,  # the task applies task.label_smoothing to the mixed targets
        num_classes=info.num_outputs,
    )


def check_budget(cfg: RunConfig, params: int) -> None:
    """model.max_params: refuse an over-budget model before anything is trained or written."""
    budget = cfg.model.max_params
    if budget is not None and params > budget:
        raise UserError(
            f"model.max_params: {cfg.model.name} has {params:,} parameters, over the budget of {int(budget):,}"
        )


def prepare_transfer(
    cfg: RunConfig, model: torch.nn.Module, load: bool = True, warn: bool = True
) -> tuple[set[str], list[str], Transfer | None]:
    """Load model.pretrained (with `load`: not on a resume, where the checkpoint has the weights, nor for counting)
    and apply model.freeze.

    Returns the head's parameter names (for optim.backbone_lr_scale), the frozen parameter names and what was
    loaded; with `warn`, one line on stderr when more than the head stayed as initialised.
    """
    mcfg, tcfg = cfg.model, cfg.trainer
    if tcfg.unfreeze_at_epoch is not None and not mcfg.freeze:
        raise UserError("trainer.unfreeze_at_epoch: needs model.freeze (there is nothing frozen to unfreeze)")
    needs_head = mcfg.freeze == "backbone" or cfg.optim.backbone_lr_scale != 1.0 or mcfg.pretrained
    head = head_parameter_names(model) if needs_head else set()  # found once: it deep-copies the model
    transfer = None
    if mcfg.pretrained and load:
        key_map, keep_head = mcfg.pretrained_key_map, mcfg.keep_head
        transfer = load_pretrained(model, mcfg.pretrained, mcfg.name, head=head, key_map=key_map, keep_head=keep_head)
        warning = transfer.warning(mcfg.name)
        if warning and warn:  # a half-loaded backbone trains, but must not pass for a pretrained one
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    frozen = freeze_names(model, mcfg.freeze, head) if mcfg.freeze else []
    if frozen:
        set_frozen(model, frozen, frozen=True)
    return head, frozen, transfer


def eval_loader(data: Datasets, split: str, cfg: RunConfig, device: torch.device, shard: tuple[int, int] = (0, 1)):
    """The loader of a split for evaluation: in order, no augmentation (this rank's part under DDP)."""
    spec = LoaderSpec(cfg.trainer.eval_batch_size, channels_last=cfg.trainer.channels_last, shard=shard)
    return build_loader(data, split, cfg.data, device, spec)
