"""Unpickling without running foreign code: only the globals a plain numpy array (or numpy scalar) needs.

A pickle can call any importable callable it names, so files from the internet or a shared disk (CIFAR's python
batches, the DeepLense `.npy` object arrays) are read with `ArrayUnpickler`, which resolves a short allow-list
and refuses everything else. `np.load(..., allow_pickle=True)` and `torch.load(weights_only=False)` are never used.

The allow-list alone still lets a small file claim a lot: a "billion laughs" (lists of the same memoised list,
9 levels of 9, is 10^9 labels to `np.asarray` from a few hundred bytes), `ndarray(shape)` called directly
(uninitialised memory of any claimed size), or an object array whose state claims 10^6 elements and holds one
(numpy 2.4 reads past the list and crashes the process). So arrays are built only through `_reconstruct` and a
state checked against its claimed shape, and the loaded object is walked once, counting every shared reference
as the copy a consumer would make (without making it), and refused beyond MAX_OBJECTS before anyone expands it.
"""

from __future__ import annotations

import codecs
import math
import pickle
from typing import Any

import numpy as np

MAX_DEPTH = 32  # containers nest this deep at most: a CIFAR batch is 2 levels, a DeepLense item 3
# Objects a pickle may denote, shared references counted at each use: CIFAR-100's train batch, the largest file we
# read, denotes ~100k (two lists of 50k labels); 10^7 labels expanded by np.asarray are 80 MB.
MAX_OBJECTS = 10_000_000


class PickleBomb(pickle.UnpicklingError):
    """A pickle that denotes far more than it holds (shared references, claimed shapes) or nests too deep."""


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


class _ArrayType:
    """Stands for `numpy.ndarray` in a pickle: only `_reconstruct` accepts it, and calling it fails (`ndarray(shape)`
    would hand back uninitialised memory of whatever size the file claims)."""


_NDARRAY = _ArrayType()


class _PendingArray:
    """What `_reconstruct` gives: an empty stand-in whose `__setstate__` (the pickle's BUILD) checks numpy's state
    `(version, shape, dtype, fortran, data)` against its shape before numpy builds the array from it."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise pickle.UnpicklingError("an array is built twice")
        if isinstance(state, tuple) and len(state) == 4:  # the version-less form of numpy < 1.0
            state = (0, *state)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("an array state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, _, data = state
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
            raise pickle.UnpicklingError(f"an array shape is not a tuple of sizes: {type(shape).__name__}")
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("an array dtype is not a numpy dtype")
        count = math.prod(shape)
        if dtype.hasobject:
            if dtype != np.dtype(object) or not isinstance(data, list) or len(data) != count:
                got = f"{len(data)} items" if isinstance(data, list) else type(data).__name__
                raise PickleBomb(f"an object array of shape {shape} comes with {got}")
            data = [_built(x) for x in data]
        elif not isinstance(data, (bytes, str)) or len(data) != count * dtype.itemsize:
            raise PickleBomb(f"an array of shape {shape} and dtype {dtype} comes with {_length(data)}")
        array = _np_reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__((state[0], shape, dtype, state[3], data))
        self.array = array


def _length(data: Any) -> str:
    return f"{len(data)} bytes" if isinstance(data, (bytes, str)) else f"a {type(data).__name__}"


def _built(x: Any) -> Any:
    if isinstance(x, _PendingArray):
        if x.array is None:
            raise pickle.UnpicklingError("an array is used before its data is set")
        return x.array
    return x


def _np_reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    return safe_globals()[("numpy._core.multiarray", "_reconstruct")](cls, shape, typecode)


def _guarded_reconstruct(cls: Any, shape: Any, typecode: Any) -> _PendingArray:
    """`numpy._core.multiarray._reconstruct(ndarray, (0,), b"b")` as numpy's own pickles call it."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of anything but numpy.ndarray")
    if shape != (0,):
        raise PickleBomb(f"_reconstruct with shape {shape!r}: numpy pickles an empty (0,) array and fills it")
    return _PendingArray()


_ATOMS = (int, float, complex, bool, str, bytes, bytearray, type(None), np.generic, np.dtype)


def _finish(obj: Any, max_objects: int) -> Any:
    """Replace every stand-in by its array and count the objects `obj` denotes, each shared reference as a copy;
    refuses more than `max_objects`, nesting deeper than MAX_DEPTH, and cycles (nothing a data file needs)."""
    memo: dict[int, tuple[Any, int]] = {}  # id -> (finished object, objects it denotes)
    active: set[int] = set()
    originals: list[Any] = []  # replaced tuples stay alive, so that their ids are not reused during the walk

    def visit(x: Any, depth: int) -> tuple[Any, int]:
        x = _built(x)
        if isinstance(x, _ATOMS) or (isinstance(x, np.ndarray) and not x.dtype.hasobject):
            return x, 1
        key = id(x)
        if key in memo:
            return memo[key]
        if depth > MAX_DEPTH:
            raise PickleBomb(f"containers nest deeper than {MAX_DEPTH} levels")
        if key in active:
            raise PickleBomb("a container holds itself")
        active.add(key)
        total = 1
        if isinstance(x, dict):
            for k in list(x):
                if isinstance(k, _PendingArray):
                    raise pickle.UnpicklingError("an array as a dict key")
                x[k], n = visit(x[k], depth + 1)
                total += n + 1
                _check(total)
        elif isinstance(x, (list, tuple)):
            done = []
            for item in x:
                item, n = visit(item, depth + 1)
                done.append(item)
                total += n
                _check(total)
            if isinstance(x, tuple) and any(a is not b for a, b in zip(x, done, strict=True)):
                originals.append(x)
                x = tuple(done)
            else:
                x[:] = done
        elif isinstance(x, np.ndarray):  # an object array
            for index in np.ndindex(x.shape):
                item, n = visit(x[index], depth + 1)
                if item is not x[index]:
                    x[index] = item
                total += n
                _check(total)
        elif isinstance(x, (set, frozenset)):
            if any(isinstance(item, _PendingArray) for item in x):
                raise pickle.UnpicklingError("an array in a set")
            total += len(x)
            _check(total)
        else:  # every allowed global returns one of the above
            raise pickle.UnpicklingError(f"unexpected object {type(x).__name__}")
        active.discard(key)
        memo[key] = (x, total)
        return x, total

    def _check(total: int) -> None:
        if total > max_objects:
            raise PickleBomb(f"it denotes more than {max_objects:,} objects through shared references (a pickle bomb?)")

    return visit(obj, 0)[0]


class ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals a plain numpy array needs, and refuses pickle bombs (see the module docstring).

    Every way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST, OBJ and the copyreg extension codes) goes
    through `find_class`, and it is called with the names as written, before Python-2 module renaming, so
    `__builtin__.eval` and `posix.system` both land here and are refused.

    Args:
        file: the pickle.
        max_objects: objects the result may denote (shared references counted at each use).
    """

    _allowed = {
        **safe_globals(),
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy.core.multiarray", "_reconstruct"): _guarded_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _guarded_reconstruct,
    }

    def __init__(self, file: Any, *, max_objects: int = MAX_OBJECTS, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._max_objects = max_objects

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")

    def load(self) -> Any:
        return _finish(super().load(), self._max_objects)
