"""Fuzzing inference and weights with hypothesis: `predict`, `eval`, `export` and `lr-find` on corrupted weights,
pixels of every dtype and bit depth, opsets the exporter cannot honour, and output paths they must not write.

Each generator draws many variants of one class of hostile input. Inputs that must be refused go through the shared
harness (`fuzzing.expect_one_line_error`: exit 2, one `error:` line, no traceback, no warning line) and are counted
in `TRIED` under the categories below; inputs that are fine by construction (a flip in a file's padding, a 16-bit
copy of an 8-bit image) must give the same answer as the original instead, judged by an oracle that does not use
the code under test (torch.load and torch.equal, Pillow and numpy). `test_infer_categories_reached_their_minimum`
checks the counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
from fuzzing import FUZZ, SMOKE, WORDS, check_minimums, expect_one_line_error, scratch, sets
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main

TINY = "{num_classes: 3, n_train: 48, n_test: 12, channels: 1, size: 16}"
BEST, LAST = layout.BEST, layout.LAST
HIGHEST_OPSET = onnx.defs.onnx_opset_version()

MINIMUM = {  # refused inputs per category; the generators also draw harmless variants, which are not counted
    "infer_weights_flip": 6,
    "infer_checkpoint_flip": 5,
    "infer_nonfinite": 8,
    "infer_pixels": 8,
    "infer_npy_header": 6,
    "infer_opset": 6,
    "infer_out": 12,
}


@pytest.fixture(scope="module")
def runs(work):
    """A finished grey 16x16 run, an lr-find folder beside it, and a reference image with its prediction."""
    out = work / "infer-runs"
    argv = ["train", str(SMOKE), *sets(f"data.kwargs={TINY}", "trainer.epochs=1", "trainer.batch_size=16")]
    assert main([*argv, *sets("trainer.checkpoint_every_minutes=null", f"trainer.out_dir={out}")]) == 0
    (run,) = [p.parent for p in out.glob(f"*/*/{layout.SUMMARY}")]
    lr_find = work / "infer-lr-find"  # what lr-find leaves: its files beside a config.yaml
    lr_find.mkdir()
    shutil.copy(run / layout.CONFIG, lr_find)
    (lr_find / layout.LR_FIND_JSON).write_text("{}")
    return run, lr_find


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _copy(work: Path, run: Path) -> Path:
    copy = scratch(work) / "run"
    shutil.copytree(run, copy)
    return copy


def _predict(capsys, run: Path, image: Path, weights: str = "best") -> torch.Tensor:
    """The probabilities (by class index) that `predict --json` prints for one image."""
    capsys.readouterr()
    code = main(["predict", str(run), str(image), "--json", "--weights", weights])
    out, err = capsys.readouterr()
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    return torch.tensor([p["probability"] for p in sorted(record["predictions"], key=lambda p: p["index"])])


def _same(a, b) -> bool:
    """Equal states, tensors bit for bit (the oracle of harmless flips; independent of the code under test)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ---------------------------------------------------------------------------------------------------------------
# Bit flips in best.safetensors and checkpoints/last


@st.composite
def flip(draw, valid: bytes, split: bool = False) -> tuple[int, int, str]:
    """(offset, bit, region) of one flipped bit; with `split`, in a safetensors file's JSON header or its tensor
    data, drawn evenly. Drawn as numbers, so that a failing example prints as three values, not the file."""
    start, end, region = 0, len(valid), "any"
    if split:
        header_end = 8 + int.from_bytes(valid[:8], "little")
        region = draw(st.sampled_from(["header", "data"]), label="region")
        start, end = (0, header_end) if region == "header" else (header_end, len(valid))
    return draw(st.integers(start, end - 1), label="offset"), draw(st.integers(0, 7), label="bit"), region


def _flipped(valid: bytes, offset: int, bit: int) -> bytes:
    data = bytearray(valid)
    data[offset] ^= 1 << bit
    return bytes(data)


