"""The search space file: which dotted config keys a search varies, how, and under which constraints.

A space is YAML:

```yaml
sampler: tpe                # grid | random | tpe (`--sampler` overrides)
trials: 20                  # trials to run for random and tpe (`--trials` overrides); a grid runs its cells
constraints: {max_params: 5.0e6, max_flops: null}    # checked on the meta device before any training
pruner: {name: median, startup_trials: 2, warmup_epochs: 1}  # median | successive_halving | none
scaling: {...}              # optional: EfficientNet-style compound scaling of resnet_cfg (scaling.py)
params:
  optim.lr: {log_float: [1.0e-3, 0.3]}
  optim.weight_decay: {float: [0.0, 1.0e-3], grid_points: 3}
  trainer.batch_size: {int: [64, 256], step: 64}
  model.kwargs.conv_kernels: {choice: [3, 5]}
```

A trial is the base config plus one `key=value` override per parameter (the same path as `--set`), so whatever a
config can say a space can vary. Choices may be lists or mappings (`model.kwargs.blocks: {choice: [[2, 2], [1, 1,
1]]}`): optuna's categorical distribution holds only scalars, so each choice is stored as its YAML text.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from visionbench.config import _describe, _key_text, _short, config_from_raw, read_yaml_file, safe_load
from visionbench.errors import UserError
from visionbench.utils.bounded import check_cells

SAMPLERS = ("grid", "random", "tpe")
SCALING_PARAM = "scaling.phi"  # the optuna parameter of the scaling's coefficient
# Every grid cell is validated as a config before anything runs, then trained: 10,000 cells of one-minute runs are
# a week of compute. More is a typo (`int: [0, 1e9]` without a step), refused before the values are built.
MAX_GRID_CELLS = 10_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_KINDS = {"choice": "choice", "int": "int_", "float": "float_", "log_float": "log_float"}  # file key -> attribute


class Param(_Section):
    """One distribution: exactly one of `choice`, `int`, `float`, `log_float`."""

    choice: list[Any] | None = None
    # `int` and `float` in the file; the attributes may not shadow the builtins the annotations use
    int_: list[int] | None = Field(None, alias="int", min_length=2, max_length=2)  # [low, high], both included
    float_: list[float] | None = Field(None, alias="float", min_length=2, max_length=2)  # [low, high]
    log_float: list[float] | None = Field(None, min_length=2, max_length=2)  # [low, high], low > 0
    step: float | None = Field(None, gt=0)  # int and float: the grid of values (int default 1)
    log: bool = False  # int: sample on a log scale
    grid_points: int | None = Field(None, ge=2)  # float and log_float under the grid sampler: evenly spaced values

    @model_validator(mode="after")
    def _one_kind_and_bounds(self) -> Param:
        given = [k for k, attr in _KINDS.items() if getattr(self, attr) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of choice, int, float, log_float, got {given or 'none'}")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice: expected a non-empty list of values")
            texts = [_text(v) for v in self.choice]
            if len(set(texts)) != len(texts):
                seen: set[Any] = set()
                repeated = next(v for v, t in zip(self.choice, texts, strict=True) if t in seen or seen.add(t))
                raise ValueError(f"choice: the value {_short(repeated)} is given more than once")
            return self
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"{kind}: expected [low, high] with low < high, got [{low}, {high}]")
        if kind == "log_float" and low <= 0:
            raise ValueError(f"log_float: expected low > 0 (a log scale), got {low}")
        if kind == "int" and self.log and low < 1:
            raise ValueError(f"int with log: expected low >= 1, got {low}")
        if self.step is not None and kind == "int" and self.step != round(self.step):
            raise ValueError(f"int: expected a whole step, got {self.step}")
        if self.step is not None and kind == "log_float":
            raise ValueError("log_float: step is not supported on a log scale (use grid_points for the grid)")
        if self.step is not None and self.step > high - low:
            raise ValueError(f"{kind}: step {self.step} is larger than high - low ({high - low})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, attr in _KINDS.items() if getattr(self, attr) is not None)

    @property
    def bounds(self) -> list[Any]:
        return getattr(self, _KINDS[self.kind])

    def distribution(self):
        """The optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution([_text(v) for v in self.choice])
        if self.kind == "int":
            return IntDistribution(self.int_[0], self.int_[1], log=self.log, step=int(self.step or 1))
        if self.kind == "float":
            return FloatDistribution(self.float_[0], self.float_[1], step=self.step)
        return FloatDistribution(self.log_float[0], self.log_float[1], log=True)

    def grid_size(self, key: str) -> int:
        """How many values `grid` gives, counted without building them."""
        if self.kind == "choice":
            return len(self.choice)
        if self.kind == "int":
            low, high = self.int_
            return (high - low) // int(self.step or 1) + 1
        if self.kind == "float" and self.step is not None and self.grid_points is None:
            low, high = self.float_
            steps = (high - low) / self.step
            if not math.isfinite(steps):
                raise UserError(f"params.{key}: step {self.step} divides [{low}, {high}] into uncountably many values")
            return int(math.floor(steps + 1e-9)) + 1
        if self.grid_points is None:
            raise UserError(f"params.{key}: a {self.kind} needs grid_points (or use choice) under the grid sampler")
        return self.grid_points

    def grid(self, key: str) -> list[Any]:
        """The values a grid search visits (optuna's stored form: choices as YAML text)."""
        if self.kind == "choice":
            return [_text(v) for v in self.choice]
        if self.kind == "int":
            low, high = self.int_
            return list(range(low, high + 1, int(self.step or 1)))
        if self.kind == "float" and self.step is not None and self.grid_points is None:
            low, high = self.float_
            n = int(math.floor((high - low) / self.step + 1e-9)) + 1
            return [round(low + i * self.step, 12) for i in range(n)]
        if self.grid_points is None:
            raise UserError(f"params.{key}: a {self.kind} needs grid_points (or use choice) under the grid sampler")
        low, high = self.bounds
        n = self.grid_points
        if self.kind == "log_float":
            return [float(math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1))) for i in range(n)]
        return [float(low + i * (high - low) / (n - 1)) for i in range(n)]

    def from_stored(self, stored: Any) -> Any:
        """The value that optuna's stored value stands for (a choice is stored as its YAML text)."""
        if self.kind == "choice":
            return next(v for v in self.choice if _text(v) == stored)
        return stored

    def low_value(self) -> Any:
        """A value of the distribution (its first choice or its low end): validates the key against the config."""
        return self.choice[0] if self.kind == "choice" else self.bounds[0]


