"""A study file: the cells of a study, each a config with overrides, labels, notes and seeds, and the layout of the
study's README (its tables and figures). `visionbench study FILE` runs every cell with `compare`'s machinery
(engine/compare.py) and then writes `README.md` and `report.html` (report/study.py).

A study names its cells one by one instead of a product of axes: a study's table often fills only some of its
row x column combinations (an architecture tried on one data model only), and a cell may need settings of its own
(a ViT's patch size per image size). Labels place a cell in the tables and figures; notes are shown beside its
value ("pretrained on ImageNet", "patch 8x8"), filled from its resolved config so that they cannot disagree with
what ran.

Everything is read and checked here before anything runs or is written: the file's keys (one line naming the key
and the closest valid ones), every cell's config with all its overrides, the labels that tables and figures name,
duplicate labels, file names. The module sits beside config.py and imports nothing above it, so that both the
engine and the report can use it.

The format, by example (paths relative to the study file):

    title: Pascal VOC multi-label
    set: {trainer.eval_batch_size: 64}          # overrides of every cell
    short: {trainer.epochs: 1, data.subset: 32}  # what --short adds to every cell
    cells:
      - config: ../voc/resnet18_v1.yaml
        labels: {version: ResNet18 version 1}
        notes: [no augmentation]
        seeds: [0, 1, 2]                         # several runs, shown as mean ± std (n)
    tables:
      - title: Results
        rows: version
        columns: [{metric: train/loss, header: Loss (Train)}, val/loss]
    figures:
      - {kind: curves, title: Curves, metrics: [val/loss]}
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from visionbench import layout
from visionbench.config import RunConfig, _short, config_from_raw, override_text, read_config_file, read_yaml_file
from visionbench.errors import UserError

MAX_RUNS = 10_000  # runs of one study (cells x seeds): as compare's matrix
DEFAULT_OUT = "runs/studies"  # a study's folder: <DEFAULT_OUT>/<file stem>, unless `out:` or --out says otherwise
SHORT_SUFFIX = "-short"  # --short writes beside the full study's folder, never into it
DEFAULT_FORMAT = ".4f"
EXTRAS = ("epochs", "params", "flops", "time", "image_size")  # per-row columns a table may add, besides config keys
# in a `runs` figure: every grid `visionbench explain` wrote into the run, every figure of `visionbench analyze`
EXPLAIN_FIGURES, ANALYSIS_FIGURES = "explain", "analysis"
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_RUN_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")  # a path inside plots/
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _shorthand(key: str) -> BeforeValidator:
    """A plain string where a mapping with one required key is expected: `- val/ap` for `- {metric: val/ap}`."""
    return BeforeValidator(lambda value: {key: value} if isinstance(value, str) else value)


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Texts = Annotated[list[str], BeforeValidator(_listed)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Note(_Spec):
    # `{dotted.key}` in the text is replaced by that key's value in the cell's resolved config
    text: str = Field(min_length=1)
    when: str | None = None  # a dotted config key: the note only where its value is set (not null, false, 0, empty)


class CellSpec(_Spec):
    config: str = Field(min_length=1)  # relative to the study file
    labels: dict[str, str | int | float] = Field(min_length=1)
    set_: dict[str, Any] = Field(default_factory=dict, alias="set")  # dotted key: value
    notes: Annotated[list[Annotated[Note, _shorthand("text")]], BeforeValidator(_listed)] = []
    seeds: list[Seed] | None = Field(None, min_length=1)  # default: the study's `seeds`, else the config's seed
    short: dict[str, Any] = {}  # what --short adds to this cell, after the study's `short`
    reference: dict[str, float] = {}  # the seed study's own figures of this cell (metric: value), never ours


class Column(_Spec):
    metric: str = Field(min_length=1)  # a column of metrics.csv: train/loss, val/map, test/mae ...
    header: str | None = None
    format: str | None = None  # Python's format spec: .4f, .2%; default the table's
    at: Literal["final", "best"] = "final"  # the last epoch's value, or the value at the best validation epoch


class Extra(_Spec):
    # epochs (planned), params, flops, time (wall clock per finished run), or a dotted config key (optim.lr)
    value: str = Field(min_length=1)
    header: str | None = None


class TableSpec(_Spec):
    title: str
    rows: str  # a label
    cols: str | None = None  # a label; without it, one row per value of `rows`
    row_header: str | None = None
    columns: list[Annotated[Column, _shorthand("metric")]] = Field(min_length=1)
    format: str = DEFAULT_FORMAT
    extra: list[Annotated[Extra, _shorthand("value")]] = []
    notes: Texts = []
    reference: bool = False  # also the table of the cells' `reference` values


class GridFigure(_Spec):
    kind: Literal["grid"]
    title: str
    figure: str  # a figure of each run: its path in the run's plots/ without .png (pred_vs_true, curves ...)
    rows: str
    cols: str


class Curve(_Spec):
    metric: str = Field(min_length=1)
    file: str | None = None  # its files' name in figures/ (no suffix); default the metric with `/` as `_`
    title: str | None = None


class CurvesFigure(_Spec):
    kind: Literal["curves"]
    title: str
    metrics: list[Annotated[Curve, _shorthand("metric")]] = Field(min_length=1)
    lines: str | None = None  # the label that names each line; default all labels


class RunsFigure(_Spec):
    kind: Literal["runs"]
    title: str
    figures: list[str] = Field(min_length=1)  # paths in each run's plots/ without suffix, `explain` or `analysis`


class TagLogsFigure(_Spec):
    """Each run's metrics as TensorBoard-export CSV logs and SVG curves, one per metric, in its plots/tag_logs/."""

    kind: Literal["tag_logs"]
    title: str
    metrics: list[Annotated[Curve, _shorthand("metric")]] = Field(min_length=1)
    run_name: str | None = None  # the run's name in the files (`run-<name>-tag-<file>.csv`); default its folder's


