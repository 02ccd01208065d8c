"""Unpickling without running foreign code: only the globals a plain numpy array (or numpy scalar) needs.

A pickle can call any importable callable it names, so files from the internet or a shared disk (CIFAR's python
batches, the DeepLense `.npy` object arrays) are read with `ArrayUnpickler`, which resolves a short allow-list
and refuses everything else. `np.load(..., allow_pickle=True)` and `torch.load(weights_only=False)` are never used.
"""

from __future__ import annotations

import codecs
import pickle
from typing import Any

import numpy as np


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


_LATIN1_NAMES = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python-3 protocol-2 pickles use it for bytes, limited to latin-1 (no codec lookups)."""
    # Compared by name, not through codecs.lookup, so that a hostile encoding name never triggers a codec import.
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed, only latin1")
    if not isinstance(obj, str) or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is only allowed on a str with errors='strict'")
    return codecs.encode(obj, "latin1")


def safe_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
        from numpy._core.multiarray import scalar as _scalar
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.multiarray import scalar as _scalar
        from numpy.core.numeric import _frombuffer
    return {
        # Python 2 numpy wrote the first name; numpy 2 writes the second.
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # numpy scalars inside object arrays (a DeepLense `[image, label]` file): scalar(dtype, raw bytes)
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _latin1_encode,
        # Protocol 5 (Python 3.14's default) pickles an array as _frombuffer(buffer, dtype, shape, order), which is
        # np.frombuffer(...).reshape(...): still only a plain array, so re-pickled copies keep working.
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    }


class ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals a plain numpy array needs.

    Every way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST, OBJ and the copyreg extension codes) goes
    through `find_class`, and it is called with the names as written, before Python-2 module renaming, so
    `__builtin__.eval` and `posix.system` both land here and are refused.
    """

    _allowed = safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")