class Constraints(_Section):
    max_params: float | None = Field(None, gt=0)  # parameters of the model, counted on the meta device
    max_flops: float | None = Field(None, gt=0)  # forward FLOPs per image (torch's FlopCounterMode), meta device


class Pruner(_Section):
    name: Literal["median", "successive_halving", "none"] = "none"
    startup_trials: int = Field(2, ge=0)  # median: trials completed before any pruning
    warmup_epochs: int = Field(1, ge=0)  # median: epochs of a trial before it can be pruned
    min_epochs: int = Field(1, ge=1)  # successive halving: the first rung
    reduction_factor: int = Field(3, ge=2)  # successive halving: keep 1/reduction_factor at each rung


class Scaling(_Section):
    """EfficientNet's compound scaling (Tan & Le, 2019, https://arxiv.org/abs/1905.11946) of resnet_cfg: at
    coefficient phi, blocks × alpha^phi (depth), channels × beta^phi (width), image side × gamma^phi (resolution).
    The variants that fit the constraints become the choices of the parameter `scaling.phi`."""

    blocks: list[int] = Field(min_length=1)  # B_i of phi = 0
    channels: list[int] = Field(min_length=1)  # C_i of phi = 0
    alpha: float = Field(1.2, ge=1.0)  # depth base (the EfficientNet paper's grid-searched 1.2, 1.1, 1.15)
    beta: float = Field(1.1, ge=1.0)  # width base
    gamma: float = Field(1.0, ge=1.0)  # resolution base; 1.0 keeps the dataset's size
    phi: list[float] = Field(min_length=1)  # the coefficients to enumerate
    channel_multiple: int = Field(8, ge=1)  # widths rounded to a multiple of this

    @model_validator(mode="after")
    def _same_stages(self) -> Scaling:
        if len(self.blocks) != len(self.channels):
            raise ValueError(f"blocks has {len(self.blocks)} stages, channels {len(self.channels)}")
        if min(self.blocks) < 1 or min(self.channels) < 1:
            raise ValueError("blocks and channels: expected positive entries")
        if len(set(self.phi)) != len(self.phi):
            raise ValueError(f"phi: values repeat in {self.phi}")
        return self


