"""`make demo`: the Makefile's demo recipe, run line by line on a tiny synthetic dataset instead of Fashion-MNIST,
trains both models, explains one, prints the table, names a report page that exists and next commands on runs that
exist; run a second time it retrains nothing and still ends well."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = [
    "data.name=synthetic",
    "data.subset=null",
    "data.kwargs={num_classes: 4, n_train: 128, n_test: 64, channels: 1, size: 16}",
    "trainer.epochs=1",
    "trainer.batch_size=64",
]


def _demo_recipe() -> list[str]:
    """The `demo:` target's recipe lines with the Makefile's `NAME := value` variables expanded."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= *(.*)$", text, re.M))
    (recipe,) = re.findall(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    expand = re.compile(r"\$\((\w+)\)")
    lines = []
    for line in recipe.splitlines():
        while expand.search(line):
            line = expand.sub(lambda m: variables[m.group(1)], line)
        lines.append(line.strip())
    return lines


def _run_demo(capsys) -> str:
    """Runs the recipe in the cwd; returns what its visionbench commands and echo lines printed."""
    printed = []
    for line in _demo_recipe():
        if line.startswith("@echo"):
            printed.append(" ".join(shlex.split(line)[1:]))
            continue
        condition, _, command = line.rpartition(" || ")
        if condition:
            test, flag, path = shlex.split(condition)
            assert test == "test" and flag in ("-d", "-f"), line
            if Path(path).is_dir() if flag == "-d" else Path(path).is_file():
                continue
        program, *argv = shlex.split(command)
        assert program == ".venv/bin/visionbench", line
        if argv[0] == "compare":
            argv += [word for item in SYNTHETIC for word in ("--set", item)]
        assert main(argv) == 0, (line, capsys.readouterr().err)
        printed.append(capsys.readouterr().out)
    return "\n".join(printed)


@pytest.fixture
def checkout_copy(tmp_path, monkeypatch) -> Path:
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_demo_trains_two_models_explains_one_and_says_what_to_open(checkout_copy, capsys):
    out = _run_demo(capsys)
    demo = checkout_copy / "runs" / "demo"
    cells = sorted(p.parent.name for p in demo.glob(f"*/{layout.SUMMARY}"))
    assert cells == ["model.name=resnet_cfg_small", "model.name=small_cnn"]
    for model in ("small_cnn", "resnet_cfg_small"):  # the table, with a test accuracy per model
        assert re.search(rf"^\| {model} \| \d+\.\d\d % \|", out, re.M), out
    grids = list((demo / "model.name=resnet_cfg_small" / layout.EXPLAIN / "gradcam-test").glob("*.png"))
    assert grids, "the Grad-CAM grids"
    html = (demo / "report.html").read_text()
    assert all(f"explain/gradcam-test/{grid.name}" in html for grid in grids), "the report shows the grids"

    opened = re.findall(r"Open (\S+):", out)
    assert opened == ["runs/demo/report.html"] and (checkout_copy / opened[0]).is_file()
    nexts = [line.split() for line in out.splitlines() if line.startswith("  visionbench ")]
    assert len(nexts) == 3, out
    for words in nexts:
        assert all((checkout_copy / w).exists() for w in words if w.startswith(("runs/", "configs/"))), words

    weights = sorted(demo.glob(f"*/{layout.BEST}"))
    written = [p.stat().st_mtime_ns for p in weights]
    again = _run_demo(capsys)  # idempotent: nothing retrained, nothing re-explained, the same table
    assert [p.stat().st_mtime_ns for p in weights] == written
    assert re.findall(r"^\| .+ \| \d+\.\d\d % \|.*$", again, re.M) == re.findall(
        r"^\| .+ \| \d+\.\d\d % \|.*$", out, re.M
    )
