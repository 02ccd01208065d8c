"""A dataset larger than the memory the process may allocate trains by streaming from disk.

Two limits, set after the imports: RLIMIT_DATA = 2 GiB (the kernel refuses any private writable mapping, heap and
anonymous memory, beyond it) and RLIMIT_AS = the address space the imports mapped + 2 GiB. RLIMIT_AS alone cannot
be 2 GiB here: the CUDA build of torch maps about 1.9 GiB of shared-library code at import (libcublasLt,
libtorch_cuda, ...) and 3.7 GiB of address space in all before any data, on machines without a GPU too. Imports
use about 1 GiB of the data limit, so the ~1.1 GiB of decoded training images cannot be held; the child proves that
by failing to allocate them, then trains on them by streaming.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from visionbench import layout

SIDE, N_TRAIN, N_TEST = 512, 1400, 64
LIMIT = 2 * 2**30

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import torch  # noqa: F401  (imports first: their memory counts against the limit too)
    import visionbench.engine.train, visionbench.data.stream  # noqa: F401
    # what the run imports later (torchmetrics at its first evaluation, torchvision's decoders, timm): first, so
    # that their memory counts against the limit too, as when `train` imported them at start
    import torchmetrics, torchvision, timm  # noqa: F401
    from visionbench.cli.main import main

    root, out, limit, decoded = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    status = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("Vm")}
    vm_data, vm_size = status["VmData"], status["VmSize"]
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    try:
        np.ones(decoded, dtype=np.uint8)  # what holding the decoded training images in memory would take
        in_memory = "fits"
    except MemoryError:
        in_memory = "refused"
    sets = ["data.name=image_folder", "data.kwargs={}", f"data.root={root}", "data.image_size=32", "data.num_workers=1",
            "data.val_fraction=0", "model.name=small_cnn", "trainer.epochs=1", "trainer.batch_size=64",
            "trainer.eval_batch_size=64", f"trainer.out_dir={out}", "trainer.progress=lines"]
    code = main(["train", "configs/smoke/synthetic.yaml"] + [a for s in sets for a in ("--set", s)])
    print(json.dumps({"code": code, "vm_data_after_imports": vm_data, "vm_size_after_imports": vm_size,
                      "in_memory": in_memory}))
    """
)


def _write_images(folder: Path, n: int, offset: int) -> None:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    for i in range(n):
        label = "ab"[i % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        k = offset + i
        phase = (x * (1 + k % 7) + y * (1 + k % 5)) // 8 + 40 * (i % 2)
        image = np.stack([(phase + 85 * c) % 256 for c in range(3)], axis=-1).astype(np.uint8)
        Image.fromarray(image).save(folder / label / f"{k}.jpg", quality=85)


def test_streaming_trains_a_dataset_that_cannot_be_held_under_2_gib_limits(tmp_path):
    root = tmp_path / "images"
    _write_images(root / "train", N_TRAIN, 0)
    _write_images(root / "test", N_TEST, N_TRAIN)
    decoded = N_TRAIN * SIDE * SIDE * 3  # 1.1 GiB of uint8 pixels
    on_disk = sum(p.stat().st_size for p in root.rglob("*.jpg"))

    repo = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-c", CHILD, str(root), str(tmp_path / "runs"), str(LIMIT), str(decoded)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr[-3000:]
    assert LIMIT - result["vm_data_after_imports"] < decoded, "the decoded images must not fit in the headroom"
    assert result["in_memory"] == "refused", "the limit must bind: holding the decoded images is refused"

    (summary_path,) = (tmp_path / "runs").glob(f"*/*/{layout.SUMMARY}")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished" and summary["final"]["step"] == N_TRAIN // 64
    assert 0.0 <= summary["final"]["test/acc1"] <= 1.0
    assert summary["peak_rss_bytes"] < LIMIT
    assert on_disk < decoded  # the files are JPEG; their decoded pixels are what streaming keeps out of memory


def test_peak_rss_is_the_process_own_not_its_parents():
    """getrusage's ru_maxrss survives fork+exec, so a run started from a large process (a test suite, a notebook)
    would report its parent's size; summary.json's figure is the process's own high-water mark."""
    ballast = np.ones(3 * 2**30, dtype=np.uint8)  # this process: over 3 GiB resident
    code = "from visionbench.engine.runtime import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert ballast.sum() == 3 * 2**30
    assert 50 * 2**20 < child < 2 * 2**30
