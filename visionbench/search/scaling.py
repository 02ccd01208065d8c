"""Compound scaling of the configurable ResNet (`resnet_cfg`), after EfficientNet (Tan & Le, 2019,
https://arxiv.org/abs/1905.11946): one coefficient phi scales depth by alpha^phi, width by beta^phi and the input
side by gamma^phi. `variants` enumerates the coefficients of a space, counts each variant on the meta device and
says which fit the constraints; only those become choices of the search.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from visionbench.search.space import Scaling


@dataclasses.dataclass(frozen=True)
class Variant:
    phi: float
    blocks: tuple[int, ...]
    channels: tuple[int, ...]
    image_size: int | None  # None: the dataset's own size (gamma == 1)
    params: int | None = None
    flops: int | None = None
    reason: str | None = None  # why it does not fit; None when it does

    @property
    def fits(self) -> bool:
        return self.reason is None

    def overrides(self) -> list[str]:
        sets = [
            "model.kwargs.base_channels=null",  # the widths below are explicit; a base config's C_1 must not win
            f"model.kwargs.blocks=[{', '.join(map(str, self.blocks))}]",
            f"model.kwargs.channels=[{', '.join(map(str, self.channels))}]",
        ]
        return sets + ([f"data.image_size={self.image_size}"] if self.image_size is not None else [])


def scale(scaling: Scaling, phi: float, base_side: int) -> Variant:
    """The variant at coefficient `phi`, rounded as EfficientNet rounds: blocks up (`ceil`), widths to the nearest
    multiple of `channel_multiple` but never more than 10 % below the scaled width."""
    depth, width, resolution = scaling.alpha**phi, scaling.beta**phi, scaling.gamma**phi
    blocks = tuple(max(1, math.ceil(b * depth - 1e-9)) for b in scaling.blocks)
    channels = tuple(_round_width(c * width, scaling.channel_multiple) for c in scaling.channels)
    side = None if scaling.gamma == 1.0 else max(8, round(base_side * resolution))
    return Variant(phi, blocks, channels, side)


def _round_width(width: float, multiple: int) -> int:
    rounded = max(multiple, int(width + multiple / 2) // multiple * multiple)
    return rounded + multiple if rounded < 0.9 * width else rounded


def variants(
    scaling: Scaling, base_side: int, measure: Callable[[Variant], tuple[int, int]], max_params, max_flops
) -> list[Variant]:
    """Every phi of the space with its (params, flops) from `measure` and, when it does not fit, the reason."""
    out = []
    for phi in scaling.phi:
        v = scale(scaling, phi, base_side)
        params, flops = measure(v)
        reason = None
        if max_params is not None and params > max_params:
            reason = f"{params:,} parameters > max_params {int(max_params):,}"
        elif max_flops is not None and flops > max_flops:
            reason = f"{flops:,} FLOPs > max_flops {int(max_flops):,}"
        out.append(dataclasses.replace(v, params=params, flops=flops, reason=reason))
    return out
