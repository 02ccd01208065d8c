"""Integrated gradients (Sundararajan et al., 2017, https://arxiv.org/abs/1703.01365) from a black baseline, by
captum; the interpolation steps go through captum's `internal_batch_size` too, so memory stays that of a batch."""

from __future__ import annotations

import torch

from visionbench.analysis.attribution._base import CaptumMethod
from visionbench.registry import ATTRIBUTIONS

STEPS = 32


@ATTRIBUTIONS.register("integrated_gradients")
class IntegratedGradients(CaptumMethod):
    def captum_attribute(self, x: torch.Tensor, target: list[int]) -> torch.Tensor:
        import captum.attr as ca

        return ca.IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=STEPS, internal_batch_size=len(x)
        )
