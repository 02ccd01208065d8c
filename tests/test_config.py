"""Config loading, overrides and their errors."""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from visionbench.config import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    RunConfig,
    config_diff,
    dump_config,
    load_config,
    validate,
)
from visionbench.errors import UserError
from visionbench.utils.bounded import CONFIG_BYTES


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


# ---------------------------------------------------------------------------------------------------------------
# Bounded reading: alias bombs, depth, encodings, file kinds, values YAML cannot build, sections given as values


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The issue's example: a one-line "billion laughs" (9 ** 9 nodes) of about 700 bytes."""
    parts = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.timeout(30)
def test_a_700_byte_alias_bomb_as_a_set_value_is_refused_naming_the_key():
    assert len(_bomb()) < 800
    with pytest.raises(UserError) as e:
        load_config(None, [f"trainer.epochs={_bomb()}"])
    assert str(e.value).startswith("--set trainer.epochs: refused YAML value at line 1, column ") and (
        f"aliases expand to more than {MAX_YAML_NODES:,} nodes" in str(e.value)
    ), str(e.value)


@pytest.mark.timeout(30)
def test_an_alias_bomb_anywhere_in_a_config_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"trainer:\n  epochs: 1\ndata:\n  kwargs: {{x: {_bomb()}}}\n")
    with pytest.raises(UserError, match=r"bomb.yaml: refused YAML at line 4, column \d+: aliases expand"):
        load_config(path)


def test_aliases_within_the_limits_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("optim: {step_epochs: &steps [3, 6]}\ndata:\n  kwargs: {marks: *steps}\n")
    cfg = load_config(path)
    assert cfg.optim.step_epochs == [3.0, 6.0] and cfg.data.kwargs == {"marks": [3, 6]}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: &a [*a]\n", "an alias refers to its own anchor"),
        ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", f"nested deeper than {MAX_YAML_DEPTH} levels"),
        ("a: " + "{b: " * 60 + "1" + "}" * 60 + "\n", f"nested deeper than {MAX_YAML_DEPTH} levels"),
        ("a: [&a0 [x], " + ", ".join(f"&a{i} [*a{i - 1}]" for i in range(1, 60)) + "]\n", "aliases nest deeper"),
    ],
    ids=["recursive", "10000-deep", "60-deep-map", "alias-chain"],
)
def test_recursive_or_deep_yaml_is_one_line_not_a_recursion_error(tmp_path, text, needle):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: refused YAML at line 1") and needle in str(e.value), str(e.value)


def test_error_messages_describe_a_shared_structure_without_expanding_it():
    nested = (
        "[" + ", ".join(["&a0 [1, 2, 3]"] + [f"&a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]) + "]"
    )
    with pytest.raises(UserError) as e:  # 3 ** 9 = 19,683 leaves: inside the limits, refused by the schema
        load_config(None, [f"trainer.epochs={nested}"])
    assert "trainer.epochs: expected a valid integer, got [[1, 2, 3], [[...], [...], [...]]" in str(e.value)
    assert len(str(e.value)) < 200, str(e.value)


CONFIG_TEXT = "# café\ntrainer: {epochs: 3, experiment: naïve}\noptim: {lr: 1.0e-2}\n"


@pytest.mark.parametrize(
    "codec", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
def test_a_config_in_any_encoding_yaml_allows_reads_as_its_utf8_form(tmp_path, codec):
    path = tmp_path / "c.yaml"
    path.write_bytes(CONFIG_TEXT.encode(codec))  # "utf-16"/"utf-32" write a byte-order mark, the others none
    cfg = load_config(path)
    assert (cfg.trainer.epochs, cfg.trainer.experiment, cfg.optim.lr) == (3, "naïve", 0.01)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (CONFIG_TEXT.encode("latin-1"), "config is not valid UTF-8 (invalid continuation byte at byte offset 5)"),
        (CONFIG_TEXT.encode("cp1252"), "config is not valid UTF-8"),
        (b"\xff\xfe" + CONFIG_TEXT.encode("utf-16-le") + b"x", "config is not valid UTF-16-LE (truncated data"),
        (b"trainer: {epochs: 3}\n\x00\x00", "not valid YAML at position 21: unacceptable character #x0000"),
    ],
    ids=["latin-1", "cp1252", "cut-utf-16", "nul"],
)
def test_a_config_not_in_an_encoding_yaml_allows_is_one_line_naming_the_file(tmp_path, data, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ") and needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory", "huge"])
@pytest.mark.timeout(30)
def test_a_config_that_is_not_a_small_regular_file_is_refused_before_reading(tmp_path, kind):
    path = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # a plain open would wait for a writer forever
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        with open(path, "wb") as f:
            f.truncate(CONFIG_BYTES + 1)  # sparse: the size limit is checked before a byte is read
    expected = {
        "fifo": "config is a FIFO, expected a regular file",
        "dev_zero": "config is a character device, expected a regular file",
        "directory": "config is a directory, expected a regular file",
        "huge": f"config is {CONFIG_BYTES + 1:,} bytes, more than the 1 MiB a config may have",
    }[kind]
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("2001-13-45", "cannot read the value '2001-13-45' as timestamp (month must be in 1..12)"),
        ("!!bool maybe", "cannot read the value 'maybe' as bool"),
        ("9" * 5000, "cannot read the value '999999"),
        ("0x" + "f" * 5000, "the integer <an int of 20000 bits> is beyond the 64-bit range"),
    ],
    ids=["date", "bool", "5000-digits", "huge-hex"],
)
def test_values_yaml_cannot_build_are_one_line_at_their_line(tmp_path, value, needle):
    path = tmp_path / "c.yaml"
    path.write_text(f"trainer:\n  epochs: {value}\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: not valid YAML at line 2, column 11: ") and needle in message, message
    assert len(message) < 300, message


@pytest.mark.parametrize("section", ["trainer", "data", "optim", "data.augment"])
@pytest.mark.parametrize("value", ["5", "[1, 2]", "abc", "null", "true"])
def test_a_section_given_as_a_value_names_the_section(tmp_path, section, value):
    with pytest.raises(UserError) as e:  # --set, with the experiment name a CLI run always passes
        load_config(None, [f"{section}={value}"], experiment="exp")
    assert f"<defaults>: {section}: expected a section (a mapping of " in str(e.value), str(e.value)
    path = tmp_path / "c.yaml"
    top, _, inner = section.partition(".")
    path.write_text(f"{top}: {{{inner}: {value}}}\n" if inner else f"{section}: {value}\n")
    with pytest.raises(UserError) as e:
        load_config(path, experiment="c")
    assert f"c.yaml: {section}: expected a section" in str(e.value), str(e.value)
    with pytest.raises(UserError) as e:
        load_config(path, [f"{section}.epochs=3"], experiment="c")
    assert str(e.value) == f"--set {section}.epochs: {section} is a value, not a section"
