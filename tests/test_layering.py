"""The package's shape, checked on its source: where names, task kinds and imports may appear.

Each rule gives a piece of knowledge one home (the run directory's file names in `layout.py`, a dataset's name in
`data/`, a task kind in `tasks/`, the command line in `cli/`), so a change to it is made in one place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import visionbench
import visionbench.data  # noqa: F401  (registers the datasets)
import visionbench.tasks  # noqa: F401  (registers the tasks)
from visionbench import layout
from visionbench.registry import DATASETS, TASKS

PACKAGE = Path(visionbench.__file__).resolve().parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
LONGEST_FUNCTION = 100


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"


def _strings(tree: ast.Module):
    """String constants that are values, not docstrings (prose may mention anything)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def _inside(path: Path, folder: str) -> bool:
    return path.relative_to(PACKAGE).parts[0] == folder


def _imported(path: Path, tree: ast.Module) -> list[tuple[ast.AST, str]]:
    """The absolute module names a file imports (relative imports resolved against its package)."""
    package = ["visionbench", *path.relative_to(PACKAGE).parts[:-1]]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names += [(node, module)] + [(node, f"{module}.{alias.name}") for alias in node.names]
    return names


def test_no_function_is_longer_than_a_screen_and_a_half() -> None:
    long = [
        f"{_where(path, node)} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in SOURCES
        for node in ast.walk(_tree(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]
    assert not long, long


def test_only_the_command_line_imports_the_command_line() -> None:
    """Libraries never reach up into cli/, and a command never borrows from another command's module."""
    wrong = []
    for path in SOURCES:
        if path.name == "__main__.py" and path.parent == PACKAGE:
            continue
        for node, module in _imported(path, _tree(path)):
            if not (module == "visionbench.cli" or module.startswith("visionbench.cli.")):
                continue
            if not _inside(path, "cli"):
                wrong.append(f"{_where(path, node)} imports {module}")
            elif path.name != "main.py" and module != "visionbench.cli":
                wrong.append(f"{_where(path, node)} imports {module}")
    assert not wrong, wrong


def test_no_file_outside_data_names_a_dataset() -> None:
    names = sorted(DATASETS.list(), key=len, reverse=True)
    assert "fashion-mnist" in names and "deeplense" in names  # the registry is populated: the test has teeth
    word = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    found = [
        f"{_where(path, node)} {node.value!r}"
        for path in SOURCES
        if not _inside(path, "data")
        for node in _strings(_tree(path))
        if word.search(node.value)
    ]
    assert not found, found


def _task_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def _task_kind_comparisons(tree: ast.Module) -> list[ast.Compare]:
    kinds = set(TASKS.list())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and any(_task_names(side) & kinds for side in (node.left, *node.comparators))
    ]


def test_no_file_outside_tasks_compares_a_task_kind() -> None:
    assert {"classification", "multilabel", "regression"} <= set(TASKS.list())
    found = [
        _where(path, node)
        for path in SOURCES
        if not _inside(path, "tasks")
        for node in _task_kind_comparisons(_tree(path))
    ]
    assert not found, found


def test_the_task_kind_rule_sees_equality_and_membership() -> None:
    tree = ast.parse('a = kind == "multilabel"\nb = kind in ("regression", "x")\nc = kind == "other"\n')
    assert [node.lineno for node in _task_kind_comparisons(tree)] == [1, 2]


def test_only_layout_spells_a_run_directory_file_name() -> None:
    files = {layout.CONFIG, layout.ENV, layout.METRICS, layout.SUMMARY, layout.LAST, layout.BEST}
    files |= {layout.LR_FIND_CSV, layout.LR_FIND_JSON, layout.LR_FIND_PNG}
    files |= {layout.artifact(layout.CONFUSION_MATRIX), layout.artifact(layout.PREDICTIONS, suffix=".csv")}
    files |= {layout.per_image()}
    found = [
        f"{_where(path, node)} {node.value!r}"
        for path in SOURCES
        if path.name != "layout.py"
        for node in _strings(_tree(path))
        if any(name in node.value for name in files)
    ]
    assert not found, found