class Space(_Section):
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(None, ge=1)  # random and tpe: default 20; grid: all cells
    seed: int = 0  # of the sampler
    metric: str | None = None  # what the study optimises; default `val/<the task's main metric>`
    constraints: Constraints = Constraints()
    pruner: Pruner = Pruner()
    scaling: Scaling | None = None
    params: dict[str, Param] = {}
    heartbeat_seconds: int = Field(10, ge=1)  # a running trial's heartbeat in the storage
    grace_seconds: int = Field(30, ge=2)  # a trial silent this long is failed and retried (its worker died)
    max_retries: int = Field(2, ge=0)  # retries of a trial whose worker died

    @model_validator(mode="after")
    def _something_to_search(self) -> Space:
        if not self.params and self.scaling is None:
            raise ValueError("expected `params:` (dotted config keys) or `scaling:`, found neither")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"grace_seconds ({self.grace_seconds}) must exceed heartbeat_seconds ({self.heartbeat_seconds})"
            )
        return self

    def fingerprint(self) -> str:
        """What makes two studies the same search: the distributions, constraints, scaling and metric."""
        keep = self.model_dump(include={"params", "constraints", "scaling", "metric"}, mode="json")
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _text(value: Any) -> str | int | float | bool | None:
    """A choice as optuna stores it: scalars as they are, lists and mappings as one-line YAML."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def override_text(value: Any) -> str:
    """A value as the right-hand side of a `key=value` override (parsed back with YAML)."""
    if isinstance(value, str):
        return value if _round_trips(value) else json.dumps(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _round_trips(text: str) -> bool:
    try:
        return safe_load(text) == text
    except yaml.YAMLError:
        return False


def read_space(path: Path) -> Space:
    """Parse and validate a space file; a problem is one line naming the file and the key."""
    raw = read_yaml_file(path, "search space")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with `params:` (dotted config keys), got {type(raw).__name__}")
    try:
        return Space.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "value_error":
            where = ".".join(_key_text(str(p)) for p in err["loc"])
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
            return _raise(f"{path}: {where + ': ' if where else ''}{msg}")
        return _raise(f"{path}: {_describe(err)}")


def _raise(message: str):
    raise UserError(message)


def check_keys(space: Space, raw: dict[str, Any], overrides: list[str], source: Path) -> None:
    """Every parameter must be a key the config has: set it to one of its values and validate. Keys under
    `model.kwargs` and `data.kwargs` are free-form here; the model or dataset builder checks them."""
    for key, param in space.params.items():
        probe = f"{key}={override_text(param.low_value())}"
        try:
            config_from_raw(raw, [*overrides, probe], str(source))
        except UserError as e:
            raise UserError(f"{source}: params.{key}: not a valid key or value of the config ({e})") from None


def grid_cells(space: Space, phis: list[float]) -> list[dict[str, Any]]:
    """Every combination of the grid: dicts of optuna parameter name -> stored value, in file order.

    Raises:
        UserError: a parameter the grid cannot enumerate, or more than MAX_GRID_CELLS cells, counted before any
            value is built (`int: [0, 1e9]` would otherwise build a billion-element list).
    """
    sizes = {key: param.grid_size(key) for key, param in space.params.items()}
    for key, n in sizes.items():
        if n > MAX_GRID_CELLS:
            raise UserError(
                f"params.{key}: {n:,} grid values, more than the {MAX_GRID_CELLS:,} cells a grid may have; "
                "give a coarser step or grid_points, or use the random or tpe sampler"
            )
    tail = "a grid may have; use fewer values, or the random or tpe sampler"
    check_cells(sizes, MAX_GRID_CELLS, "params: the grid has ", tail, times=max(1, len(phis)))
    axes = {key: param.grid(key) for key, param in space.params.items()}
    if space.scaling is not None:
        axes = {SCALING_PARAM: list(phis), **axes}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
