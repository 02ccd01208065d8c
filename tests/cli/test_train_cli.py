"""End-to-end `visionbench train / eval / models / data / report`, in-process, on small real and synthetic data."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch

from visionbench import layout
from visionbench.cli.main import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
RUN_FILES = [
    layout.CONFIG,
    layout.ENV,
    layout.METRICS,
    layout.SUMMARY,
    layout.LAST,
    layout.BEST,
    "confusion_matrix_test.json",
    "confusion_matrix_test.csv",
]


def _only_run(out: Path) -> Path:
    runs = [p.parent for p in out.glob(f"*/*/{layout.SUMMARY}")]
    assert len(runs) == 1, runs
    return runs[0]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_train_synthetic_writes_every_file_and_learns(tmp_path, capsys):
    sets = ["data.name=synthetic", "model.name=small_cnn", "trainer.epochs=4", "optim.lr=0.05", "trainer.batch_size=32"]
    code = main(
        [
            "train",
            "configs/smoke/synthetic.yaml",
            *sum((["--set", s] for s in sets), []),
            "--set",
            f"trainer.out_dir={tmp_path}",
        ]
    )
    assert code == 0
    run = _only_run(tmp_path)
    for name in RUN_FILES:
        assert (run / name).is_file(), f"missing {name}"
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 4
    assert summary["final"]["test/acc1"] > 0.6, summary["final"]  # 4 classes: chance is 0.25
    assert set(summary["seconds"]) == {"data", "train", "eval", "total", "to_first_step"} and summary["params"] > 0
    rows = list(csv.DictReader((run / layout.METRICS).open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"epoch", "step", "elapsed_seconds", layout.WALL_TIME, "lr", "train/loss", "train/acc1"} <= set(rows[0])
    assert {"val/acc1", "val/loss"} <= set(rows[0])
    assert rows[-1]["test/acc1"] != "" and rows[0]["test/acc1"] == ""
    env = json.loads((run / layout.ENV).read_text())
    assert {"torch", "git_commit", "git_dirty", "seed", "device"} <= set(env)
    out = capsys.readouterr().out
    assert "epoch 4/4" in out and "\x1b[" not in out, "plain lines, no bar, when stdout is not a terminal"

    # eval with flip TTA on the saved best weights
    assert main(["eval", str(run), "--split", "test", "--tta", "flip"]) == 0
    result = json.loads((run / "eval-test-flip-best.json").read_text())
    assert 0.0 <= result["test/acc1"] <= 1.0
    assert main(["eval", str(run), "--split", "val", "--weights", "last"]) == 0

    # the table
    assert main(["report", str(tmp_path)]) == 0
    assert "| small_cnn | synthetic |" in capsys.readouterr().out


def test_training_again_from_the_written_config_reproduces_the_run(tmp_path):
    sets = ["trainer.epochs=2", "trainer.deterministic=true", f"trainer.out_dir={tmp_path / 'a'}"]
    assert main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])]) == 0
    first = _only_run(tmp_path / "a")
    assert main(["train", str(first / layout.CONFIG), "--set", f"trainer.out_dir={tmp_path / 'b'}"]) == 0
    second = _only_run(tmp_path / "b")
    a, b = (json.loads((r / layout.SUMMARY).read_text()) for r in (first, second))
    for summary in (a, b):
        summary["final"].pop("elapsed_seconds"), summary["final"].pop(layout.WALL_TIME)
    assert a["final"] == b["final"] and a["best"] == b["best"]
    wa, wb = (safetensors.torch.load_file(r / layout.BEST) for r in (first, second))
    assert all(wa[k].equal(wb[k]) for k in wa)


@pytest.mark.skipif(not FMNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed (make setup does)")
def test_train_fashion_mnist_subset_learns(tmp_path):
    sets = ["data.subset=3000", "trainer.epochs=2", f"trainer.out_dir={tmp_path}"]
    assert main(["train", "configs/fashion_mnist/small_cnn.yaml", *sum((["--set", s] for s in sets), [])]) == 0
    summary = json.loads((_only_run(tmp_path) / layout.SUMMARY).read_text())
    assert summary["final"]["test/acc1"] > 0.6, summary["final"]  # 10 classes: chance is 0.1


def test_models_and_data_commands(capsys):
    assert main(["models", "--filter", "small*", "--input-size", "1x28x28"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn" in out and "params" in out
    assert main(["data", "info", "synthetic"]) == 0
    assert "classification" in capsys.readouterr().out


def _one_line_error(capsys, code, needle):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "runs"
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  epoch: 3\n")
    _one_line_error(capsys, main(["train", str(typo)]), "trainer.epoch")
    code = main(["train", "configs/smoke/synthetic.yaml", "--set", "optim.lr=fast", "--set", f"trainer.out_dir={out}"])
    _one_line_error(capsys, code, "optim.lr")
    code = main(["train", str(tmp_path / "nope.yaml")])
    _one_line_error(capsys, code, "nope.yaml")
    sets = ["--set", "data.kwargs.size=6", "--set", f"trainer.out_dir={out}"]  # too small for two 5x5 convs
    _one_line_error(capsys, main(["train", "configs/smoke/synthetic.yaml", *sets]), "small_cnn")
    _one_line_error(capsys, main(["models", "--input-size", "32x32"]), "--input-size")
    _one_line_error(capsys, main(["train", "--no-such-flag"]), "no-such-flag")
    _one_line_error(capsys, main(["data", "info", "fashion-mnst"]), "fashion-mnist")
    assert not out.exists(), "bad input must not create a run directory"


def test_foreign_or_corrupt_checkpoint_does_not_damage_the_run(tmp_path, capsys):
    sets = ["--set", "trainer.epochs=1", "--set", f"trainer.out_dir={tmp_path}"]
    assert main(["train", "configs/smoke/synthetic.yaml", *sets]) == 0
    run = _only_run(tmp_path)
    capsys.readouterr()
    ckpt = run / layout.LAST
    for payload in (ckpt.read_bytes()[:1000], b"not a checkpoint at all"):
        ckpt.write_bytes(payload)
        before = _tree_digest(run)
        _one_line_error(capsys, main(["train", "configs/smoke/synthetic.yaml", *sets, "--resume", str(run)]), "last")
        assert _tree_digest(run) == before, "a refused resume must leave the run directory as it was"
    other = tmp_path / "other"  # a genuine visionbench checkpoint, but of another model
    assert (
        main(
            [
                "train",
                "configs/smoke/synthetic.yaml",
                *sets[:2],
                "--set",
                f"trainer.out_dir={other}",
                "--set",
                "model.name=resnet_cfg_small",
            ]
        )
        == 0
    )
    ckpt.write_bytes((_only_run(other) / layout.LAST).read_bytes())
    capsys.readouterr()
    before = _tree_digest(run)
    _one_line_error(
        capsys, main(["train", "configs/smoke/synthetic.yaml", *sets, "--resume", str(run)]), "does not match"
    )
    assert _tree_digest(run) == before
    (run / layout.BEST).write_bytes(b"\x00" * 64)
    _one_line_error(capsys, main(["eval", str(run)]), "best.safetensors")


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    sets = ["optim.lr=1e30", "optim.momentum=0.0", "trainer.checkpoint_every_steps=1", f"trainer.out_dir={tmp_path}"]
    code = main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "non-finite training loss" in err, err
    run = _only_run(tmp_path)
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["error"]
    import torch

    state = torch.load(run / layout.LAST, weights_only=True)
    assert state["train_state"]["step"] >= 1
    assert f"step {state['train_state']['step']}) is kept" in err, "the message names the checkpoint that is kept"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("poisoned_after", "every_steps", "expected"),
    [
        (3, None, "non-finite training loss (nan) at step 4 (epoch 1, batch 4); stopped, no checkpoint was written"),
        (3, 2, "at step 4 (epoch 1, batch 4); stopped, the last good checkpoint (checkpoints/last, epoch 1, step 2)"),
        (2, 2, "non-finite weights after step 2, although the loss was finite; stopped, no checkpoint was written"),
    ],
)
def test_a_diverging_run_stops_at_its_first_non_finite_step_and_names_only_a_checkpoint_that_exists(
    tmp_path, capsys, monkeypatch, poisoned_after, every_steps, expected
):
    """The weights turn NaN after step `poisoned_after` of a 6-step epoch: the run stops at the next step (not at
    the epoch's end), and no checkpoint is written from NaN weights."""
    import torch

    from visionbench.engine.loop import Trainer

    emit = Trainer._emit

    def poisoning_emit(self, event, state):
        emit(self, event, state)
        if event == "after_batch" and state.step == poisoned_after:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_emit", poisoning_emit)
    every = "null" if every_steps is None else every_steps
    sets = ["trainer.epochs=1", f"trainer.checkpoint_every_steps={every}", f"trainer.out_dir={tmp_path}"]
    code = main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and expected in err, err
    run = _only_run(tmp_path)
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "failed" and summary["error"] == err.removeprefix("error: ")
    last = run / layout.LAST
    if "no checkpoint" in expected:
        assert not last.exists()
    else:
        state = torch.load(last, weights_only=True)
        assert state["train_state"]["step"] == every_steps
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.gpu
def test_a_diverging_run_on_cuda_names_its_first_non_finite_step_without_a_sync_per_step(tmp_path, capsys, monkeypatch):
    """On CUDA the loss is read a step or more later (loop.LossWatch); the error still names the first bad step."""
    import torch

    from visionbench.engine.loop import Trainer

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    emit = Trainer._emit

    def poisoning_emit(self, event, state):
        emit(self, event, state)
        if event == "after_batch" and state.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "_emit", poisoning_emit)
    sets = [
        "trainer.epochs=1",
        "trainer.device=cuda",
        "trainer.checkpoint_every_steps=2",
        f"trainer.out_dir={tmp_path}",
    ]
    code = main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "non-finite training loss (nan) at step 4 (epoch 1, batch 4)" in err, err
    assert "the last good checkpoint (checkpoints/last, epoch 1, step 2) is kept" in err, err


