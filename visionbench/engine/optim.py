"""Optimizers by name, with parameter groups that keep weight decay off norms and biases."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from visionbench.config import OptimConfig
from visionbench.engine.yogi import Yogi
from visionbench.registry import OPTIMIZERS


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), **({"eps": cfg.eps} if cfg.eps else {}))


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), **({"eps": cfg.eps} if cfg.eps else {}))


def param_groups(
    model: nn.Module, cfg: OptimConfig, head: set[str] = frozenset(), keep: set[str] = frozenset()
) -> list[dict]:
    """Up to four groups: with or without weight decay (1-D parameters: norm weights, biases), times backbone or
    head (`head`: parameter names, whose learning rate is not scaled by `cfg.backbone_lr_scale`).

    Trainable parameters and those named in `keep` (frozen now, unfrozen later) are included; other frozen ones
    (fastnet's whitening layer, frozen BatchNorm weights) are not. Each group carries `lr_scale`, which the
    schedule multiplies into its learning rate.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad or name in keep:
            no_decay = p.ndim <= 1 and cfg.no_decay_norm_bias
            groups.setdefault((no_decay, name in head), []).append(p)
    out = []
    for (no_decay, is_head), params in sorted(groups.items()):
        scale = (cfg.norm_bias_lr_scale if no_decay else 1.0) * (1.0 if is_head else cfg.backbone_lr_scale)
        out.append({"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr_scale": scale})
    return out


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, head: set[str] = frozenset(), keep: set[str] = frozenset()
) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` over `param_groups(model, cfg, head, keep)`, inside timm's Lookahead when
    `cfg.lookahead_k` is set (it shares the inner optimizer's groups and state, so schedules and checkpoints see
    one optimizer; the model keeps the fast weights, as in timm)."""
    optimizer = OPTIMIZERS.get(cfg.name)(param_groups(model, cfg, head, keep), cfg)
    for group in optimizer.param_groups:  # LambdaLR scales `initial_lr`; fold the group's scale into it
        group["lr"] = cfg.lr * group["lr_scale"]
    if cfg.lookahead_k is not None:
        from timm.optim import Lookahead

        optimizer = Lookahead(optimizer, alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)
    return optimizer


@OPTIMIZERS.register("yogi")
def yogi(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Yogi (Zaheer et al., 2018); `eps` defaults to the paper's 1e-3."""
    return Yogi(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-3 if cfg.eps is None else cfg.eps)


# Optimizers built by timm's factory under timm's own names (`timm.optim.list_optimizers()`, timm 1.0.x). Left out:
# sgd, adam, adamw (ours above) and timm's momentum / nesterov (our sgd with or without `nesterov`); the *legacy
# copies of torch.optim classes; apex (fused*) and bitsandbytes (bnb*), which need CUDA and packages we don't ship;
# adahessian, which needs `backward(create_graph=True)`; kron / kronw, which want opt_einsum (not a dependency);
# and the "corrected weight decay" variants (adamc, lionc, lambcd, ...), whose lr**2 / max_lr rule takes max_lr
# from the constructor (cfg.lr), not from our per-group lr_scale: left out until someone checks that pairing.
# The muon family orthogonalises every parameter with >= 2 non-unit dims, the head included: our groups don't
# carry timm's name-based `use_fallback`, only 1-D parameters fall back to AdamW.
TIMM_OPTIMIZERS = (
    # Adam relatives
    "adabelief", "radabelief", "adamax", "adamp", "nadam", "nadamw", "radam", "radamw", "adopt", "adoptw",
    "laprop", "mars", "adan", "adanw", "adafactor", "adafactorbv", "novograd", "novogradw", "madgrad", "madgradw",
    # layer-wise trust ratios (large batches); c: trust-ratio clipping, w: decoupled decay, n: Nesterov
    "lamb", "lambc", "lambw", "lambcw", "lars", "larc", "nlars", "nlarc",
    # sign, SGD and RMSprop relatives, and orthogonalised momentum
    "lion", "sgdp", "sgdw", "nesterovw", "rmsprop", "rmsproptf", "rmsproptfw", "adagrad", "adadelta",
    "muon", "nmuon", "adamuon", "nadamuon",
    # cautious variants (Liang et al., 2024: drop update components whose sign disagrees with the gradient)
    "cadafactor", "cadafactorbv", "cadamp", "cadamw", "cadan", "cadanw", "cadopt", "cadoptw", "clamb", "clambw",
    "claprop", "clion", "cmars", "cnadamw", "crmsproptf", "csgdp", "csgdw",
)  # fmt: skip


def _timm_optimizer(name: str, groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm's `name` on our param groups, which keep their `weight_decay` and `lr_scale` keys.

    `cfg.momentum` reaches optimizers with momentum, `cfg.eps` (when set) those with an epsilon, `cfg.betas` those
    with two betas; adan's three betas stay timm's (0.98, 0.92, 0.99). Betas are always passed, so `lion` gets
    [0.9, 0.999] unless the config sets its paper's [0.9, 0.99]: the resolved config stays the whole truth.
    """
    from timm.optim import create_optimizer_v2, get_optimizer_info  # lazy: importing timm.optim takes ~1-3 s

    info = get_optimizer_info(name)
    kwargs: dict = {}
    if cfg.eps is not None:
        kwargs["eps"] = cfg.eps  # timm drops it for optimizers without one
    if info.has_betas and info.num_betas == 2:
        kwargs["betas"] = tuple(cfg.betas)
    # a list of groups passes through timm's factory untouched; its weight_decay is only the default of groups
    # that set none (ours all do)
    return create_optimizer_v2(
        groups, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
    )


for _name in TIMM_OPTIMIZERS:
    if _name not in OPTIMIZERS:  # a builder of our own, registered above, wins
        OPTIMIZERS.register(_name)(partial(_timm_optimizer, _name))
