"""Fuzzing what `report` takes for a run, and hostile names given as arguments: each ends in one line and exit 2.

- `not_a_run` (12 examples): a folder that holds a run's marker (config.yaml or summary.json) without being a run,
  given to `report` by its path: the output of `visionbench lr-find` (some of lr_find.json, lr_find.csv,
  lr_find.png and config.yaml, under any folder name, `lr_find-` or not), or a folder inside a run (explain/,
  analysis/, plots/, checkpoints/ or any other name, with or without a stray marker). The error names the folder
  and says what it is; no report is written.
- `hostile_name_arg` (15 examples): a name made of rich markup (`[red]`, `[/x]`), math text (`$\\foo{$`), HTML,
  line breaks and control characters, given where a command refuses it: a run folder that does not exist, a
  dataset, a model filter. The line shows the name (line breaks escaped), never as markup.

That every name renders as written where commands succeed (report.md, report.html, figures, tables printed by rich)
is tested in tests/report/test_names.py.
"""

from __future__ import annotations

from fuzzing import FUZZ, TEXT, WORDS, check_minimums, expect_one_line_error, scratch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench import layout
from visionbench.errors import one_line

MINIMUM = {"not_a_run": 10, "hostile_name_arg": 12}
LR_FIND_FILES = (layout.LR_FIND_JSON, layout.LR_FIND_CSV, layout.LR_FIND_PNG, layout.CONFIG)
MARKUP = ("[red]", "[/x]", "[/]", "[bold]b[/bold]", "$\\foo{$", "<img src=x onerror=alert(1)>", "`|`", "\n", "\x1b[31m")


def _run(folder) -> None:
    folder.mkdir(parents=True)
    (folder / layout.CONFIG).write_text("model: {name: small_cnn}\n", encoding="utf-8")
    (folder / layout.SUMMARY).write_text('{"status": "finished"}', encoding="utf-8")


@st.composite
def not_a_run(draw, root):
    """(folder, what the error says it is) for a folder that looks like a run to a glob and is not one."""
    base = scratch(root)
    if draw(st.booleans()):
        prefix = draw(st.sampled_from(["lr_find-", "", "my-sweep-"]))
        folder = base / f"{prefix}{draw(WORDS)}"
        folder.mkdir()
        files = draw(st.sets(st.sampled_from(LR_FIND_FILES), min_size=1).filter(lambda f: f & set(LR_FIND_FILES[:2])))
        for name in files:
            (folder / name).write_bytes(draw(st.binary(max_size=64)))
        return folder, "the output of `visionbench lr-find`"
    run = base / draw(WORDS)
    _run(run)
    inside = draw(st.sampled_from(["explain", "analysis", "plots", "checkpoints", "notes", "x"]))
    folder = run / inside
    folder.mkdir()
    markers = draw(st.sets(st.sampled_from([layout.CONFIG, layout.SUMMARY])))
    if inside in ("notes", "x") and not markers:
        markers = {"config.yaml"}  # any other folder inside a run is one only by its marker
    for name in markers:
        (folder / name).write_text(draw(TEXT), encoding="utf-8")
    return folder, "a folder inside the run"


@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_a_folder_that_is_not_a_run_is_one_line_naming_it(work, capsys, data):
    folder, what = data.draw(not_a_run(work))
    line = expect_one_line_error(capsys, "not_a_run", ["report", folder], needle=f"{folder}: {what}")
    assert not (folder / "report.md").exists() and not (folder / "report.html").exists(), line


@st.composite
def hostile_names(draw) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(MARKUP), TEXT), min_size=1, max_size=4))
    parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(MARKUP[:5])))
    return "".join(parts)


@settings(FUZZ, max_examples=15)
@given(name=hostile_names(), command=st.sampled_from(["report", "data info", "models --filter"]))
def test_a_hostile_name_in_an_argument_is_shown_as_written(work, capsys, name, command):
    if command == "report":
        path = scratch(work) / name.replace("/", "∕")
        expect_one_line_error(capsys, "hostile_name_arg", ["report", path], needle=one_line(str(path)))
    elif command == "data info":
        expect_one_line_error(capsys, "hostile_name_arg", ["data", "info", f"zz{name}"])
    else:
        pattern = f"zz{name}".replace("*", "").replace("?", "")  # no wildcard that matches a registered model
        expect_one_line_error(capsys, "hostile_name_arg", ["models", "--filter", pattern])


def test_every_name_category_reached_its_minimum():
    check_minimums(MINIMUM)
