"""The GPU speed paths, checked on CPU: the speed configs run here with one warning, a failing torch.compile
falls back to the eager model with the same result, Lookahead resumes bit for bit, end-of-epoch checkpoints can be
limited to the last epoch, and the benchmark harness prints its table."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import safetensors.torch
import torch

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.engine.train import train

ROOT = Path(__file__).resolve().parents[2]
SYNTH = "configs/smoke/synthetic.yaml"
DET = ["trainer.epochs=2", "trainer.deterministic=true", "data.augment.flip=true", "data.augment.translate_pixels=2"]
SPEED_CONFIGS = ["speed_94", "speed_95", "best_10min"]


def _cfg(out: Path, *sets: str, config: str = SYNTH):
    return load_config(ROOT / config, [*DET, *sets, f"trainer.out_dir={out}"])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(run / layout.BEST)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("name", SPEED_CONFIGS)
def test_speed_config_runs_on_cpu_after_one_warning(name, tmp_path, caplog):
    config = f"configs/fashion_mnist/{name}.yaml"
    sets = ["data.subset=256", "data.test_subset=128", "trainer.epochs=1", f"trainer.out_dir={tmp_path}"]
    args = ["train", config] + [a for s in sets for a in ("--set", s)]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    warnings = [r.getMessage() for r in caplog.records if "tuned for CUDA" in r.getMessage()]
    assert len(warnings) == 1 and "runs on CPU" in warnings[0] and "no torch.compile" in warnings[0]
    assert "\n" not in warnings[0]
    (summary_path,) = tmp_path.glob(f"*/*/{layout.SUMMARY}")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished"
    assert summary["final"]["epoch"] == 1 and 0.0 <= summary["final"]["test/acc1"] <= 1.0
    assert summary["peak_rss_bytes"] > 50 * 2**20 and summary["peak_gpu_bytes"] is None
    resolved = load_config(summary_path.parent / layout.CONFIG)
    assert resolved.model.name == "fastnet" and resolved.trainer.compile and resolved.trainer.tta == "flip"


def test_failing_compile_falls_back_to_eager_with_identical_results(tmp_path, monkeypatch, caplog):
    eager = train(_cfg(tmp_path / "eager"))

    calls = []

    def broken_compile(model, mode=None, **kwargs):
        def forward(x):
            calls.append(mode)
            raise RuntimeError("backend failed: no C++ compiler\nsecond line of the compiler's story")

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    with caplog.at_level(logging.WARNING):
        fallback = train(_cfg(tmp_path / "compiled", "trainer.compile=true", "trainer.compile_mode=reduce-overhead"))
    assert calls == ["reduce-overhead"], "the compiled forward is tried once, then never again"
    messages = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "second line" not in messages[0]
    _assert_same(_weights(eager), _weights(fallback))


def test_expect_cuda_on_cpu_turns_compile_off(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compile must stay off on CPU"))
    with caplog.at_level(logging.WARNING):
        run = train(_cfg(tmp_path, "trainer.compile=true", "trainer.expect_cuda=true", "trainer.epochs=1"))
    assert json.loads((run / layout.SUMMARY).read_text())["status"] == "finished"
    assert sum("tuned for CUDA" in r.getMessage() for r in caplog.records) == 1


class _Crash:
    """Raise inside the loop after `at` optimizer steps (a checkpoint was written at an earlier step)."""

    def __init__(self, at: int):
        self.at = at

    def after_batch(self, state) -> None:
        if state.step == self.at:
            raise RuntimeError("injected crash")


def test_lookahead_changes_the_weights_and_resumes_bit_for_bit(tmp_path):
    sets = ["optim.lookahead_k=3", "optim.lookahead_alpha=0.5", "trainer.checkpoint_every_steps=4"]
    plain = train(_cfg(tmp_path / "plain", "trainer.checkpoint_every_steps=4"))
    straight = train(_cfg(tmp_path / "straight", *sets))
    with pytest.raises(RuntimeError, match="injected crash"):
        train(_cfg(tmp_path / "crashed", *sets), callbacks=[_Crash(at=11)])  # last checkpoint: step 8
    (crashed,) = (tmp_path / "crashed").glob("*/*")
    assert torch.load(crashed / layout.LAST, weights_only=True)["train_state"]["step"] == 8
    resumed = train(_cfg(tmp_path / "crashed", *sets), resume_dir=crashed)
    _assert_same(_weights(straight), _weights(resumed))
    assert any(
        not torch.equal(a, b) for a, b in zip(_weights(plain).values(), _weights(straight).values(), strict=True)
    )


def test_checkpoint_every_epochs_null_writes_the_last_epoch_only(tmp_path):
    seen = []

    class Probe:
        def after_epoch(self, state):
            seen.append((state.epoch, any(tmp_path.glob(f"*/*/{layout.LAST}"))))

    cfg = _cfg(tmp_path, "trainer.epochs=3", "trainer.checkpoint_every_epochs=null")
    train(cfg, callbacks=[Probe()])
    assert seen == [(1, False), (2, False), (3, True)]


@pytest.mark.slow
def test_gpu_speed_harness_prints_every_line_at_smoke_sizes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_speed", ROOT / "benchmarks/gpu_speed.py")
    gpu_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_speed)
    assert gpu_speed.main(["--smoke", "--seeds", "1", "--lines", "94,timm,cifar", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3 + 3 + 5  # header, the 94 line, the timm lines, the cifar lines
    assert "n=1" in rows[1] and "ratio ours / timm-style" in out and "projected time of 9.9 epochs" in out
