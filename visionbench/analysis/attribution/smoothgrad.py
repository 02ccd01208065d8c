"""SmoothGrad (Smilkov et al., 2017, https://arxiv.org/abs/1706.03825): saliency averaged over noisy copies of the
image, by captum's NoiseTunnel."""

from __future__ import annotations

import torch

from visionbench.analysis.attribution._base import CaptumMethod
from visionbench.registry import ATTRIBUTIONS

SAMPLES = 16
STDEV = 0.15  # of the input range (Smilkov et al.'s 10-20 %), images being standardised: ~0.15 × 4σ


@ATTRIBUTIONS.register("smoothgrad")
class SmoothGrad(CaptumMethod):
    stochastic = True  # the noise comes from torch's global generator

    def captum_attribute(self, x: torch.Tensor, target: list[int]) -> torch.Tensor:
        import captum.attr as ca

        stdev = STDEV * float(x.max() - x.min())
        tunnel = ca.NoiseTunnel(ca.Saliency(self.model))
        return tunnel.attribute(
            x, nt_type="smoothgrad", nt_samples=SAMPLES, nt_samples_batch_size=len(x), stdevs=stdev, target=target,
            abs=True,
        )  # fmt: skip
