"""The real CLI on real files: CSV and Parquet tables, help, errors, determinism."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from din_export.cli import main
from din_export.data.synthetic import SPEC_PATH, generate
from din_runtime import Predictor

SMALL = ["--epochs", "1", "--batch-size", "128", "--embedding-dim", "8", "--attention-hidden", "16,8",
         "--mlp-hidden", "32,16", "--quiet"]


def write_csv(table: pa.Table, path: Path) -> None:
    """Sequence cells as space-separated IDs, the form the CSV reader documents."""
    for name in ("hist_item_id", "hist_cate_id"):
        joined = pc.binary_join(pc.cast(table.column(name), pa.list_(pa.string())), " ")
        table = table.set_column(table.column_names.index(name), name, joined)
    pacsv.write_csv(table, path)


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_help_explains_every_option() -> None:
    result = run(["train-and-export", "--help"])
    assert result.exit_code == 0
    for option in ("--data", "--valid", "--test", "--spec", "--out", "--epochs", "--batch-size", "--seed",
                   "--embedding-dim", "--attention-hidden", "--mlp-hidden", "--model"):
        assert option in result.output


def test_csv_table_trains_and_serves(tmp_path: Path) -> None:
    table = generate(1500, seed=5)
    write_csv(table, tmp_path / "train.csv")
    assert ",," in (tmp_path / "train.csv").read_text() or '""' in (tmp_path / "train.csv").read_text()  # empty histories
    out = tmp_path / "csv-bundle"
    result = run(["train-and-export", "--data", str(tmp_path / "train.csv"), "--spec", str(SPEC_PATH), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"] == {"source": "train", "train_rows": 1200, "valid_rows": 150, "test_rows": 150, "seed": 0,
                                "paths": {"data": str((tmp_path / "train.csv").resolve()), "valid": None, "test": None},
                                "synthetic_samples": None}
    rows = {name: table.column(name).to_pylist()[:10] for name in table.column_names}
    rows["hist_item_id"] = [" ".join(map(str, h)) for h in rows["hist_item_id"]]  # CSV-style cells are accepted too
    probabilities = Predictor.load(out).predict(rows)
    assert probabilities.shape == (10,) and np.all(np.isfinite(probabilities))


def test_parquet_tables_with_given_valid_and_test(tmp_path: Path) -> None:
    for name, seed in (("train", 1), ("valid", 2), ("test", 3)):
        pq.write_table(generate(800 if name == "train" else 200, seed=seed), tmp_path / f"{name}.parquet")
    out = tmp_path / "parquet-bundle"
    result = run(["train-and-export", "--data", str(tmp_path / "train.parquet"), "--valid", str(tmp_path / "valid.parquet"),
                  "--test", str(tmp_path / "test.parquet"), "--spec", str(SPEC_PATH), "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["train_rows"] == 800 and manifest["metrics"]["test"]["rows"] == 200


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(tmp_path: Path) -> None:
    metrics = []
    for run_name in ("first", "second"):
        out = tmp_path / run_name
        assert run(["train-and-export", "--samples", "1000", "--seed", "3", "--out", str(out), *SMALL]).exit_code == 0
        metrics.append(json.loads((out / "manifest.json").read_text())["metrics"])
    assert metrics[0] == metrics[1]


def test_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    table_path = tmp_path / "t.parquet"
    pq.write_table(generate(200).drop_columns(["price"]), table_path)
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(table_path), "--spec", str(SPEC_PATH), "--quiet"])
    assert result.exit_code == 2
    assert "column(s) ['price'] named in the spec are absent" in result.output
    result = CliRunner().invoke(main, ["train-and-export", "--data", str(table_path)])
    assert result.exit_code == 2 and "--data and --log need --spec" in result.output
    assert not (tmp_path / "models").exists()


def test_existing_bundle_is_replaced_only_when_the_new_one_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert run(["train-and-export", "--samples", "600", "--out", str(out), *SMALL]).exit_code == 0
    first = (out / "model.onnx").read_bytes()
    result = CliRunner().invoke(main, ["train-and-export", "--samples", "600", "--out", str(out), "--mlp-hidden", "x", "--quiet"])
    assert result.exit_code != 0
    assert (out / "model.onnx").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging folder left behind


def test_train_and_export_int8_in_one_command(tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = run(["train-and-export", "--samples", "2000", "--out", str(out), "--precision", "int8", "--max-auc-drop", "1", *SMALL])
    assert result.exit_code == 0, result.output
    assert "int8 products" in result.output and "validation AUC: float32" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["onnx"]["precision"] == "int8" and manifest["metrics"]["test"]["auc"] > 0
    assert Predictor.load(out, providers="cpu").predict(generate(5, seed=1).to_pydict()).shape == (5,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8"]  # the float32 bundle replaced whole, nothing left beside it
    refused = CliRunner().invoke(main, ["train-and-export", "--samples", "600", "--max-auc-drop", "0.01", "--out", str(tmp_path / "f"), "--quiet"])
    assert refused.exit_code != 0 and "--max-auc-drop applies to --precision int8" in refused.output