def _same_answer_or_refused(capsys, category: str, argv: list, answer: str, needle: str) -> None:
    """A corrupted file that a reader could still take as the original: the original's answer, or one line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, _ = capsys.readouterr()
    if code == 0:
        assert out == answer, "a harmless flip must not change the answer"
    else:
        expect_one_line_error(capsys, category, argv, needle=needle)


def _answer(capsys, argv: list) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def _command(data, run: Path) -> list:
    image = run.parent / "probe.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)).save(image)
    return data.draw(st.sampled_from([["predict", run, image, "--json"], ["eval", run]]), label="command")


@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_a_bit_flip_in_best_weights_is_refused_or_changes_nothing(work, runs, capsys, data):
    run = _copy(work, runs[0])
    command = _command(data, run)
    valid = (run / BEST).read_bytes()
    offset, bit, region = data.draw(flip(valid, split=True), label="flip")
    content = _flipped(valid, offset, bit)
    if region == "data":  # every tensor byte is covered by the digest
        (run / BEST).write_bytes(content)
        expect_one_line_error(capsys, "infer_weights_flip", command, needle="checksum mismatch")
        return
    try:  # a header flip: the oracle is what safetensors itself reads from the flipped file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flipped_tensors, original = safetensors.torch.load(content), safetensors.torch.load(valid)
        harmless = _same(dict(sorted(flipped_tensors.items())), dict(sorted(original.items())))
    except Exception:  # noqa: BLE001  (safetensors refuses the header: any error type)
        harmless = False
    # metadata or padding: the same answer, or refused (a changed digest says "corrupted")
    _flipped_file_answers(capsys, "infer_weights_flip", command, run / BEST, content, harmless, "best.safetensors")


def _flipped_file_answers(capsys, category, command, target: Path, content: bytes, harmless: bool, needle: str):
    """Write the flipped `content` over `target` and run `command`: a flip the oracle calls harmless gives the
    answer of the intact file (or a refusal), any other is refused in one line naming `needle`."""
    answer = _answer(capsys, command) if harmless else ""
    target.write_bytes(content)
    if harmless:
        _same_answer_or_refused(capsys, category, command, answer, needle=needle)
    else:
        expect_one_line_error(capsys, category, command, needle=needle)


@settings(FUZZ, max_examples=14)
@given(data=st.data())
def test_a_bit_flip_in_the_last_checkpoint_is_refused_or_changes_nothing(work, runs, capsys, data):
    run = _copy(work, runs[0])
    command = [*_command(data, run), "--weights", "last"]
    valid = (run / LAST).read_bytes()
    offset, bit, _ = data.draw(flip(valid), label="flip")
    content = _flipped(valid, offset, bit)
    try:  # the oracle: what torch itself reads from the flipped file (it checks no CRC)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            harmless = _same(
                torch.load(io.BytesIO(content), weights_only=True), torch.load(run / LAST, weights_only=True)
            )
    except Exception:  # noqa: BLE001  (torch refuses it: any error type)
        harmless = False
    # the zip's padding, a local header field, the data descriptor: nothing a reader uses changed
    _flipped_file_answers(capsys, "infer_checkpoint_flip", command, run / LAST, content, harmless, layout.LAST)


# ---------------------------------------------------------------------------------------------------------------
# NaN and infinite weights, with and without a valid digest


@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_non_finite_weights_are_refused_naming_the_file(work, runs, capsys, data):
    from visionbench.engine.checkpoint import save_checkpoint, state_digest

    run = _copy(work, runs[0])
    which = data.draw(st.sampled_from(["best", "last"]), label="file")
    value = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]), label="value")
    digest = data.draw(st.booleans(), label="with a valid digest")
    if which == "best":
        tensors = safetensors.torch.load_file(run / BEST)
    else:
        state = torch.load(run / LAST, weights_only=True)
        tensors = state["model"]
    name = data.draw(st.sampled_from(sorted(k for k, v in tensors.items() if v.is_floating_point())), label="tensor")
    flat = tensors[name].view(-1)
    flat[data.draw(st.integers(0, len(flat) - 1), label="index")] = value
    if which == "best":
        metadata = {"visionbench.sha256": state_digest(dict(sorted(tensors.items())))} if digest else None
        safetensors.torch.save_file(tensors, run / BEST, metadata=metadata)
    elif digest:
        state.pop("sha256")
        save_checkpoint(run / LAST, {k: v for k, v in state.items() if k != "format"})
    else:
        state.pop("sha256")
        torch.save(state, run / LAST)
    command = data.draw(st.sampled_from([["predict", run, runs[1] / layout.CONFIG], ["eval", run]]), label="command")
    if command[0] == "predict":  # an image to predict on (the config file would be refused for itself)
        image = run.parent / "probe.png"
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(image)
        command[2] = image
    line = expect_one_line_error(capsys, "infer_nonfinite", [*command, "--weights", which], needle="NaN or infinite")
    assert (BEST if which == "best" else LAST) in line and name in line, line


# ---------------------------------------------------------------------------------------------------------------
# Pixels of every dtype, bit depth and Pillow mode: scaled to the training range, or refused


REFERENCE = np.random.default_rng(7).integers(0, 256, (16, 16), dtype=np.uint8)
FULL_SCALE = {np.uint16: 257, np.uint32: 16843009, np.uint64: 72340172838076673}  # (2**bits - 1) / 255


@st.composite
def pixels(draw, folder: Path) -> tuple[Path, np.ndarray | None]:
    """A file and the 8-bit grey image it must decode to (None: it must be refused)."""
    kind = draw(
        st.sampled_from(
            ["uint", "float", "bool", "png16", "tiff16", "tiff_float", "signed", "out_of_range", "non_finite"]
            + ["tiff_int32", "channels", "ndim", "complex"]
        )
    )
    layout = draw(st.sampled_from(["HW", "1HW", "3HW"]))

    def shaped(a: np.ndarray) -> np.ndarray:
        return {"HW": a, "1HW": a[None], "3HW": np.stack([a] * 3)}[layout]

    path = folder / f"{kind}.npy"
    if kind == "uint":
        dtype = draw(st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]))
        np.save(path, shaped(REFERENCE.astype(dtype) * dtype(FULL_SCALE.get(dtype, 1))))
        return path, REFERENCE
    if kind == "float":
        dtype = draw(st.sampled_from([np.float32, np.float64]))
        np.save(path, shaped((REFERENCE / 255).astype(dtype)))
        return path, REFERENCE
    if kind == "bool":
        np.save(path, shaped(REFERENCE > 127))
        return path, (REFERENCE > 127).astype(np.uint8) * 255
    if kind in ("png16", "tiff16"):
        path = folder / ("x.png" if kind == "png16" else "x.tiff")
        Image.fromarray(REFERENCE.astype(np.uint16) * 257).save(path)
        return path, REFERENCE
    if kind == "tiff_float":
        path = folder / "x.tiff"
        scale = draw(st.sampled_from([1.0, 255.0, -1.0, 1.5]))
        Image.fromarray((REFERENCE / 255 * scale).astype(np.float32)).save(path)
        return path, REFERENCE if scale == 1.0 else None
    if kind == "signed":
        dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64]))
        np.save(path, shaped(draw(st.sampled_from([REFERENCE.astype(dtype), (REFERENCE // 2).astype(dtype)]))))
        return path, None
    if kind == "out_of_range":
        dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
        scale = draw(st.floats(1.01, 1e4) | st.floats(-1e4, -0.01))
        np.save(path, shaped((REFERENCE.astype(np.float64) / 255 * scale).astype(dtype)))
        return path, None
    if kind == "non_finite":
        array = (REFERENCE / 255).astype(draw(st.sampled_from([np.float16, np.float32, np.float64])))
        array[draw(st.integers(0, 15)), draw(st.integers(0, 15))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        np.save(path, shaped(array))
        return path, None
    if kind == "tiff_int32":
        path = folder / "x.tiff"
        Image.fromarray(REFERENCE.astype(np.int32) * draw(st.sampled_from([1, 257, -1]))).save(path)
        return path, None
    if kind == "channels":
        np.save(path, np.stack([REFERENCE] * draw(st.sampled_from([2, 4, 5, 16]))))
        return path, None
    if kind == "ndim":
        np.save(path, REFERENCE.reshape(draw(st.sampled_from([(256,), (1, 1, 16, 16), (2, 2, 8, 8)]))))
        return path, None
    np.save(path, REFERENCE.astype(np.complex64))
    return path, None


@settings(FUZZ, max_examples=24)
@given(data=st.data())
def test_pixels_of_every_dtype_and_depth_are_scaled_right_or_refused(work, runs, capsys, data):
    folder = scratch(work)
    path, expected = data.draw(pixels(folder), label="pixels")
    if expected is None:
        expect_one_line_error(capsys, "infer_pixels", ["predict", runs[0], path], needle=path.name)
        return
    reference = folder / "reference.png"  # the same grey levels as an 8-bit PNG: the scale training used
    Image.fromarray(expected).save(reference)
    torch.testing.assert_close(_predict(capsys, runs[0], path), _predict(capsys, runs[0], reference), rtol=0, atol=1e-6)


@st.composite
def npy_header_bomb(draw, folder: Path) -> Path:
    """A .npy whose header claims more than it may: more pixels than the limit (a sparse file as long as the
    header says, or a few bytes), or a size the file does not hold."""
    descr = draw(st.sampled_from(["<f4", "|u1", "<u2", "<f8"]))
    itemsize = int(descr[-1])
    if draw(st.booleans()):
        side = draw(st.integers(9460, 2**20))  # 9460**2 > 89,478,485 (Pillow's limit)
        shape = (draw(st.sampled_from([1, 3])), side, draw(st.integers(9460, 2**20)))
    else:
        shape = (1, draw(st.integers(17, 9000)), draw(st.integers(17, 9000)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    path = folder / "claims.npy"
    path.write_bytes(header.getvalue() + b"\0" * draw(st.integers(0, 256)))
    claimed = len(header.getvalue()) + math.prod(shape) * itemsize
    if shape[1] > 9000 and draw(st.booleans()) and claimed < 2**40:
        os.truncate(path, claimed)  # sparse: the length the header claims, nothing on disk
    return path


@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_npy_headers_claiming_too_much_are_refused_before_allocating(work, runs, capsys, data):
    path = data.draw(npy_header_bomb(scratch(work)), label="npy")
    line = expect_one_line_error(capsys, "infer_npy_header", ["predict", runs[0], path], needle="claims.npy")
    assert "decompression-bomb limit" in line or "truncated" in line, line


# ---------------------------------------------------------------------------------------------------------------
# Opsets and output paths


@settings(FUZZ, max_examples=9)
@given(data=st.data())
def test_opsets_the_exporter_cannot_honour_are_refused(work, runs, capsys, data):
    """Outside onnx's range (refused at once), or below what small_cnn's operators convert to (15: no adapter for
    Reshape and Shape below it; each such example exports at 18 first)."""
    opset = data.draw(
        st.integers(-(2**31), 6) | st.integers(HIGHEST_OPSET + 1, 2**31) | st.integers(7, 14), label="opset"
    )
    out = scratch(work) / "model.onnx"
    argv = ["export", runs[0], "--format", "onnx", "--opset", opset, "--out", out]
    expect_one_line_error(capsys, "infer_opset", argv, needle=f"--opset {opset}")
    assert not out.exists() and not list(out.parent.iterdir()), "nothing written"


@st.composite
def forbidden_out(draw, run: Path, lr_find: Path, folder: Path) -> tuple[list, str]:
    """A command line whose output would land over a file it did not create or inside a run directory."""
    name = draw(WORDS, label="name")
    export = ["export", run, "--format", "onnx"]
    lr = ["lr-find", SMOKE, *sets(f"data.kwargs={TINY}"), "--steps", "10"]
    overwrite = ["--overwrite"] if draw(st.booleans()) else []
    kind = draw(
        st.sampled_from(
            ["own_file", "folder", "run_file", "run_new", "lr_find_folder", "lr_run", "lr_inside", "lr_nonempty"]
            + ["lr_earlier", "lr_file"]
        )
    )
    if kind == "own_file":  # someone's file: refused unless --overwrite (and then replaced, not a refusal)
        (folder / name).write_text("mine")
        return [*export, "--out", folder / name], "exists; pass --overwrite"
    if kind == "folder":
        (folder / name).mkdir()
        return [*export, "--out", folder / name, *overwrite], "is a folder"
    if kind == "run_file":
        target = run / draw(st.sampled_from([BEST, LAST, layout.CONFIG, layout.SUMMARY, layout.METRICS]))
        return [*export, "--out", target, "--overwrite"], "inside the run directory"
    if kind == "run_new":
        sub = draw(st.sampled_from(["", "checkpoints/", "plots/", f"{name}/"]))
        return [*export, "--out", run / f"{sub}{name}.onnx", *overwrite], "inside the run directory"
    if kind == "lr_find_folder":
        return [*export, "--out", lr_find / f"{name}.onnx", *overwrite], "inside the run directory"
    if kind == "lr_run":
        return [*lr, "--out", run, *overwrite], "a training run's directory"
    if kind == "lr_inside":
        return [*lr, "--out", run / draw(st.sampled_from(["", "checkpoints/"])) / name, *overwrite], "inside the run"
    if kind == "lr_nonempty":
        (folder / name).mkdir()
        (folder / name / draw(WORDS)).write_text("mine")
        return [*lr, "--out", folder / name, *overwrite], "not empty and not an lr-find result"
    if kind == "lr_earlier":
        return [*lr, "--out", lr_find], "holds an earlier lr-find result; pass --overwrite"
    return [*lr, "--out", run / draw(st.sampled_from([layout.CONFIG, layout.SUMMARY])), *overwrite], "not a folder"


@settings(FUZZ, max_examples=20)
@given(data=st.data())
def test_output_paths_over_other_files_or_inside_run_directories_are_refused(work, runs, capsys, data):
    run, lr_find = runs
    folder = scratch(work)
    argv, needle = data.draw(forbidden_out(run, lr_find, folder), label="argv")
    before = {p: _digest(p) for p in (run, lr_find, folder)}
    expect_one_line_error(capsys, "infer_out", argv, needle=needle)
    assert {p: _digest(p) for p in (run, lr_find, folder)} == before, "nothing written, nothing replaced"


def test_infer_categories_reached_their_minimum():
    check_minimums(MINIMUM)