class ExplainFigure(_Spec):
    """Attribution maps of each finished run (`visionbench explain`'s grids of correct and wrong predictions), which
    the study draws for a run that has none of this method and split yet."""

    kind: Literal["explain"]
    title: str
    method: str = Field(min_length=1)  # saliency, gradcam, deeplift, attention_rollout ... (`visionbench explain`)
    n: int = Field(8, ge=1, le=64)  # images per group
    split: Literal["train", "val", "test"] = "test"


Figure = Annotated[GridFigure | CurvesFigure | RunsFigure | TagLogsFigure | ExplainFigure, Field(discriminator="kind")]


class Setting(_Spec):
    key: str
    header: str | None = None


class StudyFile(_Spec):
    title: str = Field(min_length=1)
    description: Texts = []
    out: str | None = None  # the study's folder; default runs/studies/<file stem>
    set_: dict[str, Any] = Field(default_factory=dict, alias="set")
    seeds: list[Seed] | None = Field(None, min_length=1)
    short: dict[str, Any] = {}
    settings: list[Annotated[Setting, _shorthand("key")]] | None = None  # default: the keys that differ
    cells: list[CellSpec] = Field(min_length=1)
    tables: list[TableSpec] = []
    figures: list[Figure] = []


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One training run of a cell: its seed (None: the config's own), every override on top of the config file,
    the resolved config and its fixed run directory."""

    seed: int | None
    overrides: tuple[str, ...]
    cfg: RunConfig
    run_dir: Path


@dataclasses.dataclass(frozen=True)
class StudyCell:
    """A cell with its labels as text, its notes filled from its config, and its runs (one per seed)."""

    index: int
    labels: dict[str, str]
    notes: tuple[str, ...]
    config: Path
    overrides: tuple[str, ...]  # its own: its `set`, then (--short) its `short`
    reference: dict[str, float]
    runs: tuple[StudyRun, ...]

    @property
    def title(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.labels.items())


@dataclasses.dataclass(frozen=True)
class Study:
    """A study file read, checked and resolved: where it writes and every run of every cell. Overrides apply in
    this order: the study's `set`, the cell's `set`, then with --short the study's `short` and the cell's, then
    --set, then the run's seed."""

    path: Path
    spec: StudyFile
    out: Path
    short: bool
    overrides: tuple[str, ...]  # --set
    common: tuple[str, ...]  # every cell's: the study's `set`, then (--short) its `short`
    label_keys: tuple[str, ...]
    cells: tuple[StudyCell, ...]

    @property
    def runs(self) -> list[tuple[StudyCell, StudyRun]]:
        return [(cell, run) for cell in self.cells for run in cell.runs]


def read_study(
    path: str | Path, short: bool = False, overrides: list[str] = (), out: str | Path | None = None
) -> Study:
    """Read a study file and resolve every run of every cell.

    Args:
        path: the study file.
        short: apply the study's `short` overrides (and each cell's), and write beside the full study's folder.
        overrides: `key=value` of every cell, after the study's own (the command's --set).
        out: the study's folder in place of the file's `out` (or runs/studies/<stem>).

    Raises:
        UserError: one line naming the file and the key: an unknown or missing key, a value of the wrong type, a
            config that does not load with its overrides, duplicate labels, a label a table or figure names that
            the cells lack, a bad number format or file name, an output folder that is a file or inside a run.
    """
    path = Path(path)
    raw = read_yaml_file(path, "study file")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping (title, cells, tables, figures ...), got {type(raw).__name__}")
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()  # an unknown key first: a misspelt key also makes the key it meant missing
        raise UserError(f"{path}: {_describe(min(errors, key=lambda err: err['type'] != 'extra_forbidden'))}") from None
    keys = _label_keys(path, spec)
    total = sum(len(cell.seeds or spec.seeds or [None]) for cell in spec.cells)
    if total > MAX_RUNS:
        raise UserError(f"{path}: cells: {total:,} runs (cells x seeds), more than the {MAX_RUNS:,} a study may have")
    folder = _out_dir(path, spec, out, short)
    cells = tuple(_cell(path, spec, i, keys, folder, short, list(overrides)) for i in range(len(spec.cells)))
    _check_folders(path, cells)
    _check_layout(path, spec, keys, cells)
    common = _mapping_overrides(spec.set_) + (_mapping_overrides(spec.short) if short else [])
    return Study(path, spec, folder, short, tuple(overrides), tuple(common), keys, cells)


def _label_keys(path: Path, spec: StudyFile) -> tuple[str, ...]:
    """The label keys every cell has (in the first cell's order); no two cells with the same labels."""
    keys = tuple(spec.cells[0].labels)
    seen: dict[tuple[str, ...], int] = {}
    for i, cell in enumerate(spec.cells):
        if set(cell.labels) != set(keys):
            raise UserError(
                f"{path}: cells[{i}].labels: keys {', '.join(cell.labels)} where cells[0] has {', '.join(keys)}; "
                "every cell takes the same labels"
            )
        values = tuple(_text(cell.labels[k]) for k in keys)
        if any(not v.strip() for v in values):
            raise UserError(f"{path}: cells[{i}].labels: an empty label")
        if values in seen:
            raise UserError(
                f"{path}: cells[{i}].labels: {_labels_text(keys, values)} again (as cells[{seen[values]}]); "
                "each cell needs labels of its own"
            )
        seen[values] = i
    return keys


def _labels_text(keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))


