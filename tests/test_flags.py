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


def test_a_renamed_flag_keeps_its_old_name_hidden_for_a_release(files) -> None:
    """prepare's --chunk-rows is now --write-rows: the old name still works, prints one note, is not in --help, and
    the two names at once are refused."""
    runner = CliRunner()
    assert "--chunk-rows" not in runner.invoke(main, ["prepare", "--help"]).output
    code, output = _run(["prepare", "--log", "log.csv", "--spec", "plain.toml", "--out", "out", "--chunk-rows", "1000"], files)
    assert code == 0 and "note: --chunk-rows is now --write-rows; --chunk-rows goes in the next release" in output
    code, output = _run(["prepare", "--log", "log.csv", "--spec", "plain.toml", "--out", "out", "--chunk-rows", "1000",
                         "--write-rows", "2000"], files)
    assert code == 2 and "--chunk-rows is the old name of --write-rows; give --write-rows alone" in output
    code, output = _run(["prepare", "--log", "log.csv", "--spec", "plain.toml", "--out", "out", "--chunk-rows", "10"], files)
    assert code == 2 and "10 is not in the range x>=1000" in output  # the old name takes the new one's range


@pytest.mark.slow
def test_renamed_training_flags_reach_the_bundle(tmp_path: Path) -> None:
    """--activation (now --mlp-activation) and --graph (now --attention-form) still set what they set."""
    out = tmp_path / "b"
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "400", "--epochs", "1", "--embedding-dim", "4",
                                       "--attention-hidden", "8", "--mlp-hidden", "8", "--activation", "relu", "--graph", "plain",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "note: --activation is now --mlp-activation" in result.output and "note: --graph is now --attention-form" in result.output
    from din_runtime.manifest import read_manifest

    manifest = read_manifest(out)
    assert manifest["model"]["mlp_activation"] == "relu" and manifest["onnx"]["graph"] == "plain"
