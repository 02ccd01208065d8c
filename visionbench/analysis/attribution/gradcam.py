"""Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391), by pytorch-grad-cam."""

from visionbench.analysis.attribution._base import GradCAMMethod
from visionbench.registry import ATTRIBUTIONS


@ATTRIBUTIONS.register("gradcam")
class GradCAM(GradCAMMethod):
    cam_class = "GradCAM"
