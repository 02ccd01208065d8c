"""Saliency (Simonyan et al., 2014, https://arxiv.org/abs/1312.6034): |∂ output / ∂ input|, by captum."""

from __future__ import annotations

import torch

from visionbench.analysis.attribution._base import CaptumMethod
from visionbench.registry import ATTRIBUTIONS


@ATTRIBUTIONS.register("saliency")
class Saliency(CaptumMethod):
    def captum_attribute(self, x: torch.Tensor, target: list[int]) -> torch.Tensor:
        import captum.attr as ca

        return ca.Saliency(self.model).attribute(x, target=target, abs=True)
