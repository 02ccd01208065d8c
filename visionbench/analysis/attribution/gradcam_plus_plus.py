"""Grad-CAM++ (Chattopadhay et al., 2018, https://arxiv.org/abs/1710.11063), by pytorch-grad-cam."""

from visionbench.analysis.attribution._base import GradCAMMethod
from visionbench.registry import ATTRIBUTIONS


@ATTRIBUTIONS.register("gradcam++")
class GradCAMPlusPlus(GradCAMMethod):
    cam_class = "GradCAMPlusPlus"
