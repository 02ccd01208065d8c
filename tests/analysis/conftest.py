"""A tiny run for the analysis tests: the smoke config (small_cnn on 16 x 16 gratings) for one step at a small
learning rate, so that it is wrong on most test images (the failure gallery has rows) and trains in seconds."""

from __future__ import annotations

import pytest

TINY = ["trainer.epochs=1", "optim.lr=0.001", "data.kwargs.n_train=128"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from visionbench.config import load_config
    from visionbench.engine.train import train

    out_dir = tmp_path_factory.mktemp("tiny-runs")
    return train(load_config("configs/smoke/synthetic.yaml", [*TINY, f"trainer.out_dir={out_dir}"], "tiny"))
