"""data.mean / data.std: the statistics a run standardises with, in place of the train split's (timm's --mean/--std),
for pretrained weights that expect their own (timm's ViT weights: 0.5)."""

from __future__ import annotations

import re

import pytest
import torch

from visionbench.config import load_config
from visionbench.data import LoaderSpec, build_datasets, build_loader
from visionbench.errors import UserError

CONFIG = "configs/smoke/synthetic.yaml"


def _data(*overrides: str):
    return build_datasets(load_config(CONFIG, list(overrides)).data)


def test_given_statistics_replace_the_train_splits_and_standardise_the_batches() -> None:
    own = _data()
    given = _data("data.mean=[0.25]", "data.std=[0.5]")
    assert own.info.mean != (0.25,) and given.info.mean == (0.25,) and given.info.std == (0.5,)
    loader = build_loader(given, "test", load_config(CONFIG).data, torch.device("cpu"), LoaderSpec(batch_size=8))
    images, _ = next(iter(loader.epoch(0)))
    expected = (given.test.images[:8].float() / 255 - 0.25) / 0.5
    torch.testing.assert_close(images.float(), expected)


def test_one_value_stands_for_every_channel() -> None:
    data = _data("data.kwargs.channels=3", "data.mean=[0.5]", "data.std=[0.5]")
    assert data.info.mean == (0.5, 0.5, 0.5) and data.info.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.mean=[0.5]"], "data.mean and data.std: give both or neither"),
        (
            ["data.mean=[0.5, 0.5]", "data.std=[0.5]"],
            "data.mean: expected 1 value ('synthetic' images have 1 channel), got 2",
        ),
        (["data.kwargs.channels=3", "data.mean=[0.5, 0.5]", "data.std=[0.5]"], "data.mean: expected 1 or 3 values"),
    ],
)
def test_statistics_that_do_not_fit_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        _data(*overrides)


def test_a_standard_deviation_of_zero_is_refused_when_read() -> None:
    with pytest.raises(UserError, match="data.std.0"):
        load_config(CONFIG, ["data.mean=[0.5]", "data.std=[0.0]"])
