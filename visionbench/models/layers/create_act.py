"""Resolve an activation given by name or class, so YAML configs can choose layers (after timm's `create_act.py`)."""

from __future__ import annotations

import difflib

from torch import nn

from visionbench.errors import UserError

_ACT_LAYERS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def get_act_layer(name: str | type[nn.Module]) -> type[nn.Module]:
    """Return the activation class for `name`; a class is passed through unchanged.

    Args:
        name: One of 'gelu', 'relu', 'leaky_relu', 'silu', 'identity', or an `nn.Module` subclass.

    Returns:
        The class; instantiate it with no arguments. Callers never use `inplace=True`, so forward hooks
        (Grad-CAM) can keep activations without them being overwritten.

    Raises:
        UserError: for an unknown name, naming the closest known ones.
    """
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name
    key = str(name).lower().replace("-", "_")
    if key not in _ACT_LAYERS:
        close = difflib.get_close_matches(key, _ACT_LAYERS, n=3, cutoff=0.4) or sorted(_ACT_LAYERS)
        raise UserError(f"unknown act_layer {name!r}; expected one of: {', '.join(close)}")
    return _ACT_LAYERS[key]
