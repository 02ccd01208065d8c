"""The fuzzing harness shared by the hostile-input suites (`test_fuzz*.py` here): run a bad input through
`visionbench.cli.main.main(argv)` in-process and require one `error:` line, exit status 2, no traceback, no warning
line and no sign that a payload ran. `TRIED` counts the generated bad inputs that went through it, by category; the
suite prints the total at the end of a pytest session (conftest.py).
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import string
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from visionbench.cli.main import main
from visionbench.data import cifar as cifar_module

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"
TRIED: collections.Counter[str] = collections.Counter()  # generated bad inputs run to the end, by category


FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # capsys: read and reset in every example
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

# Text that can be a YAML value, a file name or an argument: no surrogates, no NUL.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)
WORDS = st.text(string.ascii_lowercase + "_", min_size=1, max_size=10)


# ---------------------------------------------------------------------------------------------------------------
# The harness


def check_minimums(minimum: dict[str, int]) -> None:
    """A fuzz file's last test: each of its categories ran at least `minimum[category]` generated inputs (skipped
    when only part of the file ran, so that a deselection is not reported as a gap)."""
    if set(minimum) - set(TRIED):
        pytest.skip(f"only part of this file ran ({sorted(set(minimum) & set(TRIED))})")
    short = {k: TRIED[k] for k, n in minimum.items() if TRIED[k] < n}
    assert not short, f"categories below their minimum: {short} (tried: {dict(TRIED)})"


def run_dir_of(trainer) -> Path:
    """The run directory, from the run's recorder (the Trainer itself does not hold it)."""
    from visionbench.engine.recorder import Recorder

    (recorder,) = [cb for cb in trainer.callbacks if isinstance(cb, Recorder)]
    return recorder.run_dir


def after_step(monkeypatch, step: int, action) -> None:
    """Run `action(run_dir)` right after optimizer step `step` of the run (what a user does from another shell)."""
    from visionbench.engine.loop import Trainer

    emit = Trainer._emit

    def emit_then_act(self, event, state):
        emit(self, event, state)
        if event == "after_batch" and state.step == step:
            action(run_dir_of(self))

    monkeypatch.setattr(Trainer, "_emit", emit_then_act)


def scratch(work: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=work))


def sets(*overrides: str) -> list[str]:
    return [word for item in overrides for word in ("--set", item)]


class _Records(logging.Handler):
    """Log records of WARNING and above: the console script prints them on stderr, before the error line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _expected_noise(item: warnings.WarningMessage | logging.LogRecord) -> bool:
    """The one extra stderr line a bad input may bring: CIFAR's md5 notice (a copy that differs from the official
    files is read anyway, by design)."""
    if isinstance(item, logging.LogRecord):
        return item.name == cifar_module.__name__ and "md5" in item.getMessage()
    return False


def expect_one_line_error(capsys, category: str, argv: list, markers: tuple[Path, ...] = (), needle: str = "") -> str:
    """Run `main(argv)` and require exit 2, one `error:` line on stderr, no traceback, no warning that the console
    script would print on stderr too, and no payload marker."""
    records, root = _Records(), logging.getLogger()
    root.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main([str(a) for a in argv])
    finally:
        root.removeHandler(records)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    noise = [str(w.message) for w in caught if not _expected_noise(w)]
    noise += [r.getMessage() for r in records.records if not _expected_noise(r)]
    shown = f"argv={argv}\nexit={code}\nstdout={out[-1500:]!r}\nstderr={err[-3000:]!r}\nwarnings={noise}"
    assert "Traceback" not in out + err, shown
    assert code == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), shown
    assert needle in lines[0], f"expected {needle!r} in the message\n{shown}"
    assert not noise, f"warnings the console script would print as more stderr lines\n{shown}"
    for marker in markers:
        assert not marker.exists(), f"the payload ran: {marker} exists\n{shown}"
    TRIED[category] += 1
    return lines[0]


class Payload:
    """Pickles as the call `func(*args)`: what a hostile checkpoint or data file carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def payloads(marker: Path) -> list[Payload]:
    """Calls that would each create `marker`: os.system, exec, eval, subprocess and a pathlib method."""
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return [
        Payload(os.system, f"touch {marker}"),
        Payload(exec, code),
        Payload(eval, code),
        Payload(subprocess.call, ["touch", str(marker)]),
        Payload(Path.write_text, marker, "pwned"),
    ]


@st.composite
def payload_pickles(draw, marker: Path) -> bytes:
    """A pickle (any protocol) whose loading would run a payload, at top level or inside a dict."""
    payload = draw(st.sampled_from(payloads(marker)))
    obj = draw(st.sampled_from(["top", "dict", "list"]))
    wrapped = {"top": payload, "dict": {b"data": payload, b"labels": [0]}, "list": [np.zeros(2), payload]}[obj]
    return pickle.dumps(wrapped, protocol=draw(st.integers(0, 5)))


def _pil_refuses(path: Path) -> bool:
    """Pillow itself cannot decode the file: the oracle of the image examples (independent of our decoder)."""
    try:
        with Image.open(path) as img:
            img.convert("RGB")
    except Exception:  # noqa: BLE001  (any failure of Pillow's means the file is bad)
        return True
    return False


def _png(path: Path, seed: int = 0, size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def cifar_valid() -> dict[str, bytes]:
    """The valid CIFAR-10 files (two images a batch) that the CIFAR examples damage, as the pickles CIFAR ships."""
    rng = np.random.default_rng(1)
    names = [f"class_{i}".encode() for i in range(10)]
    files = {"batches.meta": {b"label_names": names, b"num_cases_per_batch": 2}}
    for name in (*cifar_module.CIFAR10.train_files, cifar_module.CIFAR10.test_file):
        files[name] = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 7]}
    out = {}
    for name, obj in files.items():
        buffer = io.BytesIO()
        cifar_module._Py2Pickler(buffer, protocol=2).dump(obj)
        out[name] = buffer.getvalue()
    return out


# A two-image-a-split VOC2007 tree that the VOC examples damage (the annotations name one dog each).
VOC_XML = (
    "<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>"
    "<object><name>{name}</name><difficult>0</difficult></object></annotation>\n"
)
VOC_IDS = {"trainval": ["000001", "000002"], "test": ["000003", "000004"]}


def voc_tree(folder: Path) -> Path:
    """Write the valid tree under `folder`; returns its VOCdevkit/VOC2007."""
    voc = folder / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for split, ids in VOC_IDS.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, image_id in enumerate(ids):
            _png(voc / "JPEGImages" / f"{image_id}.jpg", seed=i, fmt="JPEG")
            (voc / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, name="dog"))
    return voc
