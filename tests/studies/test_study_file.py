"""A bad study file is one line naming the file and the key, exit status 2, and nothing written: unknown keys (with
the closest valid ones), a missing config, duplicate labels, labels a table or figure names that the cells lack, a
cell config refusing an override, bad formats and file names. A good one resolves every run of every cell, in the
order the overrides apply, with fixed run directories that --short keeps apart."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from visionbench.cli.main import main
from visionbench.study import read_study

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "smoke" / "synthetic.yaml")
GOOD = {
    "title": "A study",
    "set": {"trainer.batch_size": 32},
    "short": {"trainer.epochs": 1},
    "cells": [
        {"config": SMOKE, "labels": {"arch": "a", "model": "I"}, "seeds": [0, 1], "short": {"optim.lr": 0.2}},
        {"config": SMOKE, "labels": {"arch": "b", "model": "I"}, "set": {"optim.lr": 0.1}, "notes": "lr {optim.lr}"},
    ],
    "tables": [{"title": "t", "rows": "arch", "cols": "model", "columns": ["test/acc1"], "extra": ["epochs"]}],
    "figures": [{"kind": "grid", "title": "g", "figure": "curves", "rows": "arch", "cols": "model"}],
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad study.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _set(path: str, value):
    """A change of GOOD at a path of keys and indices (`None`: delete it)."""

    def change(data: dict) -> None:
        *parents, last = path
        node = data
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return change


def _both(*changes):
    return lambda data: [change(data) for change in changes]


BAD = [
    (_set(("titel",), "x"), "unknown key titel; closest valid keys: title"),
    (_set(("cells", 1, "lables"), {}), "unknown key cells[1].lables; closest valid keys: labels"),
    (_set(("figures", 0, "fgure"), "x"), "unknown key figures[0].fgure; closest valid keys: figure"),
    (_set(("tables", 0, "columns"), [{"metrc": "x"}]), "unknown key tables[0].columns[0].metrc; closest valid"),
    (_set(("cells",), None), "cells: missing, and required"),
    (_set(("cells", 0, "config"), "no_such.yaml"), "cells[0].config: "),
    (_set(("cells", 1, "labels"), {"arch": "a", "model": "I"}), "cells[1].labels: arch=a, model=I again (as cells[0])"),
    (_set(("cells", 1, "labels"), {"arch": "b"}), "cells[1].labels: keys arch where cells[0] has arch, model"),
    (
        _both(
            _set(("cells", 0, "labels"), {"arch": "x y", "model": "I"}),
            _set(("cells", 0, "seeds"), None),
            _set(("cells", 1, "labels"), {"arch": "x?y", "model": "I"}),
        ),
        "cells[1].labels: its run directory",
    ),
    (_set(("cells", 1, "set"), {"optim.lrr": 1}), "cells[1] (arch=b, model=I): "),
    (_set(("cells", 0, "seeds"), [-1]), "cells[0].seeds[0]: expected greater than or equal to 0"),
    (_set(("cells", 1, "notes"), "{optim.lrr}"), "cells[1].notes[0]: 'optim.lrr' is not a key of the cell's config"),
    (_set(("tables", 0, "rows"), "archh"), "tables[0].rows: 'archh' is not a label of the cells"),
    (_set(("tables", 0, "format"), "x"), "tables[0].format: 'x' is not a number format"),
    (_set(("tables", 0, "rows"), "model"), "tables[0].cols: the same label as its rows (model)"),
    (
        _both(_set(("tables", 0, "rows"), "model"), _set(("tables", 0, "cols"), None)),
        "tables[0]: cells[0] and cells[1] fall in one place (model=I)",
    ),
    (_set(("tables", 0, "extra"), ["epoch"]), "tables[0].extra[0].value: 'epoch'; expected one of epochs, params"),
    (_set(("figures", 0, "kind"), "gird"), "figures[0].kind: 'gird'; expected one of 'grid', 'curves', 'runs'"),
    (_set(("figures", 0, "figure"), "../../x"), "figures[0].figure: '../../x' is not a path inside a run's plots/"),
    (_set(("settings",), ["optim.lrr"]), "settings[0].key: 'optim.lrr' is not a key of the cell's config"),
    (
        _set(("figures",), [{"kind": "explain", "title": "e", "method": "salience"}]),
        "figures[0].method: 'salience'; expected one of ",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0].split(";")[0] for _, m in BAD])
def test_a_bad_study_file_is_one_line_naming_the_file_and_key_and_writes_nothing(
    tmp_path: Path, capsys, change, message
) -> None:
    data = copy.deepcopy(GOOD)
    change(data)
    path = _write(tmp_path, data)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--short"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and message in err[0], err
    assert (
        not out.exists()
        and not Path(f"{out}-short").exists()
        and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    )


def test_a_study_file_that_is_not_a_mapping_or_not_yaml_is_one_line(tmp_path: Path, capsys) -> None:
    for text, message in (("- a\n- b\n", "expected a mapping (title, cells"), ("a: [\n", "not valid YAML at line 2")):
        path = tmp_path / "s.yaml"
        path.write_text(text)
        assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and message in err[0], err


def test_runs_resolve_in_the_order_overrides_apply_with_fixed_directories_and_short_apart(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    full = read_study(path, overrides=["trainer.eval_batch_size=64"], out=tmp_path / "out")
    assert full.out == tmp_path / "out" and full.label_keys == ("arch", "model")
    (a, b) = full.cells
    assert [r.seed for r in a.runs] == [0, 1] and [r.seed for r in b.runs] == [None]
    assert a.runs[1].overrides == ("trainer.batch_size=32", "trainer.eval_batch_size=64", "trainer.seed=1")
    assert b.runs[0].overrides == ("trainer.batch_size=32", "optim.lr=0.1", "trainer.eval_batch_size=64")
    assert a.runs[1].run_dir == tmp_path / "out" / "runs" / "arch=a__model=I__seed=1"
    assert b.runs[0].run_dir == tmp_path / "out" / "runs" / "arch=b__model=I"
    assert (a.runs[0].cfg.trainer.epochs, b.runs[0].cfg.optim.lr, b.notes) == (2, 0.1, ("lr 0.1",))
    short = read_study(path, short=True, out=tmp_path / "out")
    assert short.out == tmp_path / "out-short"
    assert short.cells[0].runs[0].overrides == (
        "trainer.batch_size=32",
        "trainer.epochs=1",
        "optim.lr=0.2",
        "trainer.seed=0",
    )
    assert (short.cells[0].runs[0].cfg.trainer.epochs, short.cells[0].runs[0].cfg.optim.lr) == (1, 0.2)
    assert short.common == ("trainer.batch_size=32", "trainer.epochs=1") and short.cells[0].overrides == (
        "optim.lr=0.2",
    )
    default = read_study(path)  # runs/studies/<stem>, relative to where the command runs
    assert default.out == Path("runs/studies/bad study")


def test_the_readme_example_study_file_reads_and_resolves(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = readme.split("## Reproduce a study", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my_study.yaml"  # the example lies in the checkout's root: its configs, made absolute
    path.write_text(example.replace("config: configs/", f"config: {ROOT}/configs/"), encoding="utf-8")
    study = read_study(path, short=True)
    assert [c.title for c in study.cells] == ["version=v1, data=VOC 2007", "version=v2, data=VOC 2007"]
    assert [len(c.runs) for c in study.cells] == [3, 3] and study.cells[0].runs[0].cfg.optim.lr == 0.01
    assert study.cells[0].notes == ("lr 0.01",) and study.cells[0].reference == {"val/map": 0.5852}
    assert [f.kind for f in study.spec.figures] == ["curves", "grid", "runs", "tag_logs", "explain"]
