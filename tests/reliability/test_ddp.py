"""Multi-process training with torchrun (DDP, gloo on CPU): two processes give the one-process result for the same
global batch, on one node and on two "nodes" (two torchrun launchers meeting through c10d rendezvous on loopback);
rank 0 alone writes; a SIGKILLed rank stops the run, which `--resume` finishes with the uninterrupted run's result.
Plus the sharding arithmetic both loaders use."""

from __future__ import annotations

import csv
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

from visionbench import layout
from visionbench.config import AugmentConfig
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.data.loader import DeviceLoader, LoaderSpec, batch_slice, num_batches
from visionbench.data.stream import _PlanSampler

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "visionbench"  # what `python -m visionbench` runs with the checkout as its cwd
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


def _train(out: Path, *extra: str) -> list[str]:
    """`-m visionbench train` of the shared config into `out`, the arguments after the interpreter or launcher."""
    args = ["-m", "visionbench", "train", "configs/smoke/synthetic.yaml"]
    for s in [*SETS, f"trainer.out_dir={out}"]:
        args += ["--set", s]
    return [*args, *extra]


def _cmd(out: Path, procs: int, *extra: str) -> list[str]:
    if procs == 1:
        return [sys.executable, *_train(out, *extra)]
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
    head += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    return [*head, *_train(out, *extra)]


def _node_cmd(out: Path, endpoint: str, run_id: str) -> list[str]:
    """One node of a two-node job with one process each, as README's multi-node section runs it on each machine;
    `--local-addr` keeps both "nodes" on loopback whatever this machine's hostname resolves to."""
    head = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    head += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, "--local-addr", "127.0.0.1"]
    return [*head, *_train(out)]


def _our_frames(stderr: str) -> list[str]:
    """Traceback frames in this checkout's package. torchrun's own frames are not ours, although their path may
    contain `visionbench/` too: a `.venv` inside a checkout named visionbench."""
    frames = re.findall(r'File "([^"]+)"', stderr)
    return [f for f in frames if (ROOT / f).resolve().is_relative_to(PACKAGE.resolve())]


def _run_dir(out: Path) -> Path:
    (run,) = [p.parent for p in out.glob(f"*/*/{layout.CONFIG}")]
    return run


def _epochs(run: Path) -> list[dict]:
    """metrics.csv's rows without the clock columns."""
    with (run / layout.METRICS).open(newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("elapsed_seconds", layout.WALL_TIME)} for r in csv.DictReader(f)
        ]


def _result(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    summary = json.loads((run / layout.SUMMARY).read_text())
    final = {k: v for k, v in summary["final"].items() if k not in ("elapsed_seconds", layout.WALL_TIME)}
    return final, safetensors.torch.load_file(run / layout.BEST)


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


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[dict, dict[str, torch.Tensor]]:
    """The final metrics and best weights of the config trained by one process."""
    one = tmp_path_factory.mktemp("one")
    subprocess.run(_cmd(one, 1), check=True, env=ENV, capture_output=True, timeout=300, cwd=ROOT)
    return _result(_run_dir(one))


def _assert_same_training(one_process, final_2: dict, weights_2: dict[str, torch.Tensor]) -> None:
    final_1, weights_1 = one_process
    assert final_1["step"] == final_2["step"], "the global batch, hence the step count, is the same"
    for key, value in final_1.items():
        assert final_2[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    for key in weights_1:
        torch.testing.assert_close(weights_2[key], weights_1[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_match_one_and_a_killed_rank_resumes(tmp_path, one_process):
    two, killed = tmp_path / "two", tmp_path / "killed"
    done = subprocess.run(_cmd(two, 2), env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run directory:") == 1, "rank 0 alone prints"
    assert len(list(two.glob("*/*"))) == 1, "rank 0 alone creates the run directory"
    final_2, weights_2 = _result(_run_dir(two))
    _assert_same_training(one_process, final_2, weights_2)

    # SIGKILL rank 1 after the first checkpoint: rank 0 stops (one line, summary says failed), torchrun fails
    launcher = subprocess.Popen(_cmd(killed, 2), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not list(killed.glob(f"*/*/{layout.LAST}")) and time.monotonic() < deadline:
        assert launcher.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    (victim,) = _rank_pids(launcher, 1)
    os.kill(victim, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    err = err.decode()
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, err[-2000:]  # rank 0's one line; torchrun's own report of the dead rank follows it
    assert not _our_frames(err), "no traceback from our code"
    run = _run_dir(killed)
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "failed" and summary["final"].get("step", 0) < final_2["step"]

    resumed = subprocess.run(
        _cmd(killed, 2, "--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final_r, weights_r = _result(run)
    assert final_r == final_2
    # the epoch resumed mid-way: its training accuracy counts every rank's batches once, before and after the kill
    assert _epochs(run) == _epochs(_run_dir(two)) and all(r["train/acc1"] for r in _epochs(run))
    for key in weights_2:
        assert torch.equal(weights_r[key], weights_2[key]), key


def test_two_nodes_through_c10d_rendezvous_match_one_process(tmp_path, one_process):
    endpoint = f"127.0.0.1:{_free_port()}"
    pipes = dict(env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    nodes = [subprocess.Popen(_node_cmd(tmp_path, endpoint, "two-nodes"), **pipes) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:  # a node left waiting for its peer at rendezvous must not outlive the test
            if node.poll() is None:
                node.kill()
                node.communicate()
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-2000:]
    assert sum(out.count("run directory:") for out, _ in outputs) == 1, "rank 0 (on either node) alone prints"
    assert len(list(tmp_path.glob("*/*"))) == 1, "rank 0 alone creates the run directory"
    _assert_same_training(one_process, *_result(_run_dir(tmp_path)))


def test_traceback_frames_are_ours_only_inside_the_package():
    venv = ROOT / ".venv/lib/python3.11/site-packages/torch/distributed/run.py"  # a checkout named visionbench too
    err = "\n".join(
        [
            f'  File "{venv}", line 1, in main',
            '  File "/home/u/visionbench/.venv/lib/python3.11/site-packages/torch/x.py", line 2, in f',
            f'  File "{PACKAGE / "engine" / "train.py"}", line 3, in train',
            '  File "visionbench/cli/main.py", line 4, in main',
        ]
    )
    assert _our_frames(err) == [str(PACKAGE / "engine" / "train.py"), "visionbench/cli/main.py"]


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
    whole = DeviceLoader(split, info, cpu, LoaderSpec(32, train=True, seed=3), aug)
    ranks = [DeviceLoader(split, info, cpu, LoaderSpec(32, train=True, seed=3, shard=(r, 2)), aug) for r in range(2)]
    for (x, y), *parts in zip(whole.epoch(1), *(loader.epoch(1) for loader in ranks), strict=True):
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)

    sampler = _PlanSampler(96, 32, True, seed=3)
    shards = [_PlanSampler(96, 32, True, seed=3, shard=(r, 2)) for r in range(2)]
    for s in (sampler, *shards):
        s.order, s.epoch = torch.randperm(96, generator=torch.Generator().manual_seed(1)), 1
    for whole_batch, *parts in zip(sampler, *shards, strict=True):
        assert [item for part in parts for item in part] == whole_batch
