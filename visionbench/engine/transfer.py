"""Transfer learning: pretrained weights into a freshly built model, freezing, unfreezing, the head's parameters.

`load_pretrained(model, source, name, ...)` matches tensors by name: every tensor of the file whose name and shape
match the model's is copied; the head (the parameters `reset_head` replaces) is skipped, since the model was built
for the new number of outputs, unless `keep_head` (then its width must match). Tensors that do not fit are not
forced: a first convolution that differs only in input channels is adapted with timm's `adapt_input_conv` (RGB
summed into one grey channel, or repeated and rescaled); absolute position embeddings of another token grid (a ViT
trained at another image size) are resampled with timm's `resample_abs_pos_embed`, keeping the class/prefix tokens;
a patch embedding of another patch size with `resample_patch_embed`. Anything else stays as initialised and is
listed in the returned `Transfer`: shape mismatches, model tensors the file lacks. The run prints and records that
report (summary.json "pretrained"), warns when more than the head stayed random, and a file that matches nothing is
a UserError, never a silent random init.

`source` is a `.safetensors` file, a `.pth` / `.pt` / `.bin` file of `torch.save` (read with `weights_only=True`:
tensors and plain values only, a pickled call is refused unrun), a visionbench run directory (its
`checkpoints/best.safetensors`), an experiment folder (`runs/<experiment>`: its newest finished run), or
`imagenet` (`timm`: its old name; the library's own weights of the architecture, see `models/hub.py`). A torch file
may hold the state_dict itself or under "state_dict", "model_state_dict" or "model" (training scripts' checkpoints;
other entries such as the epoch or the optimizer are ignored). `key_map` (model.pretrained_key_map) renames the
file's keys with `re.sub`, pair by pair, then the prefixes that DataParallel / DDP (`module.`) and torch.compile
(`_orig_mod.`) add are stripped where the model's own names have none.

`freeze(model, spec)` takes "backbone" (every parameter but the head's) or module-name patterns (fnmatch, e.g.
`features.*` or `layer[12]*`). Frozen parameters get `requires_grad=False` and stay in the optimizer, so
`trainer.unfreeze_at_epoch` only has to flip them back; BatchNorm layers that are wholly frozen also keep their
running statistics (they stay in eval mode), as Keras and timm's `freeze` do.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionbench import layout
from visionbench.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Where training scripts keep the weights in a checkpoint: Lightning and timm's train.py ("state_dict"), PyTorch's
# tutorials ("model_state_dict"), torchvision's references, DeiT and our own checkpoints/last ("model")
CONTAINERS = ("state_dict", "model_state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP; torch.compile
POS_EMBED_NAMES = ("pos_embed", "pos_embedding")  # timm's ViTs and hybrids; torchvision's ViT (encoder.pos_embedding)
LISTED = 50  # names per list in summary.json (the counts beside them stay exact)

Shapes = tuple[str, tuple[int, ...], tuple[int, ...]]  # (name, the file's shape, the model's shape)


@dataclasses.dataclass
class Transfer:
    """What `load_pretrained` did, by the model's tensor names (state_dict keys)."""

    source: str  # the file, run or library weights, as messages name it
    keep_head: bool = False
    loaded: list[str] = dataclasses.field(default_factory=list)  # copied, resampled and adapted ones included
    head: list[str] = dataclasses.field(default_factory=list)  # the head, left as initialised (keep_head off)
    mismatched: list[Shapes] = dataclasses.field(default_factory=list)  # skipped for their shape
    random: list[str] = dataclasses.field(default_factory=list)  # absent from the file, left as initialised
    resampled: list[Shapes] = dataclasses.field(default_factory=list)  # position / patch embeddings
    adapted: list[Shapes] = dataclasses.field(default_factory=list)  # first convolution: other input channels
    unused: list[str] = dataclasses.field(default_factory=list)  # file tensors that no model tensor takes
    hint: str = ""  # a key map that would match more, when one prefix explains the misses

    def record(self) -> dict[str, Any]:
        """summary.json's "pretrained" entry: counts, and the names (the first LISTED of each list)."""

        def shapes(rows: list[Shapes]) -> list[dict[str, Any]]:
            return [{"key": k, "file": list(a), "model": list(b)} for k, a, b in rows[:LISTED]]

        return {
            "source": self.source,
            "keep_head": self.keep_head,
            "loaded": len(self.loaded),
            "head": self.head[:LISTED],
            "shape_mismatch_count": len(self.mismatched),
            "shape_mismatch": shapes(self.mismatched),
            "random_count": len(self.random),
            "random": self.random[:LISTED],
            "resampled": shapes(self.resampled),
            "adapted": shapes(self.adapted),
            "unused_file_keys": len(self.unused),
        }

    def line(self) -> str:
        """The run's start line about its weights."""
        parts = [f"pretrained: {len(self.loaded):,} tensors loaded from {self.source}"]
        if self.keep_head:
            parts.append("head kept")
        elif self.head:
            parts.append(f"head left fresh ({', '.join(self.head[:4])})")
        parts += [f"resampled {k} {_shape(a)} -> {_shape(b)}" for k, a, b in self.resampled[:4]]
        parts += [f"input channels adapted in {k}" for k, _, _ in self.adapted[:2]]
        parts.append(self._misses())
        if self.unused:
            parts.append(f"{len(self.unused):,} tensors of the file unused")
        return "; ".join(p for p in parts if p)

    def warning(self, model_name: str) -> str | None:
        """One line when more than the head stayed as initialised, None otherwise."""
        if not (self.random or self.mismatched):
            return None
        total = len(self.loaded) + len(self.head) + len(self.random) + len(self.mismatched)
        return (
            f"model.pretrained: only {len(self.loaded):,} of {total:,} tensors of {model_name} were loaded from "
            f"{self.source}; {self._misses()}{self.hint}"
        )

    def _misses(self) -> str:
        parts = []
        if self.mismatched:
            k, a, b = self.mismatched[0]
            parts.append(
                f"{len(self.mismatched):,} skipped for their shape (e.g. {k} {_shape(a)} in the file, {_shape(b)} in "
                "the model)"
            )
        if self.random:
            parts.append(f"{len(self.random):,} not in the file, left random (e.g. {self.random[0]})")
        return ", ".join(parts)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


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
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(
            f"model.pretrained: {path}: expected a .safetensors, .pth, .pt or .bin file, a run directory, an "
            "experiment folder or 'imagenet'"
        )
    from visionbench.engine.checkpoint import check_finite, read_weights, torch_load
    from visionbench.utils.bounded import WEIGHTS_FILE_BYTES, UnreadableFile, check_regular

    name = f"model.pretrained: {path}"
    try:
        check_regular(path, "weights file", WEIGHTS_FILE_BYTES)
    except UnreadableFile as e:
        raise UserError(f"model.pretrained: {e}") from None
    if path.suffix == ".safetensors":
        return read_weights(path, name), str(path)  # its digest checked when it has one; finite
    # mapped, not read: a training checkpoint's optimizer state is never touched
    loaded = torch_load(
        path, name, "weights file", "state_dict as torch.save(model.state_dict(), path) writes", mmap=True
    )
    tensors = _state_dict_of(loaded, name)
    check_finite(tensors, name)
    return tensors, str(path)


