"""A dataset in a few lines of text: what `visionbench data info` prints."""

from __future__ import annotations

from visionbench.config import DataConfig
from visionbench.data import build_datasets


def describe(name: str, root: str | None = None, download: bool = False) -> dict[str, object]:
    """The registered dataset's task, input size, outputs, split sizes, normalisation statistics and classes, from
    its official splits (no validation split carved).

    Raises:
        UserError: an unknown name, or files that are missing (without `download`) or unreadable.
    """
    data = build_datasets(DataConfig(name=name, root=root, download=download, val_fraction=0.0))
    info = data.info
    return {
        "dataset": info.name,
        "task": info.task,
        "input_size": "x".join(map(str, info.input_size)),
        "outputs": info.num_outputs,
        "train": len(data.train),
        "test": len(data.test),
        "mean": ", ".join(f"{v:.4f}" for v in info.mean),
        "std": ", ".join(f"{v:.4f}" for v in info.std),
        "classes": ", ".join(info.class_names),
    }
