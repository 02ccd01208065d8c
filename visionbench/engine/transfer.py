"""Transfer learning: pretrained weights into a freshly built model, freezing, unfreezing, the head's parameters.

`load_pretrained(model, source, name, in_chans)` copies every tensor whose name and shape match; the head (the
parameters `reset_head` replaces) is skipped, since the model was built for the new number of outputs; a first
convolution that differs only in input channels is adapted with timm's `adapt_input_conv` (RGB summed into one
grey channel, or repeated and rescaled). Anything else that does not fit is one UserError naming the first key and
both shapes. `source` is a `.safetensors` file, a visionbench run directory (its `checkpoints/best.safetensors`),
an experiment folder (`runs/<experiment>`: its newest finished run), or `imagenet` (`timm`: its old name; the
library's own weights of the architecture, see `models/hub.py`).

`freeze(model, spec)` takes "backbone" (every parameter but the head's) or module-name patterns (fnmatch, e.g.
`features.*` or `layer[12]*`). Frozen parameters get `requires_grad=False` and stay in the optimizer, so
`trainer.unfreeze_at_epoch` only has to flip them back; BatchNorm layers that are wholly frozen also keep their
running statistics (they stay in eval mode), as Keras and timm's `freeze` do.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path

import torch
from torch import nn

from visionbench import layout
from visionbench.errors import UserError


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters `reset_head` replaces: found on a copy, whose head is reset and compared."""
    probe = copy.deepcopy(model)
    before = {name: id(p) for name, p in probe.named_parameters()}
    probe.reset_head(getattr(probe, "num_outputs", None) or 1)
    return {name for name, p in probe.named_parameters() if before.get(name) != id(p)}


def _newest_finished_run(experiment: Path) -> Path:
    """An experiment folder (runs/<experiment>/) given as model.pretrained: its newest finished run."""
    from visionbench.engine.rundir import read_summary

    runs = [
        p
        for p in sorted(experiment.iterdir(), reverse=True)
        if (p / layout.BEST).is_file() and read_summary(p).get("status") == "finished"
    ]
    if not runs:
        raise UserError(
            f"model.pretrained: {experiment} is neither a run directory nor an experiment folder with a finished run"
        )
    return runs[0]


def _read_source(source: str, model_name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of `source` and how to name it in messages."""
    if source == "timm" or source == "imagenet" or source.startswith("imagenet:"):
        from visionbench.models.hub import imagenet_weights

        return imagenet_weights(model_name, source.partition(":")[2] or None)
    path = Path(source).expanduser()
    if path.is_dir() and not (path / layout.CONFIG).is_file():
        path = _newest_finished_run(path)
    if path.is_dir():
        weights = path / layout.BEST
        if not (path / layout.CONFIG).is_file() or not weights.is_file():
            raise UserError(f"model.pretrained: {path} is not a visionbench run directory with {weights.name}")
        path = weights
    if path.suffix != ".safetensors":
        raise UserError(f"model.pretrained: {path}: expected a .safetensors file, a run directory or 'timm'")
    from visionbench.engine.checkpoint import read_weights  # its digest checked when it has one; finite

    return read_weights(path, f"model.pretrained: {path}"), str(path)


def load_pretrained(model: nn.Module, source: str, model_name: str, head: set[str] | None = None) -> list[str]:
    """Copy `source`'s matching tensors into `model` (see the module doc); returns the names left as initialised."""
    from timm.models._manipulate import adapt_input_conv

    tensors, where = _read_source(source, model_name)
    own = model.state_dict()
    head = head_parameter_names(model) if head is None else head
    new, skipped = {}, []
    for key, value in own.items():
        theirs = tensors.get(key)
        if theirs is None or key in head:
            if theirs is None and key not in head and not key.endswith("num_batches_tracked"):
                raise UserError(f"model.pretrained: {where} has no tensor {key!r} for {model_name}")
            skipped.append(key)
            continue
        if theirs.shape != value.shape:
            in_channels_only = theirs.ndim == 4 and (theirs.shape[0], *theirs.shape[2:]) == (
                value.shape[0],
                *value.shape[2:],
            )
            if not in_channels_only:
                raise UserError(
                    f"model.pretrained: {where}: {key!r} has shape {tuple(theirs.shape)}, "
                    f"{model_name} expects {tuple(value.shape)}"
                )
            theirs = adapt_input_conv(value.shape[1], theirs.float(), base_chans=theirs.shape[1])
        new[key] = theirs.to(value.dtype)
    model.load_state_dict(new, strict=False)
    return skipped


# ---------------------------------------------------------------------------------------------------------------
# Freezing


_FROZEN_CLASSES: dict[type, type] = {}


def _frozen_class(cls: type) -> type:
    """A subclass of a BatchNorm class that stays in eval mode (its running statistics frozen)."""
    if cls not in _FROZEN_CLASSES:

        def train(self: nn.Module, mode: bool = True) -> nn.Module:
            return super(frozen, self).train(False)

        frozen = type(f"Frozen{cls.__name__}", (cls,), {"train": train, "unfrozen_class": cls})
        _FROZEN_CLASSES[cls] = frozen
    return _FROZEN_CLASSES[cls]


def freeze_names(model: nn.Module, spec: str | list[str], head: set[str] | None = None) -> list[str]:
    """The parameter names that `spec` ("backbone" or module-name patterns) freezes; a pattern matching nothing is
    a UserError listing some module names."""
    names = [name for name, _ in model.named_parameters()]
    if spec == "backbone":
        head = head_parameter_names(model) if head is None else head
        return [n for n in names if n not in head]
    patterns = [spec] if isinstance(spec, str) else list(spec)
    chosen = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatch(n.rpartition(".")[0], pattern) or fnmatch.fnmatch(n, pattern)]
        if not hits:
            modules = sorted({n.split(".")[0] for n in names})
            raise UserError(
                f"model.freeze: pattern {pattern!r} matches no module; expected 'backbone' or patterns over module "
                f"names such as {', '.join(modules[:8])}"
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def set_frozen(model: nn.Module, names: list[str], frozen: bool) -> None:
    """Freeze (or unfreeze) the named parameters, and the BatchNorm layers whose parameters are all among them."""
    wanted = set(names)
    for name, p in model.named_parameters():
        if name in wanted:
            p.requires_grad_(not frozen)
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        own = [f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)]
        if not own or not all(n in wanted for n in own):
            continue
        if frozen and not hasattr(type(module), "unfrozen_class"):
            module.__class__ = _frozen_class(type(module))
            module.eval()
        elif not frozen and hasattr(type(module), "unfrozen_class"):
            module.__class__ = type(module).unfrozen_class
            module.train(model.training)


class Unfreeze:
    """Callback: make the frozen parameters trainable from epoch `at` (1-based), also after a resume."""

    def __init__(self, model: nn.Module, names: list[str], at: int):
        self.model, self.names, self.at, self.done = model, names, at, False

    def before_epoch(self, state) -> None:  # state: engine.loop.TrainState
        if not self.done and state.epoch + 1 >= self.at:
            set_frozen(self.model, self.names, frozen=False)
            self.done = True