def _state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensors of what torch.save wrote: a state_dict, or one under CONTAINERS, at most two levels down (e.g.
    {"model": {"state_dict": ...}}); entries that are no tensors (the epoch, optimizer state) are ignored."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
        if tensors:
            return tensors
        inner = next((obj[k] for k in CONTAINERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    found = f"a {type(obj).__name__}"
    if isinstance(obj, dict):
        found = f"keys {', '.join(map(str, list(obj)[:8]))}" if obj else "an empty dict"
    raise UserError(
        f"{source}: holds no tensors; expected a state_dict, or one under {', '.join(map(repr, CONTAINERS))} "
        f"(found {found})"
    )


def _renamed(
    tensors: dict[str, torch.Tensor], rename: Callable[[str], str], source: str, why: str
) -> dict[str, torch.Tensor]:
    """`tensors` under new names; two names that become one is a UserError (which of them would be a guess)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        new = rename(key)
        if new in out:
            raise UserError(f"{why}: {source}: both {origin[new]!r} and {key!r} become {new!r}")
        out[new], origin[new] = value, key
    return out


def _map_keys(tensors: dict[str, torch.Tensor], key_map: Sequence[Sequence[str]], source: str, own: set[str]):
    """model.pretrained_key_map's renaming, then the wrappers' prefixes stripped (see the module doc)."""
    if key_map:

        def rename(key: str) -> str:
            for pattern, replacement in key_map:
                try:
                    key = re.sub(pattern, replacement, key)
                except re.error as e:
                    raise UserError(f"model.pretrained_key_map: {replacement!r} for {pattern!r}: {e}") from None
            return key

        tensors = _renamed(tensors, rename, source, "model.pretrained_key_map")
    stripped = True
    while stripped:  # DDP around a compiled model: module._orig_mod.<name>
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if any(k.startswith(prefix) for k in tensors) and not any(k.startswith(prefix) for k in own):
                strip = lambda k, prefix=prefix: k.removeprefix(prefix)  # noqa: E731
                tensors = _renamed(tensors, strip, source, f"model.pretrained (the {prefix} prefix stripped)")
                stripped = True
    return tensors


def load_pretrained(model: nn.Module, source: str, model_name: str, **options: Any) -> Transfer:
    """Copy `source`'s matching tensors into `model` (see the module doc); `options` are `transfer_tensors`'s
    (head, key_map, keep_head).

    Raises:
        UserError: an unreadable or refused source, no tensor matched, or keep_head with a head that does not fit.
    """
    tensors, where = _read_source(source, model_name)
    return transfer_tensors(model, tensors, where, model_name, **options)


def transfer_tensors(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    where: str,
    model_name: str,
    head: set[str] | None = None,
    key_map: Sequence[Sequence[str]] = (),
    keep_head: bool = False,
) -> Transfer:
    """`load_pretrained` on tensors already read.

    Args:
        where: how messages name the tensors' source.
        head: the head's parameter names (`head_parameter_names`, found here when not given).
        key_map: (regex, replacement) pairs renaming the source's keys, in order (model.pretrained_key_map).
        keep_head: load the head too (model.keep_head); its width must be the model's.
    """
    own = model.state_dict()
    tensors = _map_keys(tensors, key_map, where, set(own))
    head = head_parameter_names(model) if head is None else head
    report, new = Transfer(where, keep_head=keep_head), {}
    for key, value in own.items():
        theirs = tensors.get(key)
        if key in head and not keep_head:
            report.head.append(key)
        elif theirs is None:
            if key in head:
                raise UserError(f"model.keep_head: {where} has no head tensor {key!r} for {model_name}")
            if not key.endswith("num_batches_tracked"):  # a BatchNorm's step counter, no weight
                report.random.append(key)
        else:
            fitted = _fit(model, key, theirs, value, report)
            if fitted is None and key in head:
                raise UserError(_head_mismatch(where, key, theirs.shape, value.shape))
            if fitted is None:
                report.mismatched.append((key, tuple(theirs.shape), tuple(value.shape)))
            else:
                new[key] = fitted.to(value.dtype)
                report.loaded.append(key)
    report.unused = [k for k in tensors if k not in own]
    report.hint = _key_map_hint(report.unused, {*report.random, *(k for k, _, _ in report.mismatched)})
    if not new:
        raise UserError(
            f"model.pretrained: no tensor of {where} matches {model_name} by name and shape (the file's "
            f"{len(tensors):,} tensors are named like {next(iter(tensors), '')!r}, the model's like "
            f"{next(iter(own), '')!r}){report.hint}"
        )
    model.load_state_dict(new, strict=False)
    return report


def _head_mismatch(where: str, key: str, theirs: torch.Size, ours: torch.Size) -> str:
    if theirs[0] != ours[0]:
        return (
            f"model.keep_head: the head of {where} has {theirs[0]:,} outputs ({key}), the task has {ours[0]:,}; "
            "use data whose classes are the weights' classes, or drop keep_head"
        )
    return f"model.keep_head: {where}: head tensor {key!r} has shape {_shape(theirs)}, the model's is {_shape(ours)}"


def _key_map_hint(unused: list[str], missed: set[str]) -> str:
    """A key map that would match more tensors, when a first name component (e.g. Lightning's `model.`) is what
    the file's names have and the model's lack, or the other way round."""
    extra = collections.Counter(k.split(".", 1)[0] for k in unused if "." in k and k.split(".", 1)[1] in missed)
    unused_set = set(unused)
    lacking = collections.Counter(k.split(".", 1)[0] for k in missed if "." in k and k.split(".", 1)[1] in unused_set)
    maps = [(n, f"[['^{re.escape(p)}\\.', '']]") for p, n in extra.most_common(1)]
    maps += [(n, f"[['^', '{p}.']]") for p, n in lacking.most_common(1)]
    if not maps:
        return ""
    n, key_map = max(maps, key=lambda m: m[0])
    return f"; model.pretrained_key_map: {key_map} would match {n:,} more"


def _fit(model: nn.Module, key: str, theirs: torch.Tensor, value: torch.Tensor, report: Transfer):
    """`theirs` in the shape of the model's `value` where a rule of the module doc allows it, else None."""
    if theirs.shape == value.shape:
        return theirs
    change = (key, tuple(theirs.shape), tuple(value.shape))
    if theirs.ndim == 3 and key.rpartition(".")[2] in POS_EMBED_NAMES:
        fitted = _resample_pos_embed(model, theirs, value)
        if fitted is not None:
            report.resampled.append(change)
        return fitted
    if theirs.ndim != 4 or value.ndim != 4 or theirs.shape[0] != value.shape[0]:
        return None
    fitted, resampled = theirs, theirs.shape[2:] != value.shape[2:]
    if resampled:  # a patch embedding's kernel is its patch: resampled to the model's
        if not _patchifies(model, key):
            return None
        from timm.layers import resample_patch_embed

        fitted = resample_patch_embed(theirs.float(), list(value.shape[2:]))
    if theirs.shape[1] != value.shape[1]:
        if key != _first_conv_weight(model):
            return None
        from timm.models._manipulate import adapt_input_conv

        try:
            fitted = adapt_input_conv(value.shape[1], fitted.float(), base_chans=theirs.shape[1])
        except NotImplementedError:  # from neither 1 nor the file's channels to another count
            return None
        report.adapted.append(change)
    if resampled:
        report.resampled.append(change)
    return fitted


def _patchifies(model: nn.Module, key: str) -> bool:
    """Whether `key` is the weight of a convolution whose stride is its kernel: a patch embedding."""
    module_name, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    return leaf == "weight" and isinstance(module, nn.Conv2d) and tuple(module.stride) == tuple(module.kernel_size)


def _first_conv_weight(model: nn.Module) -> str | None:
    """The name of the first convolution's weight, the one the images go into."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight" if name else "weight"
    return None


def _resample_pos_embed(model: nn.Module, theirs: torch.Tensor, value: torch.Tensor) -> torch.Tensor | None:
    """Absolute position embeddings (1, prefix + grid tokens, D) of the file's square grid, resampled (bicubic) to
    the model's grid; the prefix tokens (class, distillation, registers) are kept as they are."""
    if theirs.shape[0] != 1 or theirs.shape[2] != value.shape[2]:
        return None
    grid = _token_grid(model, value.shape[1])
    if grid is None:
        return None
    prefix = value.shape[1] - grid[0] * grid[1]  # 0 where the prefix tokens have no position (timm no_embed_class)
    side = math.isqrt(max(theirs.shape[1] - prefix, 0))
    if prefix < 0 or side == 0 or side * side != theirs.shape[1] - prefix:
        return None
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(theirs.float(), new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix)


def _token_grid(model: nn.Module, tokens: int) -> tuple[int, int] | None:
    """The model's patch grid as it declares it (`models.token_grid`), else the square root of its tokens less
    `num_prefix_tokens`."""
    from visionbench.models import token_grid

    try:
        return token_grid(model)[1]
    except TypeError:
        pass
    if isinstance(getattr(model, "num_prefix_tokens", None), int):
        side = math.isqrt(max(tokens - model.num_prefix_tokens, 0))
        if side * side == tokens - model.num_prefix_tokens:
            return side, side
    return None


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
