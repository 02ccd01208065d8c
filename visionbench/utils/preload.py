"""`preload`: import modules on a background thread while the main thread works.

`train` starts two: torch._dynamo as it begins (torch.optim's first optimizer imports it), beside reading the data
and building the model; and torchmetrics (with the torchvision and scipy.signal it imports), needed only at the
first evaluation, once the model is built, beside the first epoch. Each import takes about a second on a small CPU.
The main thread's work there is mostly in zlib and torch's kernels, which release the GIL, so an import costs it a
share of one core instead of adding its whole time to the run. The main thread's own `import` later waits for the
thread's, under Python's per-module import locks, and finds the module ready. An import that fails here is ignored:
the main thread's import raises the same error where it matters.
"""

from __future__ import annotations

import importlib
import threading


def preload(*names: str) -> threading.Thread:
    """Import `names` in order on a daemon thread; returns the started thread."""

    def run() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112  (the main thread's import reports it)
                continue

    thread = threading.Thread(target=run, name=f"preload-{'-'.join(names)}", daemon=True)
    thread.start()
    return thread
