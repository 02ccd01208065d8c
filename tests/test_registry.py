"""The registry: duplicates raise, misses suggest, listing filters."""

from __future__ import annotations

import pytest

from visionbench.errors import UserError
from visionbench.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULES, TASKS, Registry


def test_duplicate_name_raises():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="duplicate thing name 'a'"):
        reg.register("a")(lambda: 2)


def test_miss_suggests_closest_names():
    reg = Registry("thing")
    for name in ("resnet18", "resnet34", "vgg16"):
        reg.register(name)(lambda: None)
    with pytest.raises(UserError, match="unknown thing 'resnet19'; did you mean resnet18, resnet34"):
        reg.get("resnet19")
    assert reg.list("resnet*") == ["resnet18", "resnet34"]


def test_builtin_registries_are_populated():
    import visionbench.data  # noqa: F401
    import visionbench.engine.optim  # noqa: F401
    import visionbench.engine.schedule  # noqa: F401
    import visionbench.models  # noqa: F401
    import visionbench.tasks  # noqa: F401

    assert {"small_cnn", "resnet_cfg", "fastnet"} <= set(MODELS.list())
    datasets = {"fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic", "fashion-mnist-mosaic", "deeplense"}
    assert datasets | {"voc2007", "voc2012", "image_folder", "csv_manifest"} <= set(DATASETS.list())
    assert TASKS.list() == ["classification", "multilabel", "regression"]
    assert {"adam", "adamw", "sgd", "yogi", "lamb", "lion", "adabelief"} <= set(OPTIMIZERS.list())
    assert SCHEDULES.list() == ["constant", "cosine", "one_cycle", "step"]
