"""Optimizers by name, with parameter groups that keep weight decay off norms and biases."""

from __future__ import annotations

import torch
from torch import nn

from visionbench.config import OptimConfig
from visionbench.registry import OPTIMIZERS


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two groups: weights with decay, and 1-D parameters (norm weights, biases) optionally without.

    Each group carries `lr_scale`, which the schedule multiplies into its learning rate.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and cfg.no_decay_norm_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": cfg.norm_bias_lr_scale})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    optimizer = OPTIMIZERS.get(cfg.name)(param_groups(model, cfg), cfg)
    for group in optimizer.param_groups:  # LambdaLR scales `initial_lr`; fold the group's scale into it
        group["lr"] = cfg.lr * group["lr_scale"]
    return optimizer
