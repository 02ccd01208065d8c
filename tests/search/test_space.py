"""The search space file as read: bounded like a config (alias bombs, depth, encodings, file kinds) and a grid counted
before it is built, so `int: [0, 1e9]` under the grid sampler is one line naming the key, not a billion-element
list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from visionbench.errors import UserError
from visionbench.search.space import MAX_GRID_CELLS, grid_cells, read_space

VALID = "sampler: grid\nparams:\n  optim.lr: {choice: [0.1, 0.01]}\n  trainer.seed: {int: [0, 2]}\n"


def _space(tmp_path: Path, text: str, name: str = "s.space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ("  trainer.seed: {int: [0, 1e9]}\n", "params.trainer.seed: 1,000,000,001 grid values, more than the 10,000"),
        ("  trainer.seed: {int: [0, 100000], step: 2}\n", "params.trainer.seed: 50,001 grid values"),
        ("  optim.lr: {float: [0.0, 1024.0], step: 0.0078125}\n", "params.optim.lr: 131,073 grid values"),
        ("  optim.lr: {log_float: [1.0e-4, 1.0], grid_points: 1000000000000}\n", "params.optim.lr: 1,000,000,000,000"),
        (
            "  optim.lr: {float: [0.0, 1.0e+300], step: 1.0e-300}\n",
            "params.optim.lr: step 1e-300 divides [0.0, 1e+300] into uncountably many values",
        ),
        (
            "  trainer.seed: {int: [1, 100]}\n  optim.lr: {log_float: [1.0e-4, 1.0], grid_points: 200}\n",
            "params: the grid has 20,000 cells (100 (trainer.seed) x 200 (optim.lr)), more than the 10,000",
        ),
    ],
    ids=["int-1e9", "int-step", "float-step", "grid-points", "uncountable", "product"],
)
@pytest.mark.timeout(30)
def test_a_grid_too_large_is_refused_naming_the_key_before_it_is_built(tmp_path, params, needle):
    space = read_space(_space(tmp_path, "sampler: grid\nparams:\n" + params))
    with pytest.raises(UserError) as e:
        grid_cells(space, [])
    assert needle in str(e.value), str(e.value)


def test_a_grid_at_the_limit_is_built_in_file_order(tmp_path):
    space = read_space(
        _space(tmp_path, "params:\n  trainer.seed: {int: [1, 100]}\n  optim.lr: {choice: [0.1, 0.01]}\n")
    )
    cells = grid_cells(space, [])
    assert len(cells) == 200 and cells[:2] == [
        {"trainer.seed": 1, "optim.lr": 0.1},
        {"trainer.seed": 1, "optim.lr": 0.01},
    ]
    many = read_space(_space(tmp_path, f"params:\n  trainer.seed: {{int: [1, {MAX_GRID_CELLS}]}}\n"))
    assert len(grid_cells(many, [])) == MAX_GRID_CELLS


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "params:\n  optim.lr: {choice: [&a0 [x, x, x, x, x, x, x, x, x], "
            + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9))
            + "]}\n",
            "refused YAML at line 2, column",
        ),
        ("params:\n  optim.lr: {choice: " + "[" * 5000 + "]" * 5000 + "}\n", "refused YAML at line 2"),
        ("sampler: grid\nparams:\n  optim.lr: {choice: [0.1, 0.1]}\n", "choice: the value 0.1 is given more than once"),
    ],
    ids=["alias-bomb", "5000-deep", "repeated-choice"],
)
def test_a_hostile_space_file_is_one_line_naming_it(tmp_path, text, needle):
    path = _space(tmp_path, text)
    with pytest.raises(UserError) as e:
        read_space(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value) and len(str(e.value)) < 300, str(e.value)


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_a_space_file_in_any_yaml_encoding_reads_as_utf8_does(tmp_path, codec):
    path = tmp_path / "s.space.yaml"
    path.write_bytes(VALID.encode(codec))
    assert read_space(path) == read_space(_space(tmp_path, VALID, "utf8.space.yaml"))


@pytest.mark.parametrize("kind", ["latin-1", "fifo", "dev_zero", "directory"])
@pytest.mark.timeout(30)
def test_a_space_file_that_is_not_text_in_a_regular_file_is_refused(tmp_path, kind):
    path = tmp_path / "s.space.yaml"
    if kind == "latin-1":
        path.write_bytes(("# déjà vu\n" + VALID).encode("latin-1"))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    expected = {
        "latin-1": "search space is not valid UTF-8 (invalid continuation byte at byte offset 3)",
        "fifo": "search space is a FIFO, expected a regular file",
        "dev_zero": "search space is a character device, expected a regular file",
        "directory": "search space is a directory, expected a regular file",
    }[kind]
    with pytest.raises(UserError) as e:
        read_space(path)
    assert str(e.value).startswith(f"{path}: {expected}"), str(e.value)