def _out_dir(path: Path, spec: StudyFile, out: str | Path | None, short: bool) -> Path:
    where = f"--out {out}" if out is not None else f"{path}: out" if spec.out else "the study's folder"
    folder = Path(out if out is not None else spec.out or Path(DEFAULT_OUT) / path.stem)
    if folder.name in ("", ".", ".."):
        folder = folder.absolute().resolve()
    if short:
        folder = folder.with_name(folder.name + SHORT_SUFFIX)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{where}: {folder} exists and is not a folder")
    run = folder if layout.is_run_dir(folder) else layout.enclosing_run_dir(folder)
    if run is not None:
        raise UserError(f"{where}: {folder} is inside the run directory {run}; choose a folder of its own")
    return folder


def _mapping_overrides(values: dict[str, Any]) -> list[str]:
    return [override_text(key, value) for key, value in values.items()]


def _cell(
    path: Path, spec: StudyFile, i: int, keys: tuple[str, ...], folder: Path, short: bool, overrides: list[str]
) -> StudyCell:
    """Cell `i` resolved: its config loaded with every override, one run per seed, its notes filled in."""
    cell = spec.cells[i]
    labels = {k: _text(cell.labels[k]) for k in keys}
    where = f"{path}: cells[{i}] ({_labels_text(keys, tuple(labels.values()))})"
    config = Path(cell.config) if Path(cell.config).is_absolute() else path.parent / cell.config
    try:
        raw = read_config_file(config)
    except UserError as e:
        raise UserError(f"{path}: cells[{i}].config: {e}") from None
    own = _mapping_overrides(cell.set_) + (_mapping_overrides(cell.short) if short else [])
    sets = _mapping_overrides(spec.set_) + _mapping_overrides(cell.set_)
    if short:
        sets += _mapping_overrides(spec.short) + _mapping_overrides(cell.short)
    sets += overrides
    parts = [f"{k}={v}" for k, v in labels.items()]
    runs = []
    for seed in cell.seeds or spec.seeds or [None]:
        run_sets = sets + ([f"trainer.seed={seed}"] if seed is not None else [])
        try:
            cfg = config_from_raw(raw, run_sets, str(config), experiment=path.stem)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        name = layout.cell_dir_name(parts + ([f"seed={seed}"] if seed is not None else []))
        runs.append(StudyRun(seed, tuple(run_sets), cfg, folder / layout.STUDY_RUNS / name))
    notes = _notes(f"{path}: cells[{i}].notes", cell.notes, runs[0].cfg)
    return StudyCell(i, labels, notes, config, tuple(own), dict(cell.reference), tuple(runs))


