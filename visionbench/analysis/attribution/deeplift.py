"""DeepLIFT (Shrikumar et al., 2017, https://arxiv.org/abs/1704.02685) from a black baseline, by captum."""

from __future__ import annotations

import torch

from visionbench.analysis.attribution._base import CaptumMethod
from visionbench.registry import ATTRIBUTIONS


@ATTRIBUTIONS.register("deeplift")
class DeepLift(CaptumMethod):
    def captum_attribute(self, x: torch.Tensor, target: list[int]) -> torch.Tensor:
        import captum.attr as ca

        return ca.DeepLift(self.model).attribute(x, baselines=torch.zeros_like(x), target=target)