def test_training_says_where_what_and_how_fast_before_its_first_epoch_ends(tmp_path, capsys):
    sets = ["--set", "trainer.epochs=1", "--set", f"trainer.out_dir={tmp_path}"]
    assert main(["train", "configs/smoke/synthetic.yaml", *sets]) == 0
    lines = capsys.readouterr().out.splitlines()
    run = _only_run(tmp_path)
    params = json.loads((run / layout.SUMMARY).read_text())["params"]
    assert lines[0] == f"writing to {run}", lines
    assert lines[1] == (
        f"small_cnn ({params:,} parameters) on synthetic (410 train / 102 val / 128 test images), device cpu, "
        "1 epoch of 6 steps"
    ), lines
    assert lines[2].startswith("epoch 1/1  step 6  ") and " img/s  " in lines[2], lines


def test_resume_runs_on_the_runs_own_config_and_a_differing_config_says_how_to_continue(tmp_path, capsys):
    sets = ["--set", "trainer.epochs=1", "--set", f"trainer.out_dir={tmp_path}"]
    assert main(["train", "configs/smoke/synthetic.yaml", *sets]) == 0
    run = _only_run(tmp_path)
    capsys.readouterr()
    before = _tree_digest(run)
    code = main(["train", "configs/smoke/synthetic.yaml", *sets, "--set", "optim.lr=0.5", "--resume", str(run)])
    err = _one_line_error(capsys, code, "other values for optim.lr ")
    assert err.endswith(f"to continue it as it was started: visionbench train --resume {run}"), err
    assert _tree_digest(run) == before
    _one_line_error(capsys, main(["train", "--resume", "auto"]), "--resume auto: expected a CONFIG")
    _one_line_error(capsys, main(["train"]), "train: expected a CONFIG")
    # the run's own config; settings that do not change what it measures may differ
    assert main(["train", "--resume", str(run), "--set", "trainer.num_threads=1"]) == 0
    assert f"{run} finished already; evaluating it again" in capsys.readouterr().out
    assert main(["train", "configs/smoke/synthetic.yaml", *sets, "--resume", "auto"]) == 2, "finished: none to resume"


def test_truncated_data_file_is_one_line_naming_it(tmp_path, capsys):
    import numpy as np

    from visionbench.data.mnist import write_idx

    root = tmp_path / "mnist"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    out = tmp_path / "runs"
    sets = ["data.name=mnist", "data.kwargs={}", f"data.root={root}", "data.download=false", f"trainer.out_dir={out}"]
    code = main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])])
    _one_line_error(capsys, code, "train-images-idx3-ubyte")
    assert not out.exists()
