"""Command lines whose flags do not fit together end in one line naming the flag (and the recipe's section), exit
status 2, before any data is read or anything is written. Each combination that cannot mean anything is tried."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from din_export.cli import main

RECIPE = """label = "label"
[log]
user = "user"
item = "item"
time = "time"
{sections}
[features.user]
kind = "categorical"
column = "user"
[features.item]
kind = "categorical"
column = "item"
[features.hist_item]
kind = "sequence"
shares = "item"
max_len = 5
"""


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """A tiny log, an attribute table, recipes with and without [items]/[users], a sample table and its spec."""
    events = "".join(f"{user},{10 + (user + step) % 5},{step}\n" for user in (1, 2) for step in range(4))
    (tmp_path / "log.csv").write_text("user,item,time\n" + events, encoding="utf-8")
    (tmp_path / "attributes.csv").write_text("item,user,colour\n10,1,red\n11,2,blue\n12,3,red\n13,4,red\n14,5,blue\n", encoding="utf-8")
    (tmp_path / "plain.toml").write_text(RECIPE.format(sections=""), encoding="utf-8")
    (tmp_path / "joined.toml").write_text(RECIPE.format(sections='[items]\nkey = "item"\n[users]\nkey = "user"\n'), encoding="utf-8")
    (tmp_path / "train.csv").write_text("label,user,item,hist_item\n1,1,10,\n0,2,11,10\n", encoding="utf-8")
    return {name: str(tmp_path / name) for name in ("log.csv", "attributes.csv", "plain.toml", "joined.toml", "train.csv")} | {
        "out": str(tmp_path / "out")}


PREPARE = [
    (["--spec", "plain.toml", "--users", "attributes.csv"], ["--users", "[users]"]),
    (["--spec", "plain.toml", "--items", "attributes.csv"], ["--items", "[items]"]),
    (["--spec", "joined.toml", "--users", "attributes.csv"], ["[items]", "--items"]),
    (["--spec", "joined.toml", "--items", "attributes.csv"], ["[users]", "--users"]),
]
TRAIN = [
    (["--log", "log.csv"], ["--log", "--spec"]),
    (["--data", "train.csv"], ["--data", "--spec"]),
    (["--data", "train.csv", "--log", "log.csv", "--spec", "plain.toml"], ["--data", "--log"]),
    (["--items", "attributes.csv"], ["--items", "--log"]),
    (["--data", "train.csv", "--spec", "plain.toml", "--users", "attributes.csv"], ["--users", "--log"]),
    (["--log", "log.csv", "--spec", "plain.toml", "--valid", "train.csv"], ["--valid", "[split]"]),
    (["--log", "log.csv", "--spec", "plain.toml", "--test", "train.csv"], ["--test", "[split]"]),
    (["--valid", "train.csv"], ["--valid", "--data"]),
    (["--test", "train.csv"], ["--test", "--data"]),
    (["--data", "train.csv", "--spec", "plain.toml", "--samples", "500"], ["--samples", "--data"]),
    (["--log", "log.csv", "--spec", "plain.toml", "--items", "attributes.csv"], ["--items", "[items]"]),
    (["--log", "log.csv", "--spec", "joined.toml"], ["[items]", "--items"]),
]


def _run(args: list[str], files: dict[str, str]) -> tuple[int, str]:
    resolved = [files.get(a, a) for a in args]
    result = CliRunner().invoke(main, resolved)
    return result.exit_code, result.output


def _assert_one_line(code: int, output: str, named: list[str], files: dict[str, str]) -> None:
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert all(word in lines[0] for word in named), (named, lines[0])
    assert "Traceback" not in output and not Path(files["out"]).exists()


@pytest.mark.parametrize(("args", "named"), PREPARE, ids=[" ".join(a) for a, _ in PREPARE])
def test_prepare_refuses_a_table_without_its_section_and_a_section_without_its_table(args, named, files) -> None:
    code, output = _run(["prepare", "--log", "log.csv", "--out", "out", *args], files)
    _assert_one_line(code, output, named, files)


@pytest.mark.parametrize(("args", "named"), TRAIN, ids=[" ".join(a) for a, _ in TRAIN])
@pytest.mark.parametrize("command", ["train-and-export", "tune"])
def test_training_commands_refuse_data_flags_that_do_not_fit(command, args, named, files) -> None:
    code, output = _run([command, *args, "--out", "out"], files)
    _assert_one_line(code, output, named, files)


@pytest.mark.parametrize("flag", [["--force"], ["--max-auc-drop", "0.01"], ["--valid", "train.csv"]])
def test_export_refuses_precision_checks_without_a_reduced_precision(flag, files, bundle: Path) -> None:
    code, output = _run(["export", str(bundle), "--out", "out", *flag], files)
    _assert_one_line(code, output, [flag[0], "--precision"], files)


def test_the_combinations_that_fit_still_run(files) -> None:
    """The checks refuse only what cannot mean anything: the same log, recipes and tables prepare as expected."""
    code, output = _run(["prepare", "--log", "log.csv", "--spec", "joined.toml", "--items", "attributes.csv", "--users",
                         "attributes.csv", "--out", "out"], files)
    assert code == 0, output
    assert (Path(files["out"]) / "train.parquet").is_file()