def _text(value: Any) -> str:
    """A label or a config value as text: YAML's spelling of null and booleans, JSON's of lists and mappings."""
    return json.dumps(value) if value is None or isinstance(value, (bool, list, dict)) else str(value)


def config_value(values: dict[str, Any], key: str, where: str) -> Any:
    """The value of a dotted key in a config's dump.

    Raises:
        UserError: `where` and the key, which the config does not have, with the closest keys it has.
    """
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            close = difflib.get_close_matches(key, list(_dotted_keys(values)), n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UserError(f"{where}: {_short(key)} is not a key of the cell's config{hint}")
        node = node[part]
    return node


def _dotted_keys(node: dict[str, Any], prefix: str = ""):
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def _notes(where: str, notes: list[Note], cfg: RunConfig) -> tuple[str, ...]:
    """The cell's notes as shown: `{dotted.key}` replaced by the config's value, a note whose `when` key is unset
    left out."""
    values = cfg.model_dump(mode="python")
    shown = []
    for j, note in enumerate(notes):
        if note.when is not None and not config_value(values, note.when, f"{where}[{j}].when"):
            continue
        fill = lambda m, j=j: _text(config_value(values, m.group(1), f"{where}[{j}]"))  # noqa: E731
        shown.append(_PLACEHOLDER.sub(fill, note.text))
    return tuple(shown)


def _check_folders(path: Path, cells: tuple[StudyCell, ...]) -> None:
    """Labels that differ only in characters a file name cannot hold would share a run directory."""
    owner: dict[Path, int] = {}
    for cell in cells:
        for run in cell.runs:
            if run.run_dir in owner:
                raise UserError(
                    f"{path}: cells[{cell.index}].labels: its run directory {run.run_dir.name} is also "
                    f"cells[{owner[run.run_dir]}]'s; make the labels differ in letters or numbers"
                )
            owner[run.run_dir] = cell.index


def _check_label(path: Path, where: str, key: str | None, keys: tuple[str, ...]) -> None:
    if key is not None and key not in keys:
        raise UserError(f"{path}: {where}: {_short(key)} is not a label of the cells (their labels: {', '.join(keys)})")


def _check_format(path: Path, where: str, spec: str | None) -> None:
    try:
        format(0.5, spec or "")
    except (ValueError, TypeError):
        raise UserError(f"{path}: {where}: {_short(spec)} is not a number format (e.g. .4f, .2%, .3g)") from None


def _check_file_name(path: Path, where: str, name: str, pattern: re.Pattern = _FILE_NAME) -> None:
    if not pattern.fullmatch(name) or len(name) > 200:
        what = "file name (letters, numbers, _ . + -)" if pattern is _FILE_NAME else "path inside a run's plots/"
        raise UserError(f"{path}: {where}: {_short(name)} is not a {what}")


def _check_layout(path: Path, spec: StudyFile, keys: tuple[str, ...], cells: tuple[StudyCell, ...]) -> None:
    """The labels, formats, file names and settings that the tables and figures name."""
    for i, table in enumerate(spec.tables):
        _check_label(path, f"tables[{i}].rows", table.rows, keys)
        _check_label(path, f"tables[{i}].cols", table.cols, keys)
        if table.cols == table.rows:
            raise UserError(f"{path}: tables[{i}].cols: the same label as its rows ({table.rows})")
        _check_placed(path, f"tables[{i}]", [table.rows, table.cols], cells)
        _check_format(path, f"tables[{i}].format", table.format)
        for j, column in enumerate(table.columns):
            _check_format(path, f"tables[{i}].columns[{j}].format", column.format)
        for j, extra in enumerate(table.extra):
            if "." in extra.value:
                _check_setting(path, f"tables[{i}].extra[{j}].value", extra.value, cells)
            elif extra.value not in EXTRAS:
                raise UserError(
                    f"{path}: tables[{i}].extra[{j}].value: {_short(extra.value)}; expected one of "
                    f"{', '.join(EXTRAS)} or a dotted config key"
                )
    files: set[str] = set()
    for i, figure in enumerate(spec.figures):
        where = f"figures[{i}]"
        if isinstance(figure, GridFigure):
            _check_label(path, f"{where}.rows", figure.rows, keys)
            _check_label(path, f"{where}.cols", figure.cols, keys)
            _check_placed(path, where, [figure.rows, figure.cols], cells)
            _check_file_name(path, f"{where}.figure", figure.figure, _RUN_FILE)
        elif isinstance(figure, CurvesFigure):
            _check_label(path, f"{where}.lines", figure.lines, keys)
            for j, curve in enumerate(figure.metrics):
                name = curve_file(curve)
                _check_file_name(path, f"{where}.metrics[{j}].file", name)
                if name in files:
                    raise UserError(f"{path}: {where}.metrics[{j}].file: {name} is another curve's file too")
                files.add(name)
        elif isinstance(figure, TagLogsFigure):
            names = [curve_file(curve) for curve in figure.metrics]
            for j, name in enumerate(names):
                _check_file_name(path, f"{where}.metrics[{j}].file", name)
                if name in names[:j]:
                    raise UserError(f"{path}: {where}.metrics[{j}].file: {name} is another metric's file too")
            if figure.run_name is not None:
                _check_file_name(path, f"{where}.run_name", figure.run_name)
        elif isinstance(figure, ExplainFigure):
            _check_file_name(path, f"{where}.method", figure.method)
        else:
            for j, name in enumerate(figure.figures):
                _check_file_name(path, f"{where}.figures[{j}]", name, _RUN_FILE)
    for i, setting in enumerate(spec.settings or []):
        _check_setting(path, f"settings[{i}].key", setting.key, cells)


def _check_placed(path: Path, where: str, keys: list[str | None], cells: tuple[StudyCell, ...]) -> None:
    """Two cells with the same values of a table's (or grid's) row and column labels would share its cell."""
    keys = [k for k in keys if k is not None]
    placed: dict[tuple[str, ...], int] = {}
    for cell in cells:
        at = tuple(cell.labels[k] for k in keys)
        if at in placed:
            raise UserError(
                f"{path}: {where}: cells[{placed[at]}] and cells[{cell.index}] fall in one place "
                f"({_labels_text(tuple(keys), at)}); lay the table out by labels that tell them apart"
            )
        placed[at] = cell.index


def _check_setting(path: Path, where: str, key: str, cells: tuple[StudyCell, ...]) -> None:
    """A config key that some cell's config has (a model's kwargs differ between cells)."""
    dumps = [cell.runs[0].cfg.model_dump(mode="python") for cell in cells]
    for values in dumps:
        try:
            config_value(values, key, "")
            return
        except UserError:
            continue
    config_value(dumps[0], key, f"{path}: {where}")  # raises, naming the first cell's closest keys


def curve_file(curve: Curve) -> str:
    """The name (without suffix) of a curve's files in the study's figures/."""
    return curve.file or curve.metric.replace("/", "_")


def _describe(err: dict[str, Any]) -> str:
    """A pydantic error as `key.path: what was expected`, with the closest valid keys for an unknown one."""
    where, models = _where(err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        valid = [k for model in models for k in _fields(model)]
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.4)
        hint = f"closest valid keys: {', '.join(close)}" if close else f"valid keys here: {', '.join(valid)}"
        return f"unknown key {f'{where}.{key}' if where else key}; {hint}"
    if err["type"] == "missing":
        return f"{where}: missing, and required"
    if err["type"] == "union_tag_invalid":
        return f"{where}.kind: {_short(err['input'].get('kind'))}; expected one of {err['ctx']['expected_tags']}"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{where or '<top level>'}: {msg.replace('input should be', 'expected')}, got {_short(err.get('input'))}"


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A model's keys as a study file spells them (aliases), with their annotations."""
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


# The names pydantic gives the members of a union in an error's location (`str`, `function-after[...]`)
_UNION_MEMBER = re.compile(r"str|int|float|bool|none|[\w-]+\[.*\]")


def _where(loc: tuple) -> tuple[str, list[type[BaseModel]]]:
    """An error's location as `cells[3].labels.arch` (the names pydantic adds for a union's members left out, and an
    unknown key itself), and the models at its end: where an unknown key's valid neighbours are."""
    text, models = "", [StudyFile]
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        owner = next((m for m in models if part in _fields(m)), None)
        tagged = [m for m in models if part in typing.get_args(_fields(m).get("kind"))]
        if owner is not None:
            text += f".{part}" if text else part
            models = _models_in(_fields(owner)[part])
        elif tagged:  # a figure's `kind`
            models = tagged
        elif not models and not _UNION_MEMBER.fullmatch(part):  # a key of a mapping (labels, set)
            text += f".{part}"
    return text, models


def relative(path: Path, start: Path) -> str:
    """`path` relative to `start` where it can be written so (os.path.relpath), else as it is."""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()
