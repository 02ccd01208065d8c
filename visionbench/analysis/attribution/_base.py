"""The machinery behind every method: `Attribution` (the method's contract), the adapters to captum and
pytorch-grad-cam, and `attribute`, `to_maps` and `check_method`, which find a method by name in ATTRIBUTIONS.

- Every method runs in internal batches of `batch_size` images, so that 1,000 images fit in little memory (captum
  #245).
- Hooks are always removed, also when the model raises: captum removes its own; for Grad-CAM we release
  pytorch-grad-cam's hooks in a `finally` instead of its context manager, whose `__exit__` swallows IndexError.
- captum and pytorch-grad-cam are imported when a method runs, not when the package is (it names the methods in
  `visionbench --help`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from visionbench.analysis.tokens import reshape_transform
from visionbench.errors import UserError
from visionbench.registry import ATTRIBUTIONS


class Attribution:
    """One method on one model (in eval mode): `attribute(images, targets)` explains one batch.

    Attributes:
        stochastic: the method draws random numbers (per batch), so only a seed makes it repeat itself.
        refusal: why `applies_to` refuses a model, said after the model's name.
    """

    stochastic = False
    refusal = ""

    def __init__(self, model: nn.Module):
        self.model = model

    @staticmethod
    def applies_to(model: nn.Module) -> bool:
        return True

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) raw attributions or (B, H, W) maps in [0, 1] of output `targets[i]` for `images[i]`."""
        raise NotImplementedError


class CaptumMethod(Attribution):
    """A captum method, given a fresh leaf copy of the images; returns raw (B, C, H, W) attributions."""

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum warns about reused or functional nonlinearities (DeepLIFT)
            return self.captum_attribute(x, targets.tolist())

    def captum_attribute(self, x: torch.Tensor, target: list[int]) -> torch.Tensor:
        raise NotImplementedError


class GradCAMMethod(Attribution):
    """The pytorch-grad-cam class named `cam_class` at the model's `cam_layer`, tokens turned into a map from the
    model's declared layout (tokens.py); returns (B, H, W) maps in [0, 1]."""

    cam_class = ""

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from visionbench.models._builder import resolve_module  # the model zoo (timm) only when a CAM runs

        layer = resolve_module(self.model, self.model.cam_layer)
        cls = getattr(pytorch_grad_cam, self.cam_class)
        cam = cls(model=self.model, target_layers=[layer], reshape_transform=reshape_transform(self.model))
        try:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(i)) for i in targets])
        finally:
            cam.activations_and_grads.release()  # not `with cam:` - its __exit__ swallows IndexError
        return torch.from_numpy(maps)


def _method(name: str) -> type[Attribution]:
    if name not in ATTRIBUTIONS:
        raise UserError(f"--method {name!r}: expected one of {', '.join(ATTRIBUTIONS.list())}")
    return ATTRIBUTIONS.get(name)


def check_method(method: str, model: nn.Module, model_name: str) -> None:
    """A UserError when `method` is unknown or does not apply to the model (attention rollout on a CNN)."""
    cls = _method(method)
    if not cls.applies_to(model):
        raise UserError(f"--method {method}: {model_name} {cls.refusal}")


def attribute(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, method: str, batch_size: int = 64
) -> torch.Tensor:
    """Attributions of `targets[i]` of `model(images[i])`, computed `batch_size` images at a time (eval mode).

    Returns:
        (B, C, H, W) raw attributions (captum methods) or (B, H, W) maps in [0, 1] (CAMs, rollout), on the CPU.
    """
    cls = _method(method)
    was_training = model.training
    model.eval()
    run = cls(model).attribute
    try:
        chunks = [
            run(images[i : i + batch_size], targets[i : i + batch_size]).detach().float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def to_maps(attributions: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps in [0, 1]: |attribution| summed over channels for (B, C, H, W), each image scaled by its max."""
    maps = attributions.abs().sum(1) if attributions.ndim == 4 else attributions.clamp(min=0)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)
    return maps / peak[:, None, None]
