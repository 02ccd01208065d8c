"""One assembly: what a `RunConfig` builds before anything is trained (model, mixing, transfer, loaders).

`train`, `lr-find`, `search`'s trials and inference build their parts here, so a config means the same model and
data wherever it is used.
"""

from __future__ import annotations

import torch

from visionbench.config import RunConfig
from visionbench.data import DatasetInfo, Datasets, build_loader
from visionbench.engine.transfer import freeze_names, head_parameter_names, load_pretrained, set_frozen
from visionbench.errors import UserError
from visionbench.models import create_model, inspect_model
from visionbench.tasks.base import Task


def create_run_model(cfg: RunConfig, info: DatasetInfo) -> torch.nn.Module:
    """The configured model for a dataset's input size and outputs (random init, no check run)."""
    C, H, W = info.input_size
    return create_model(cfg.model.name, info.num_outputs, in_chans=C, img_size=(H, W), **cfg.model.kwargs)


def build_model(cfg: RunConfig, data: Datasets) -> tuple[torch.nn.Module, int, int]:
    """The configured model for `data`, checked against the input size; returns (model, params, flops)."""
    model = create_run_model(cfg, data.info)
    params, flops = inspect_model(model, data.info.input_size, cfg.model.name)
    return model, params, flops


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


def prepare_transfer(cfg: RunConfig, model: torch.nn.Module, resumed: bool) -> tuple[set[str], list[str]]:
    """Load model.pretrained (not on a resume: the checkpoint has the weights) and apply model.freeze.

    Returns the head's parameter names (for optim.backbone_lr_scale) and the frozen parameter names.
    """
    mcfg, tcfg = cfg.model, cfg.trainer
    if tcfg.unfreeze_at_epoch is not None and not mcfg.freeze:
        raise UserError("trainer.unfreeze_at_epoch: needs model.freeze (there is nothing frozen to unfreeze)")
    needs_head = mcfg.freeze == "backbone" or cfg.optim.backbone_lr_scale != 1.0 or mcfg.pretrained
    head = head_parameter_names(model) if needs_head else set()  # found once: it deep-copies the model
    if mcfg.pretrained and not resumed:
        load_pretrained(model, mcfg.pretrained, mcfg.name, head)
    frozen = freeze_names(model, mcfg.freeze, head) if mcfg.freeze else []
    if frozen:
        set_frozen(model, frozen, frozen=True)
    return head, frozen


def eval_loader(data: Datasets, split: str, cfg: RunConfig, device: torch.device, shard: tuple[int, int] = (0, 1)):
    """The loader of a split for evaluation: in order, no augmentation (this rank's part under DDP)."""
    tcfg = cfg.trainer
    return build_loader(
        data, split, cfg.data, tcfg.eval_batch_size, device, channels_last=tcfg.channels_last, shard=shard
    )
