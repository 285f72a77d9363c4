"""Every setting is checked where its config object is made, the same way from Python, from a spec's [model] and
[training] sections and from the command line: each bound is tried, and a bad value is one line naming the key,
before any data is read or any log prepared."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.config import VARIANTS, Accepts, ModelConfig, SettingError, TrainConfig, TuneConfig, resolve
from din_export.data.spec import load_spec
from din_export.data.synthetic import LOG_SPEC_PATH, SPEC_PATH
from din_export.errors import SpecError

CONFIGS = (ModelConfig, TrainConfig, TuneConfig)


def bad_values(accepts: Accepts) -> list[Any]:
    """Values just outside what a setting accepts: past each bound, of the wrong type, not one of the choices."""
    if accepts.choices is not None:
        return [accepts.choices[0].upper() + "x", 3]
    if accepts.kind is bool:
        return [1, "yes"]
    bad: list[Any] = ["7", True]
    step = 1 if accepts.kind is int else 1e-9
    if accepts.low is not None:
        bad.append(accepts.low if accepts.low_open else accepts.low - step)
    if accepts.high is not None:
        bad.append(accepts.high if accepts.high_open else accepts.high + step)
    if accepts.kind is int:
        bad.append(2.5)
    else:
        bad.append(float("nan"))
    if accepts.layers:
        return [[], [80, 0], "80,40", [80, 2.5]]
    return bad


def good_value(accepts: Accepts, default: Any) -> Any:
    """A value at the edge of what is accepted (the bound itself where it is closed)."""
    if accepts.low is not None and not accepts.low_open and not accepts.layers:
        return accepts.kind(accepts.low)
    return default


CASES = [(config, entry.name, value) for config in CONFIGS for entry in dataclasses.fields(config)
         for value in bad_values(entry.metadata["accepts"])]


@pytest.mark.parametrize(("config", "key", "value"), CASES, ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__)
def test_each_bound_refuses_in_one_line_naming_the_key(config: type, key: str, value: Any) -> None:
    with pytest.raises(SettingError) as raised:
        config(**{key: value})
    message = str(raised.value)
    assert message.startswith(f"{key} must be ") and "\n" not in message


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_the_closed_bounds_and_defaults_are_accepted(config: type) -> None:
    defaults = config()
    for entry in dataclasses.fields(config):
        value = good_value(entry.metadata["accepts"], getattr(defaults, entry.name))
        assert getattr(config(**{entry.name: value}), entry.name) == (tuple(value) if isinstance(value, list) else value)


def test_a_spec_section_is_checked_like_a_flag_and_names_its_section() -> None:
    spec = load_spec(SPEC_PATH)
    with pytest.raises(SettingError, match=r"^\[training\] batch_size must be an integer >= 2, not 0$"):
        resolve(dataclasses.replace(spec, training={"batch_size": 0}), {}, {})
    with pytest.raises(SettingError, match=r"^\[model\] attention_weighting must be one of \('raw', 'softmax'\), not 'soft'$"):
        resolve(dataclasses.replace(spec, model={"attention_weighting": "soft"}), {}, {})
    with pytest.raises(SettingError, match=r"^\[model\] encoder_heads = 3 does not divide din-seq's behaviour width 32"):
        resolve(spec, {"variant": "din-seq", "encoder_heads": 3}, {})
    with pytest.raises(SpecError, match=r"unknown setting 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        resolve(dataclasses.replace(spec, training={"learning_rat": 0.1}), {}, {})


@pytest.mark.parametrize("variant", VARIANTS)
def test_dropout_defaults_by_variant_and_a_spec_or_flag_overrides_it(variant: str) -> None:
    """DIEN's measured dropout where nothing sets it, 0 for the rest; a spec's value wins over it and a flag over
    both, and a saved configuration keeps the number it was trained with."""
    spec = load_spec(SPEC_PATH)
    default = {"dien": 0.1}.get(variant, 0.0)
    assert resolve(spec, {"variant": variant}, {})[0].dropout == default
    assert resolve(dataclasses.replace(spec, model={"dropout": 0.3}), {"variant": variant}, {})[0].dropout == 0.3
    assert resolve(dataclasses.replace(spec, model={"dropout": 0.3}), {"variant": variant, "dropout": 0.0}, {})[0].dropout == 0.0
    saved = ModelConfig(variant=variant).to_dict()
    assert saved["dropout"] == default and ModelConfig.from_dict(saved).dropout == default


@pytest.mark.parametrize(("section", "line", "message"), [
    ("training", "batch_size = 0", "[training] batch_size must be an integer >= 2, not 0"),
    ("training", "patience = 0", "[training] patience must be an integer >= 1, not 0"),
    ("training", "learning_rate = -0.1", "[training] learning_rate must be a number > 0, not -0.1"),
    ("training", 'epochs = "ten"', "[training] epochs must be an integer >= 0, not 'ten'"),
    ("model", 'attention_weighting = "soft"', "[model] attention_weighting must be one of ('raw', 'softmax'), not 'soft'"),
    ("model", "encoder_heads = 0", "[model] encoder_heads must be an integer >= 1, not 0"),
    ("model", "mlp_hidden = [200, 0]", "[model] mlp_hidden must be layer sizes, each an integer >= 1 (e.g. [80, 40]), not [200, 0]"),
])
def test_a_bad_setting_in_a_recipe_fails_before_the_log_is_read(tmp_path: Path, section: str, line: str, message: str) -> None:
    """The log named does not exist: were it read (or prepared) first, the error would be about the file."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(LOG_SPEC_PATH.read_text() + f"\n[{section}]\n{line}\n")
    result = CliRunner().invoke(main, ["train-and-export", "--log", str(tmp_path / "no-such-log.parquet"), "--spec", str(recipe),
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("flags", "problem"), [
    (["--batch-size", "1"], "'--batch-size': 1 is not in the range x>=2"),
    (["--dropout", "1"], "'--dropout': 1.0 is not in the range 0<=x<1"),
    (["--learning-rate", "0"], "'--learning-rate': 0.0 is not in the range x>0"),
    (["--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
    (["--attention-weighting", "soft"], "'--attention-weighting': 'soft' is not one of 'raw', 'softmax'"),
    (["--mlp-hidden", "200,0"], "'--mlp-hidden': expected comma-separated layer sizes like 80,40, each 1 or more, not '200,0'"),
])
def test_flags_take_their_ranges_from_the_config(tmp_path: Path, flags: list[str], problem: str) -> None:
    result = CliRunner().invoke(main, ["train-and-export", "--out", str(tmp_path / "b"), *flags])
    assert result.exit_code == 2 and problem in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("text", "message"), [
    ('[features.hist_item_id]\nkind = "sequence"\nshares = "item_id"\nmax_lenn = 5\n',
     "unknown key 'max_lenn' for kind 'sequence' (did you mean 'max_len'?)"),
    ('labl = "x"\n', "unknown top-level key 'labl' (did you mean 'label'?)"),
    ('[sampling]\nstrategi = "uniform"\n', "[sampling]: unknown key 'strategi' (did you mean 'strategy'?)"),
])
def test_a_misspelled_key_gets_the_nearest_valid_one(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "recipe.toml"
    base = LOG_SPEC_PATH.read_text()
    if text.startswith("[features.hist_item_id]"):
        base = base.replace('[features.hist_item_id]\nkind = "sequence"\nshares = "item_id"\nmax_len = 50\n', "")
    if text.startswith("[sampling]"):
        base = base.replace('[sampling]\nnegatives = 1\nstrategy = "uniform"\nseed = 0\n', "")
    recipe.write_text(text + base if not text.startswith("[") else base + "\n" + text)
    result = CliRunner().invoke(main, ["prepare", "--spec", str(recipe), "--log", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
