"""`preload`: import modules on a background thread while the main thread works.

`train` needs torchmetrics (and the torchvision, torch._dynamo and scipy.signal it imports) only at its first
evaluation; importing them takes more than a second on a small CPU. Started once the model is built, the import runs
beside the first epoch: the training step spends its time in torch's kernels, which release the GIL, so the import
costs the epoch a share of one core instead of adding its whole time to the run. The main thread's own `import`
later waits for the thread's, under Python's per-module import locks, and finds the module ready. An import that
fails here is ignored: the main thread's import raises the same error where it matters.
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
