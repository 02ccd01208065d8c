"""Attribution maps for a batch of images: captum's gradient methods, pytorch-grad-cam's Grad-CAM and Grad-CAM++,
and our attention rollout (rollout.py), behind one function, `attribute`.

- Every method runs in internal batches of `batch_size` images, so that 1,000 images fit in little memory (captum
  #245); IG's interpolation steps also go through captum's `internal_batch_size`.
- Hooks are always removed, also when the model raises: captum removes its own; for Grad-CAM we release
  pytorch-grad-cam's hooks in a `finally` instead of its context manager, whose `__exit__` swallows IndexError.
- Targets are output indices, one per image: the predicted or true class, a label for multi-label, 0 (the output
  itself) for regression.
- `attribute` returns raw attributions (B, C, H, W) for captum's methods and maps (B, H, W) in [0, 1] for the CAMs
  and rollout; `to_maps` turns either into (B, H, W) maps in [0, 1] for display.

Methods: Simonyan et al. 2014 (saliency), Smilkov et al. 2017 (SmoothGrad), Sundararajan et al. 2017 (integrated
gradients), Shrikumar et al. 2017 (DeepLIFT), Selvaraju et al. 2017 (Grad-CAM), Chattopadhay et al. 2018
(Grad-CAM++), Abnar & Zuidema 2020 (attention rollout).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from visionbench.analysis.tokens import reshape_transform
from visionbench.errors import UserError
from visionbench.models._builder import resolve_module

CAPTUM_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "deeplift")
CAM_METHODS = ("gradcam", "gradcam++")
METHODS = (*CAPTUM_METHODS, *CAM_METHODS, "attention_rollout")
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_STDEV = 0.15  # of the input range (Smilkov et al.'s 10-20 %), images being standardised: ~0.15 × 4σ
IG_STEPS = 32


def check_method(method: str, model: nn.Module, model_name: str) -> None:
    """A UserError when `method` is unknown or does not apply to the model (attention rollout on a CNN)."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "attention_rollout":
        from visionbench.analysis.rollout import attention_modules

        if not attention_modules(model):
            raise UserError(
                f"--method attention_rollout: {model_name} has no attention layers (ViT, CvT and the hybrids "
                "have); use gradcam or a gradient method"
            )


def attribute(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, method: str, batch_size: int = 64
) -> torch.Tensor:
    """Attributions of `targets[i]` of `model(images[i])`, computed `batch_size` images at a time (eval mode).

    Returns:
        (B, C, H, W) raw attributions (captum methods) or (B, H, W) maps in [0, 1] (CAMs, rollout), on the CPU.
    """
    was_training = model.training
    model.eval()
    run = _runner(model, method)
    try:
        chunks = [
            run(images[i : i + batch_size], targets[i : i + batch_size]).detach().float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def _runner(model: nn.Module, method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if method in CAPTUM_METHODS:
        return _captum(model, method)
    if method in CAM_METHODS:
        return lambda x, t: _cam(model, method, x, t)
    if method == "attention_rollout":
        from visionbench.analysis.rollout import rollout

        return lambda x, t: rollout(model, x)
    raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def _captum(model: nn.Module, method: str):
    import captum.attr as ca

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone().requires_grad_(True)
        target = t.tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum warns about reused or functional nonlinearities (DeepLIFT)
            if method == "saliency":
                return ca.Saliency(model).attribute(x, target=target, abs=True)
            if method == "smoothgrad":
                stdev = SMOOTHGRAD_STDEV * float(x.max() - x.min())
                tunnel = ca.NoiseTunnel(ca.Saliency(model))
                return tunnel.attribute(
                    x, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, nt_samples_batch_size=len(x),
                    stdevs=stdev, target=target, abs=True,
                )  # fmt: skip
            if method == "integrated_gradients":
                return ca.IntegratedGradients(model).attribute(
                    x, baselines=torch.zeros_like(x), target=target, n_steps=IG_STEPS, internal_batch_size=len(x)
                )
            return ca.DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=target)

    return run


def _cam(model: nn.Module, method: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = resolve_module(model, model.cam_layer)
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    cam = cls(model=model, target_layers=[layer], reshape_transform=reshape_transform(model))
    try:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])
    finally:
        cam.activations_and_grads.release()  # not `with cam:` - its __exit__ swallows IndexError
    return torch.from_numpy(maps)


def to_maps(attributions: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps in [0, 1]: |attribution| summed over channels for (B, C, H, W), each image scaled by its max."""
    maps = attributions.abs().sum(1) if attributions.ndim == 4 else attributions.clamp(min=0)
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)
    return maps / peak[:, None, None]
