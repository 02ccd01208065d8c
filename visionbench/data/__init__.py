"""Datasets: importing this package registers every family in DATASETS."""

import inspect

from visionbench.data import cifar, mnist, synthetic  # noqa: F401  (registration side effects)
from visionbench.data.base import DatasetInfo, Datasets, RawDataset, TensorSplit, carve
from visionbench.errors import UserError
from visionbench.registry import DATASETS

__all__ = ["Datasets", "DatasetInfo", "RawDataset", "TensorSplit", "build_datasets", "carve"]


def build_datasets(cfg) -> Datasets:
    """Build the dataset named by a DataConfig: official splits, subset, seeded validation split, statistics."""
    builder = DATASETS.get(cfg.name)
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in (("root", cfg.root), ("download", cfg.download)) if k in accepted}
    try:
        raw = builder(**kwargs, **cfg.kwargs)
    except TypeError as e:
        raise UserError(f"data.kwargs for {cfg.name!r}: {e}") from None
    return carve(raw, cfg.subset, cfg.val_fraction, cfg.split_seed)
