"""Start-up: what `train` imports before its first step, `--help` without the heavy libraries, the process-start
clock, bf16 autocast on CPU, and runs that leave their figures to `report`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from visionbench import layout
from visionbench.cli.main import main
from visionbench.engine.runtime import autocast, process_start

ROOT = Path(__file__).resolve().parents[2]
SYNTH = "configs/smoke/synthetic.yaml"
HEAVY = ("timm", "torchmetrics", "torchvision", "matplotlib", "scipy", "optuna", "captum")

# A `train` in a fresh interpreter that writes which heavy libraries were imported when its
# first training step ended (the recorder's `after_batch`) and at its exit.
_PROBE = textwrap.dedent(
    """
    import json, sys
    from visionbench.engine import recorder
    heavy, seen = {heavy!r}, {{}}
    after_batch = recorder.Recorder.after_batch

    def probe(self, state):
        seen.setdefault("first_step", sorted(m for m in heavy if m in sys.modules))
        after_batch(self, state)

    recorder.Recorder.after_batch = probe
    from visionbench.cli.main import main
    code = main(sys.argv[2:])
    seen["exit"] = sorted(m for m in heavy if m in sys.modules)
    open(sys.argv[1], "w").write(json.dumps(seen))
    sys.exit(code)
    """
)


def test_train_reaches_its_first_step_without_the_heavy_libraries(tmp_path):
    """timm, torchmetrics, torchvision, matplotlib and scipy cost seconds to import: a small_cnn run needs none of them
    before its first step (torchmetrics comes at the first evaluation)."""
    out = tmp_path / "seen.json"
    sets = ["trainer.epochs=1", "data.kwargs.n_train=256", "data.kwargs.n_test=64", f"trainer.out_dir={tmp_path}"]
    cmd = [sys.executable, "-c", _PROBE.format(heavy=HEAVY), str(out), "train", SYNTH]
    cmd += [arg for s in sets for arg in ("--set", s)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    assert seen["first_step"] == [], seen
    assert "torchmetrics" in seen["exit"], seen  # the evaluation did import it: the probe saw the run through


def test_help_imports_none_of_the_heavy_libraries():
    probe = (
        "import sys\nfrom visionbench.cli.main import main\ncode = main(['--help'])\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [x for x in proc.stdout.splitlines() if x.startswith("HEAVY")] == ["HEAVY []"], proc.stdout[-2000:]
    assert "train" in proc.stdout


def test_process_start_is_before_now_and_before_this_test_began():
    started = process_start()
    assert started is not None  # Linux: /proc is there
    now = time.monotonic()
    assert started <= now
    # pytest ran this process's imports and collection first: the process is older than this test
    assert now - started > 0.05


def test_cpu_bf16_autocast_runs_convolutions_in_bfloat16_and_fp32_stays_fp32():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(cpu, "bf16", "fp32"):  # `precision` is CUDA's: it leaves the CPU in fp32
        assert conv(x).dtype == torch.float32


def test_a_bf16_cpu_run_without_plots_finishes_with_its_figures_left_to_report(tmp_path):
    sets = ["trainer.epochs=1", "trainer.cpu_precision=bf16", "trainer.plots=false", f"trainer.out_dir={tmp_path}"]
    assert main(["train", str(ROOT / SYNTH), *[a for s in sets for a in ("--set", s)]]) == 0
    (run,) = [p.parent for p in tmp_path.glob(f"*/*/{layout.SUMMARY}")]
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "finished"
    assert summary["flops"] > 0  # counted as the run ended
    assert 0 < summary["seconds"]["to_first_step"] <= summary["seconds"]["total"] + 60  # + the interpreter's age
    assert not (run / layout.PLOTS).exists()
    assert main(["report", str(run)]) == 0
    assert any((run / layout.PLOTS).glob("*.png"))


@pytest.mark.parametrize("key", ["trainer.plots"])
def test_plots_is_a_run_setting_that_a_resume_may_change(key):
    from visionbench.engine.rundir import RUN_SETTINGS

    assert key in RUN_SETTINGS


@pytest.mark.parametrize("act", ["leaky_relu", "relu", "gelu"])
def test_small_cnn_pooling_before_a_non_decreasing_activation_changes_no_value_or_gradient(act):
    from visionbench.models import create_model

    torch.manual_seed(0)
    model = create_model("small_cnn", 10, in_chans=1, img_size=(28, 28), act_layer=act)
    x = torch.randn(4, 1, 28, 28)

    def run(pool_first: bool):
        model.pool_first = pool_first
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    expected = model.pool_first
    assert expected == (act != "gelu")  # GELU dips below zero: pooling first would change it
    if expected:
        out_a, grads_a = run(True)
        out_b, grads_b = run(False)
        assert torch.equal(out_a, out_b)
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
