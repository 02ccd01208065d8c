"""What a search searches: the base config, the space (space.py), its sampler, the metric it optimises, the scaling
variants and grid cells that fit, all resolved and validated once by `prepare` before any trial; and the check of a
trial's candidate on the meta device (its config, its model, the constraints) that prunes it before training."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionbench.config import RunConfig, config_from_raw, read_config_file
from visionbench.errors import UserError
from visionbench.search import scaling as scaling_
from visionbench.search.space import (
    SCALING_PARAM,
    Constraints,
    Space,
    check_keys,
    grid_cells,
    override_text,
    read_space,
)

DEFAULT_TRIALS = 20


@dataclasses.dataclass(frozen=True)
class Base:
    """What every trial's config starts from: the base config file's mapping and the --set overrides."""

    path: Path
    raw: dict[str, Any]
    overrides: tuple[str, ...]

    def config(self, sets: Sequence[str] = (), run: bool = True) -> RunConfig:
        """The base config plus a trial's `key=value` overrides, validated; `run`: named after the config file, as
        a run's config is (a probe of a grid cell or a scaling variant only validates)."""
        return config_from_raw(
            self.raw, [*self.overrides, *sets], str(self.path), experiment=self.path.stem if run else None
        )


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Everything a worker needs, resolved and validated once by `prepare` (picklable for worker processes)."""

    base: Base
    space: Space
    sampler: str
    trials: int  # random/tpe: trials to run; grid: its cells
    storage_url: str
    study_name: str
    study_dir: Path
    metric: str
    direction: str  # maximize | minimize
    variants: dict[float, tuple[str, ...]]  # scaling: phi -> overrides, only those that fit
    cells: tuple[dict[str, Any], ...]  # grid cells (empty for random/tpe)
    base_config: str  # the base config's YAML, for the study's record


# --- preparing ----------------------------------------------------------------------------------------------------


def prepare(
    config_path: Path,
    space_path: Path,
    overrides: list[str] = (),
    sampler: str | None = None,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    log=print,
) -> SearchSpec:
    """Read and check the config and the space: keys, bounds, the scaling variants and the grid, before any trial.

    Raises:
        UserError: a space key the config does not have, bad bounds, a grid cell the config refuses, no variant
            of the scaling that fits, a metric the runs will not have.
    """
    from visionbench.config import dump_config

    raw = read_config_file(config_path)
    space = read_space(space_path)
    base = Base(config_path, raw, tuple(overrides))
    cfg = base.config()
    check_keys(space, raw, list(overrides), space_path)
    sampler = sampler or space.sampler
    infos: dict[str, Any] = {}
    info = data_info(cfg, infos)
    metric, direction = _objective(cfg, info, space, config_path, space_path)
    variants = _fitting_variants(space, space_path, base, cfg, info, infos, log) if space.scaling is not None else {}
    cells = _grid(space, space_path, variants, trials, base) if sampler == "grid" else []
    name = study_name or space_path.stem.removesuffix(".space")
    study_dir = Path(cfg.trainer.out_dir) / (cfg.trainer.experiment or config_path.stem) / name
    return SearchSpec(
        base=base,
        space=space,
        sampler=sampler,
        trials=len(cells) if sampler == "grid" else trials or space.trials or DEFAULT_TRIALS,
        storage_url=storage or f"sqlite:///{(study_dir / 'study.db').resolve()}",
        study_name=name,
        study_dir=study_dir,
        metric=metric,
        direction=direction,
        variants=variants,
        cells=tuple(cells),
        base_config=dump_config(cfg),
    )


def _objective(cfg: RunConfig, info, space: Space, config_path: Path, space_path: Path) -> tuple[str, str]:
    """(metric, direction) the study optimises: a validation metric of the config's task, never a test one."""
    from visionbench.tasks import build_task

    task = build_task(cfg.task, info)
    if cfg.data.val_fraction <= 0:
        raise UserError(
            f"{config_path}: data.val_fraction is 0; a search selects on a validation split (never on test): "
            "set data.val_fraction > 0"
        )
    metric = space.metric or f"val/{task.main_metric}"
    if not metric.startswith("val/"):
        raise UserError(f"{space_path}: metric {metric!r}: expected a validation metric, val/<name>")
    return metric, "maximize" if task.mode == "max" else "minimize"


