"""Multi-process training with torchrun (DDP, gloo on CPU): two processes give the one-process result for the same
global batch; rank 0 alone writes; a SIGKILLed rank stops the run, which `--resume` finishes with the uninterrupted
run's result. Plus the sharding arithmetic both loaders use."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.config import AugmentConfig
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.data.loader import DeviceLoader, batch_slice, num_batches
from visionbench.data.stream import _PlanSampler

ROOT = Path(__file__).resolve().parents[2]
SETS = [
    "trainer.epochs=2",
    "trainer.deterministic=true",
    "data.kwargs.n_train=2048",
    "trainer.batch_size=32",
    "trainer.checkpoint_every_steps=10",
    "trainer.num_threads=1",
    "data.augment.flip=true",
    "data.augment.translate_pixels=2",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(out: Path, procs: int, *extra: str) -> list[str]:
    if procs == 1:
        head = [sys.executable, "-m", "visionbench"]
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
        head += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "visionbench"]
    args = [*head, "train", "configs/smoke/synthetic.yaml"]
    for s in [*SETS, f"trainer.out_dir={out}"]:
        args += ["--set", s]
    return [*args, *extra]


def _run_dir(out: Path) -> Path:
    (run,) = [p.parent for p in out.glob("*/*/config.yaml")]
    return run


def _result(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    summary = json.loads((run / "summary.json").read_text())
    final = {k: v for k, v in summary["final"].items() if k != "elapsed_seconds"}
    return final, safetensors.torch.load_file(run / "checkpoints/best.safetensors")


def _rank_pids(launcher: subprocess.Popen, rank: int) -> list[int]:
    """Worker processes of a torchrun launcher with RANK=`rank` in their environment."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == launcher.pid and f"RANK={rank}".encode() in env:
            pids.append(int(entry.name))
    return pids


def test_two_processes_match_one_and_a_killed_rank_resumes(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    subprocess.run(_cmd(one, 1), check=True, env=ENV, capture_output=True, timeout=300, cwd=ROOT)
    done = subprocess.run(_cmd(two, 2), env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run directory:") == 1, "rank 0 alone prints"
    assert len(list(two.glob("*/*"))) == 1, "rank 0 alone creates the run directory"

    final_1, weights_1 = _result(_run_dir(one))
    final_2, weights_2 = _result(_run_dir(two))
    assert final_1["step"] == final_2["step"], "the global batch, hence the step count, is the same"
    for key, value in final_1.items():
        assert final_2[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    for key in weights_1:
        torch.testing.assert_close(weights_2[key], weights_1[key], rtol=1e-4, atol=1e-5, msg=key)

    # SIGKILL rank 1 after the first checkpoint: rank 0 stops (one line, summary says failed), torchrun fails
    launcher = subprocess.Popen(_cmd(killed, 2), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*/*/checkpoints/last")) and time.monotonic() < deadline:
        assert launcher.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    (victim,) = _rank_pids(launcher, 1)
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    err = err.decode()
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, err[-2000:]  # rank 0's one line; torchrun's own report of the dead rank follows it
    assert not re.search(r'File ".*visionbench/', err), "no traceback from our code"
    run = _run_dir(killed)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["final"].get("step", 0) < final_2["step"]

    resumed = subprocess.run(
        _cmd(killed, 2, "--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final_r, weights_r = _result(run)
    assert final_r == final_2
    for key in weights_2:
        assert torch.equal(weights_r[key], weights_2[key]), key


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 500), batch=st.integers(1, 64), world=st.integers(1, 4))
def test_shards_cover_each_batch_and_split_exactly_once(n, batch, world):
    batch = batch * world  # the global batch divides among the ranks
    for i in range(num_batches(n, batch, True)):
        parts = [batch_slice(i, batch, n, True, (r, world)) for r in range(world)]
        covered = [j for sl in parts for j in range(sl.start, sl.stop)]
        assert covered == list(range(i * batch, (i + 1) * batch))
    evaluated = [
        j
        for r in range(world)
        for i in range(num_batches(n, batch, False, (r, world)))
        for j in range(
            batch_slice(i, batch, n, False, (r, world)).start, batch_slice(i, batch, n, False, (r, world)).stop
        )
    ]
    assert evaluated == list(range(n))


def test_rank_batches_of_both_loaders_concatenate_to_the_one_process_batch():
    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 256, (96, 1, 12, 12), dtype=torch.uint8, generator=g), torch.arange(96))
    info = DatasetInfo("t", "classification", 96, (), (1, 12, 12), (0.5,), (0.25,))
    aug = AugmentConfig(flip=True, translate_pixels=2, cutout_pixels=4)
    cpu = torch.device("cpu")
    whole = DeviceLoader(split, info, 32, cpu, train=True, augment=aug, seed=3)
    ranks = [DeviceLoader(split, info, 32, cpu, train=True, augment=aug, seed=3, shard=(r, 2)) for r in range(2)]
    for (x, y), *parts in zip(whole.epoch(1), *(loader.epoch(1) for loader in ranks), strict=True):
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)

    sampler = _PlanSampler(96, 32, True, seed=3)
    shards = [_PlanSampler(96, 32, True, seed=3, shard=(r, 2)) for r in range(2)]
    for s in (sampler, *shards):
        s.order, s.epoch = torch.randperm(96, generator=torch.Generator().manual_seed(1)), 1
    for whole_batch, *parts in zip(sampler, *shards, strict=True):
        assert [item for part in parts for item in part] == whole_batch
