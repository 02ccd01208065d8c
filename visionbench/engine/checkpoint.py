"""Checkpoints: full training state written atomically and read back with `weights_only=True`; weights as
safetensors. Both carry a SHA-256 of their contents, checked on load, and their weights must be finite.

`checkpoints/last` holds everything a bit-identical resume needs (model, optimizer, scheduler, scaler, EMA, epoch,
step, metric rows, every RNG state). It is a plain dict of tensors and Python scalars, so `torch.load(...,
weights_only=True)` reads it without unpickling anything foreign. Weights alone go to `.safetensors`.

Integrity: a flipped bit in a tensor's data loads silently in both formats (safetensors has no checksum, and
torch.load does not check the CRC-32 its zip records carry), and gives NaN or wrong predictions. So
`save_checkpoint` stores `state_digest` of the state under "sha256", and `save_weights` the digest of the tensors
in the safetensors metadata (`DIGEST_KEY`); on load a mismatch is a one-line error naming the file. Files without
a digest (runs written before it, a user's own safetensors for model.pretrained) are accepted when their weights
are finite; the zip records' CRC-32 is checked for every checkpoint, old ones too.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from visionbench import layout
from visionbench.errors import UserError, first_line
from visionbench.utils.io import atomic_open, write_bytes

FORMAT = "visionbench-checkpoint-v1"
DIGEST_KEY = "visionbench.sha256"  # safetensors metadata entry: `state_digest` of the tensors sorted by name
# Objects visited by `state_digest` before a checkpoint is refused: a real one has a few thousand (tensors, metric
# rows, the RNG states); a crafted pickle can reference one list from itself a billion times in a few bytes.
MAX_NODES = 1_000_000


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training state (temp file, fsync, rename) with its `state_digest` under "sha256"."""
    state = {"format": FORMAT, **state}
    state["sha256"] = state_digest(state)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by `save_checkpoint`; anything else is a one-line UserError, never foreign code.

    Raises:
        UserError: not a regular file, not readable, a pickle of other objects than tensors and plain values, not
            a visionbench checkpoint, a digest or CRC-32 that does not match, or weights that are not finite.
    """
    state = torch_load(path, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a visionbench checkpoint (expected format {FORMAT!r})")
    saved = state.pop("sha256", None)
    if saved is not None and saved != _digest_or_refuse(state, path):
        raise UserError(f"{path}: checksum mismatch: the file is corrupted (its contents differ from what was saved)")
    for key in ("model", "ema"):
        if isinstance(state.get(key), dict):
            check_finite(state[key], f"{path} ({key})")
    return state


def torch_load(
    path: Path,
    source: str | None = None,
    what: str = "checkpoint",
    kind: str = "visionbench checkpoint",
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
) -> Any:
    """What `torch.save` wrote to `path`, read with `weights_only=True` (tensors and plain values, never foreign
    code), the zip records' CRC-32 checked first.

    Args:
        source: how messages name the file (default: the path).
        what: the file's noun in messages ("checkpoint", "weights file").
        kind: what a refused file is not ("visionbench checkpoint", "file of tensors").
        mmap: map the tensors' storage instead of reading it (zip archives only): what is never used is never read.

    Raises:
        UserError: not a regular file, compressed or corrupted zip records, or a pickle of other objects
            than tensors and plain values.
    """
    source = source or str(path)
    _regular_file(path, what, source)
    zipped = _check_zip(path, source, kind)
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipped)
    except FileNotFoundError:
        raise UserError(f"{source}: {what} not found") from None
    except Exception as e:  # noqa: BLE001  (the unpickler's and the zip reader's error types vary by torch version)
        raise UserError(_load_error(source, kind, e, zipped)) from None


def _load_error(source: str, kind: str, e: Exception, zipped: bool) -> str:
    """Our own one line for torch.load's refusal, without torch's advice (to load with weights_only=False, or to
    allowlist the global: both would run the file's code)."""
    text = str(e)
    if "weights_only" in text or "WeightsUnpickler" in text:
        called = re.search(r"GLOBAL ([\w.]{1,100})", text)
        what = f"a call to {called.group(1)}" if called else "pickled Python objects"
        return (
            f"{source}: refused: not a {kind}; it holds {what}, not only tensors and plain values "
            "(visionbench never runs code from a checkpoint)"
        )
    if not zipped:  # torch.save has written zip archives since torch 1.6; the legacy reader's errors say little
        return f"{source}: not a {kind} (not the zip archive torch.save writes)"
    reason = first_line(e).split(". ")[0]  # torch's zip reader adds advice sentences after the reason
    return f"{source}: not a readable {kind} ({reason or type(e).__name__})"


def _regular_file(path: Path, what: str, source: str | None = None) -> None:
    source = source or str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{source}: {what} not found") from None
    except OSError as e:
        raise UserError(f"{source}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{source}: not a regular file; expected a {what}")


def _check_zip(path: Path, source: str, kind: str) -> bool:
    """The CRC-32 of every record of torch.save's zip format, which torch.load does not check; False when the file
    is no zip archive (torch.load then refuses it, naming a pickled call if it finds one)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
                # torch.save stores records as they are; a compressed one could inflate without bound (a zip bomb)
                raise UserError(f"{source}: not a {kind} (compressed records; torch.save writes none)")
            bad = archive.testzip()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (zipfile on a damaged archive: BadZipFile, struct.error, EOFError ...)
        raise UserError(f"{source}: not a readable {kind} ({first_line(e)})") from None
    if bad is not None:
        raise UserError(f"{source}: checksum mismatch in its record {bad!r}: the file is corrupted")
    return True


def state_digest(state: Any, limit: int = MAX_NODES) -> str:
    """SHA-256 of a state made of dicts, lists, tuples, tensors (dtype, shape and bytes) and plain values, in
    order; independent of the file format, so it is computed on what was saved and on what was read back.

    Raises:
        ValueError: more than `limit` objects.
    """
    digest = hashlib.sha256()
    stack, seen = [state], 0
    while stack:
        x = stack.pop()
        seen += 1
        if seen > limit:
            raise ValueError(f"more than {limit} objects")
        if torch.is_tensor(x):
            t = x.detach().to("cpu").contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            digest.update(f"D{len(x)}|".encode())
            for k, v in reversed(list(x.items())):  # popped in order: key, value, next key ...
                stack += [v, k]
        elif isinstance(x, list | tuple):
            digest.update(f"{'L' if isinstance(x, list) else 'U'}{len(x)}|".encode())
            stack.extend(reversed(x))
        else:
            text = repr(x).encode("utf-8", "surrogatepass")
            digest.update(f"S{type(x).__name__}{len(text)}|".encode() + text)
    return digest.hexdigest()


def _digest_or_refuse(state: Any, path: Path) -> str:
    try:
        return state_digest(state)
    except ValueError as e:
        raise UserError(f"{path}: not a visionbench checkpoint ({e})") from None


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of `tensors` holding NaN or an infinity, None when all are
    finite; one read of the device for all of them (a checkpoint during training holds them on the GPU)."""
    named = [(k, t) for k, t in tensors.items() if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex())]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def check_finite(tensors: dict[str, Any], source: str) -> None:
    """Every floating-point tensor of `tensors` finite; the first that is not is a one-line UserError."""
    name = first_non_finite(tensors)
    if name is not None:
        raise UserError(f"{source}: the weights hold NaN or infinite values (in {name!r}); refused")


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a model's state_dict as safetensors (tensors detached, contiguous, on CPU), with their
    digest in the metadata."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {**(metadata or {}), DIGEST_KEY: weights_digest(tensors)}
    write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    return state_digest(dict(sorted(tensors.items())))


