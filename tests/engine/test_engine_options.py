"""Engine options that change how steps are taken: gradient accumulation, EMA, clipping, the progress bar."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

from visionbench import layout
from visionbench.cli.main import main

BASE = ["trainer.epochs=2", "data.augment.flip=false", "trainer.deterministic=true", "optim.weight_decay=0.0"]


def _train(out: Path, *sets: str) -> Path:
    args = ["train", "configs/smoke/synthetic.yaml"]
    for s in [*BASE, *sets, f"trainer.out_dir={out}"]:
        args += ["--set", s]
    assert main(args) == 0
    (summary,) = out.glob(f"*/*/{layout.SUMMARY}")
    return summary.parent


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run / layout.BEST)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    # small_cnn has no BatchNorm, so two micro-batches of 32 give exactly the mean gradient of the batch of 64
    big = _train(tmp_path / "big", "trainer.batch_size=64", "trainer.accumulate_steps=1")
    acc = _train(tmp_path / "acc", "trainer.batch_size=32", "trainer.accumulate_steps=2")
    a, b = _weights(big), _weights(acc)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    sa, sb = (json.loads((r / layout.SUMMARY).read_text()) for r in (big, acc))
    assert sa["final"]["step"] == sb["final"]["step"], "accumulation must count optimizer steps, not micro-batches"


def test_ema_and_clipping_and_progress_bar_run(tmp_path):
    run = _train(tmp_path, "trainer.ema_decay=0.9", "trainer.grad_clip_norm=1.0", "trainer.progress=bar")
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "finished" and summary["final"]["test/acc1"] > 0.25
    state = torch.load(run / layout.LAST, weights_only=True)
    assert state["ema"] is not None and int(state["ema"]["n_averaged"]) == summary["final"]["step"]
