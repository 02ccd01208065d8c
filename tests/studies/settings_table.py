"""What the seed settings tests of configs/voc/ and configs/cifar100/ share: reading a row of a settings table
(dotted key, the seed's value or a predicate on it, where the seed states it) off a resolved config, and the
`--set` overrides of a config header's short variant."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any


def resolved(cfg, key: str, derived: dict[str, Callable] | None = None) -> Any:
    """The value of dotted `key` in a RunConfig, or of a quantity `derived` computes from it."""
    if derived and key in derived:
        return derived[key](cfg)
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_row(cfg, name: str, key: str, expected: Any, where: str, derived: dict[str, Callable] | None = None) -> None:
    """One table row: the config's value equals the seed's, or satisfies the row's predicate."""
    value = resolved(cfg, key, derived)
    if callable(expected):
        assert expected(value), f"{name}: {key} = {value!r}; the seed says {where}"
    else:
        assert value == expected, f"{name}: {key} = {value!r}; the seed says {where}"


def short_variant(config: Path) -> tuple[str, list[str]]:
    """(the config path the header's `visionbench train` line names, its `--set` overrides)."""
    (command,) = re.findall(r"^#   (visionbench train \S+ .*)$", config.read_text(), re.M)
    words = shlex.split(command)
    return words[2], [words[i + 1] for i, word in enumerate(words) if word == "--set"]