def read_weights(path: Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, their digest checked when the file has one, every one finite.

    Args:
        path: the file.
        source: how messages name it (default: the path).

    Raises:
        UserError: not a regular file, not safetensors, a digest mismatch, or values that are not finite.
    """
    source = source or str(path)
    _regular_file(path, "weights file", source)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    except FileNotFoundError:
        raise UserError(f"{source}: weights file not found") from None
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError on a bad header)
        raise UserError(f"{source}: not a readable safetensors file ({first_line(e)})") from None
    saved = metadata.get(DIGEST_KEY)
    if saved is not None and saved != weights_digest(tensors):
        raise UserError(f"{source}: checksum mismatch: the file is corrupted (its tensors differ from what was saved)")
    check_finite(tensors, source)
    return tensors


def load_weights(path: Path, model: nn.Module) -> None:
    """Load safetensors weights into `model` (see `read_weights`); a file from another model is a UserError."""
    load_state(model, read_weights(path), str(path))


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` with missing/unexpected keys and shape mismatches as one UserError line."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing" if missing else "", f"{len(unexpected)} unexpected" if unexpected else ""]
        parts.append(f"shape mismatch at {shapes[0]}" if shapes else "")
        first = (missing or unexpected or shapes)[0]
        raise UserError(f"{source}: weights are for another model ({', '.join(p for p in parts if p)}; e.g. {first})")
    model.load_state_dict(tensors)


def rng_state() -> dict[str, Any]:
    """Every RNG the training touches, as tensors and plain Python values (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def load_run_weights(run_dir: Path, model: nn.Module, weights: str = "best") -> None:
    """A run directory's `best` weights (safetensors) or its `last` checkpoint's (the EMA weights when it kept an
    EMA, as evaluation used them) into `model`; a missing or foreign file is a one-line UserError."""

    if weights == "best":
        load_weights(run_dir / layout.BEST, model)
        return
    path = run_dir / layout.LAST
    ckpt = load_checkpoint(path)
    state = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserError(f"{path}: holds no model weights (expected a mapping of names to tensors under 'model')")
    if ckpt.get("ema"):  # AveragedModel keys: module.<name> plus n_averaged
        state = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
    load_state(model, state, str(path))