def _fitting_variants(
    space: Space, space_path: Path, base: Base, cfg: RunConfig, info, infos: dict[str, Any], log
) -> dict[float, tuple[str, ...]]:
    """The scaling's variants that fit the constraints, phi -> overrides; each variant is logged, fitting or not."""
    if cfg.model.name != "resnet_cfg":
        raise UserError(f"{space_path}: scaling: applies to model resnet_cfg, the config has {cfg.model.name}")
    side = input_size(cfg, info)[1]

    def measure_variant(v: scaling_.Variant) -> tuple[int, int]:
        variant = base.config(v.overrides(), run=False)
        return measure(variant, data_info(variant, infos))

    limits = space.constraints
    found = scaling_.variants(space.scaling, side, measure_variant, limits.max_params, limits.max_flops)
    for v in found:
        size = f"{v.image_size} px" if v.image_size else f"{side} px"
        mark = "fits" if v.fits else f"does not fit: {v.reason}"
        log(
            f"scaling phi={v.phi:g}: blocks {list(v.blocks)} channels {list(v.channels)} {size}, "
            f"{v.params:,} params, {v.flops:,} FLOPs: {mark}"
        )
    variants = {v.phi: tuple(v.overrides()) for v in found if v.fits}
    if not variants:
        raise UserError(f"{space_path}: scaling: no phi in {space.scaling.phi} fits the constraints")
    return variants


def _grid(
    space: Space, space_path: Path, variants: dict[float, tuple[str, ...]], trials: int | None, base: Base
) -> list[dict[str, Any]]:
    """The grid's cells (the first `trials` of them), each validated as a config: a refused one is an error now,
    not a failed trial later."""
    try:
        cells = grid_cells(space, list(variants))
    except UserError as e:
        raise UserError(f"{space_path}: {e}") from None
    if trials is not None:
        cells = cells[:trials]
    for cell in cells:
        sets = trial_overrides(space, variants, cell)
        try:
            base.config(sets, run=False)
        except UserError as e:
            raise UserError(f"{space_path}: grid cell {' '.join(sets)}: {e}") from None
    return cells


# --- a trial's candidate --------------------------------------------------------------------------------------------


def data_info(cfg: RunConfig, cache: dict[str, Any]):
    """The DatasetInfo of a config's dataset (classes, input size), loaded once per dataset: augmentation and
    `data.image_size` do not change it here (`input_size` applies the size)."""
    from visionbench.config import AugmentConfig
    from visionbench.data import build_datasets

    key = cfg.data.model_dump_json(exclude={"augment", "image_size"})
    if key not in cache:
        cache[key] = build_datasets(cfg.data.model_copy(update={"image_size": None, "augment": AugmentConfig()})).info
    return cache[key]


def input_size(cfg: RunConfig, info) -> tuple[int, int, int]:
    C, H, W = info.input_size
    side = cfg.data.image_size
    return (C, side, side) if side else (C, H, W)


def measure(cfg: RunConfig, info) -> tuple[int, int]:
    """(params, FLOPs per image) of a config's model, on the meta device: no weights allocated, nothing trained."""
    from visionbench.engine.assembly import create_run_model
    from visionbench.models import inspect_on_meta

    size = input_size(cfg, info)
    shaped = dataclasses.replace(info, input_size=size)
    return inspect_on_meta(lambda: create_run_model(cfg, shaped), size, cfg.model.name)


def suggest(spec: SearchSpec, trial) -> dict[str, Any]:
    """A trial's parameter values, drawn from the space by the study's sampler (a claimed grid cell has them)."""
    values: dict[str, Any] = {}
    if spec.variants:
        values[SCALING_PARAM] = trial.suggest_categorical(SCALING_PARAM, list(spec.variants))
    for key, param in spec.space.params.items():
        dist = param.distribution()
        if param.kind == "choice":
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif param.kind == "int":
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def trial_overrides(space: Space, variants: dict[float, tuple[str, ...]], values: dict[str, Any]) -> list[str]:
    """The `key=value` overrides of a trial from its optuna parameter values (choices stored as YAML text)."""
    out: list[str] = []
    if SCALING_PARAM in values:
        out += variants[values[SCALING_PARAM]]
    for key, param in space.params.items():
        out.append(f"{key}={override_text(param.from_stored(values[key]))}")
    return out


class Infeasible(Exception):
    """A candidate pruned before training: `by` what (config, model, constraints) and why."""

    def __init__(self, by: str, reason: str):
        super().__init__(reason)
        self.by, self.reason = by, reason


def candidate(spec: SearchSpec, sets: list[str], infos: dict[str, Any]) -> tuple[RunConfig, int, int]:
    """(config, params, FLOPs per image) of a trial's overrides, measured on the meta device.

    Raises:
        Infeasible: the config refuses the overrides, or the model cannot be built from it.
    """
    try:
        cfg = spec.base.config(sets)
    except UserError as e:
        raise Infeasible("config", str(e)) from None
    try:
        params, flops = measure(cfg, data_info(cfg, infos))
    except UserError as e:
        raise Infeasible("model", str(e)) from None
    return cfg, params, flops


def check_constraints(limits: Constraints, params: int, flops: int) -> None:
    """Raises: Infeasible: a model over `max_params` or `max_flops`."""
    if limits.max_params is not None and params > limits.max_params:
        raise Infeasible("constraints", f"{params:,} parameters > max_params {int(limits.max_params):,}")
    if limits.max_flops is not None and flops > limits.max_flops:
        raise Infeasible("constraints", f"{flops:,} FLOPs > max_flops {int(limits.max_flops):,}")
