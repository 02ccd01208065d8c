"""Config loading, overrides and their errors."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from visionbench.config import RunConfig, config_diff, dump_config, load_config, validate
from visionbench.errors import UserError


def test_override_types_parsed_with_safe_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.1}\ntrainer: {epochs: 3}\n")
    cfg = load_config(path, ["optim.lr=1e-2", "trainer.epochs=5", "data.augment.flip=true", "optim.step_epochs=[1, 2]"])
    assert cfg.optim.lr == 0.01 and cfg.trainer.epochs == 5 and cfg.data.augment.flip is True
    assert cfg.optim.step_epochs == [1.0, 2.0]


def test_experiment_defaults_to_stem_but_config_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert load_config(path, experiment="c").trainer.experiment == "c"
    assert load_config(path, ["trainer.experiment=x"], experiment="c").trainer.experiment == "x"


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["trainer.epoch=3"], "unknown key trainer.epoch; closest valid keys: trainer.epochs"),
        (["trainer.epochs=ten"], "trainer.epochs: expected a valid integer"),
        (["trainer.epochs='2'"], "trainer.epochs"),  # a string is not an int (LightningCLI #20337)
        (["optim.lr=-1"], "optim.lr"),
        (["optimizer.lr=1"], "unknown key optimizer; closest valid keys: optim"),
        (["trainer"], "expected dotted.key=value"),
        (["trainer.epochs.x=1"], "trainer.epochs: expected a valid integer"),
    ],
)
def test_bad_override_names_the_key(overrides, needle):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert needle in str(e.value), str(e.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {epochs: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  epocs: 3\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown key trainer.epocs; closest valid keys: trainer.epochs"):
        load_config(typo)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(listy)


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.trainer.epochs = 3  # type: ignore[misc]


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(min_value=1e-6, max_value=10, allow_nan=False),
    epochs=st.integers(1, 1000),
    flip=st.booleans(),
    subset=st.one_of(st.none(), st.integers(1, 10**6)),
    name=st.sampled_from(["sgd", "adam", "adamw"]),
)
def test_dump_and_reload_gives_an_equal_config(lr, epochs, flip, subset, name):
    cfg = load_config(
        None,
        [f"optim.lr={lr!r}", f"trainer.epochs={epochs}", f"data.augment.flip={flip}", f"optim.name={name}"]
        + ([f"data.subset={subset}"] if subset else []),
    )
    again = validate(yaml.safe_load(dump_config(cfg)), "dump")
    assert again == cfg and config_diff(cfg, again) == []


def test_config_diff_lists_dotted_keys():
    a = load_config(None, ["optim.lr=0.1"])
    b = load_config(None, ["optim.lr=0.2", "trainer.epochs=2"])
    assert config_diff(a, b) == ["optim.lr", "trainer.epochs"]
