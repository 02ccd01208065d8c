"""Checkpoints: full training state written atomically and read back with `weights_only=True`; weights as
safetensors.

`checkpoints/last` holds everything a bit-identical resume needs (model, optimizer, scheduler, scaler, EMA, epoch,
step, metric rows, every RNG state). It is a plain dict of tensors and Python scalars, so `torch.load(...,
weights_only=True)` reads it without unpickling anything foreign. Weights alone go to `.safetensors`.
"""

from __future__ import annotations

import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from visionbench.errors import UserError, first_line
from visionbench.utils.io import atomic_open, write_bytes

FORMAT = "visionbench-checkpoint-v1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a training state (temp file, fsync, rename)."""
    with atomic_open(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a state written by `save_checkpoint`; anything else is a one-line UserError, never foreign code."""
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, TypeError) as e:
        raise UserError(f"{path}: not a readable visionbench checkpoint ({first_line(e)})") from None
    except Exception as e:  # the unpickler's refusal types vary by torch version (UnpicklingError, ...)
        raise UserError(f"{path}: refused to load checkpoint ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a visionbench checkpoint (expected format {FORMAT!r})")
    return state


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a model's state_dict as safetensors (tensors detached, contiguous, on CPU)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def load_weights(path: Path, model: nn.Module) -> None:
    """Load safetensors weights into `model`; a file from another model is a one-line UserError."""
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise UserError(f"{path}: weights file not found") from None
    except Exception as e:  # safetensors raises its own SafetensorError on a bad header
        raise UserError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    load_state(model, tensors, str(path))


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
    from visionbench.engine import rundir

    if weights == "best":
        load_weights(run_dir / rundir.BEST, model)
        return
    path = run_dir / rundir.LAST
    ckpt = load_checkpoint(path)
    state = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserError(f"{path}: holds no model weights (expected a mapping of names to tensors under 'model')")
    if ckpt.get("ema"):  # AveragedModel keys: module.<name> plus n_averaged
        state = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
    load_state(model, state, str(path))
