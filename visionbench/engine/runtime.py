"""Device choice, seeding, determinism, autocast and memory readings: the one place each is decided."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import random
import resource
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from visionbench.config import RunConfig, TrainerConfig
from visionbench.errors import Terminated, UserError, first_line

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; an unavailable device is a UserError. Under torchrun, `auto` and
    `cuda` mean this process's GPU (LOCAL_RANK)."""
    if name in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name!r} but CUDA is not available on this machine (use auto or cpu)")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:  # also undoes an earlier deterministic run in the same process (tests, notebooks)
        if torch.are_deterministic_algorithms_enabled():  # the call imports torch._inductor (seconds): only if needed
            torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


@dataclasses.dataclass(frozen=True)
class Process:
    """Where this process trains: its rank of `world` (0 of 1 outside torchrun), its device, whether it compiles."""

    rank: int
    world: int
    device: torch.device
    compile: bool

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world


def start_process(cfg: RunConfig) -> Process:
    """Join torchrun's process group (if started by it), then `set_up_process`; warns once when a config tuned for
    CUDA runs without it."""
    tcfg = cfg.trainer
    rank, world = init_distributed(tcfg.device)  # (0, 1) unless started by torchrun
    if world > 1 and tcfg.time_budget_minutes is not None:
        raise UserError("trainer.time_budget_minutes: not supported under torchrun yet (the ranks' clocks differ)")
    device = set_up_process(tcfg)
    source = f"experiment {tcfg.experiment or cfg.model.name!r}"
    return Process(rank, world, device, gpu_settings_for(device, tcfg.expect_cuda, tcfg.compile, source))


def set_up_process(cfg: TrainerConfig) -> torch.device:
    """This process's device (`trainer.device`), CPU threads and seeds, before anything is built; the peak-memory
    reading starts here."""
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed, cfg.deterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return device


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The loss scaler of a training step: active for fp16 on CUDA only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and precision == "fp16")


def autocast(device: torch.device, precision: str, cpu_precision: str = "fp32") -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA (`precision`); on CPU, bf16 autocast only when `cpu_precision` asks for it: it
    pays on CPUs with AVX-512 BF16 for convolution-heavy small models (benchmarks/fmnist_cpu.py), not in general."""
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_precision == "bf16" else contextlib.nullcontext()
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def process_start() -> float | None:
    """When this process started, on time.monotonic's clock (Linux: /proc/self/stat's start time, 10 ms ticks), so
    that start-up figures include the interpreter's start and imports; None where /proc cannot tell."""
    try:
        with open("/proc/self/stat", "rb") as f:
            started_ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, after the parenthesised name
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return time.monotonic() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size: VmHWM on Linux (its own memory map's high-water mark; getrusage's
    ru_maxrss survives exec, so a process started from a large one would report its parent's size), else
    ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def gpu_settings_for(device: torch.device, expect_cuda: bool, compile_: bool, source: str = "config") -> bool:
    """For a config tuned for CUDA (`trainer.expect_cuda`) on a machine without it: one warning line, and the
    compile setting to use there (off: its warm-up would dominate a CPU run). Returns whether to compile."""
    if not expect_cuda or device.type == "cuda":
        return compile_
    log.warning(
        "%s is tuned for CUDA (trainer.expect_cuda) but runs on %s here: fp32, no torch.compile; "
        "its speed figures need a GPU",
        source,
        device.type.upper(),
    )
    return False


class CompiledForward:
    """`torch.compile(model, mode=mode)` called like the model, falling back to the eager model for good, with one
    warning, when compiling or running the compiled forward fails (an op Dynamo cannot trace, no C++ compiler
    for Inductor, ...). Errors of the input (`UserError`) and interrupts pass through.

    Compilation happens at the first call, so that is where failures surface; a backward graph is compiled with
    its forward (AOTAutograd), so the same call covers it.
    """

    def __init__(self, model: torch.nn.Module, mode: str = "default", name: str = "model"):
        self.model, self.name = model, name
        self.compiled = torch.compile(model, mode=None if mode == "default" else mode)
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.model(x)
        try:
            return self.compiled(x)
        except (UserError, KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, never crash)
            self.failed = True
            log.warning(
                "trainer.compile: torch.compile failed for %s (%s); training without it", self.name, first_line(e, 160)
            )
            return self.model(x)


class PeerFailed(UserError):
    """A collective failed because another process of the run died. Exit status 1: not the input's fault."""

    exit_code = 1


def init_distributed(device_name: str) -> tuple[int, int]:
    """Join the process group that torchrun describes (WORLD_SIZE > 1 in the environment): NCCL when this rank
    trains on CUDA, else gloo. Returns (rank, world size); (0, 1) outside torchrun. Ranks other than 0 log
    errors only, and SIGTERM becomes `Terminated`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")

    def terminate(signum, frame):
        raise Terminated("terminated by SIGTERM (another process of the run failed?)")

    signal.signal(signal.SIGTERM, terminate)
    rank = dist.get_rank()
    if rank:
        logging.getLogger().setLevel(logging.ERROR)
    return rank, dist.get_world_size()


def end_distributed() -> None:
    """Leave the process group. Drop every DDP wrapper first: a reducer outliving the group can make gloo abort the
    process at exit ("terminate called without an active exception", 4 runs in 10 here without this)."""
    gc.collect()
    dist.destroy_process_group()


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (itself outside DDP)."""
    if not distributed():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (each rank's contiguous part of a split); `local` itself
    outside DDP. Uneven parts are padded for the collective and trimmed after it."""
    if not distributed():
        return local
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(local)], device=local.device))
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])
