"""`prepare --engine spark` writes what the DuckDB engine writes, row for row (compared as sorted rows), on
generated logs made to hit every rule and on MovieLens-100k. One local[2] session serves every test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from din_export.data.prepare import Sources, prepare
from din_export.data.synthetic import IMPRESSIONS_SPEC_PATH, LOG_SPEC_PATH, generate_impressions, generate_log
from helpers import ML100K, need_ml100k

pytest.importorskip("pyspark", reason="the spark extra is not installed: pip install -e '.[spark]' (and a Java 17 runtime)")
if shutil.which("java") is None:
    pytest.skip("no Java runtime for Spark: apt-get install -y openjdk-17-jre-headless", allow_module_level=True)

pytestmark = pytest.mark.slow
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def spark():
    from din_export.data.spark import session

    spark = session("local[2]", {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"})
    yield spark
    spark.stop()


def sorted_rows(folder: Path, split: str) -> tuple[list[str], list[tuple]]:
    table = pq.read_table(folder / f"{split}.parquet")
    return table.column_names, sorted(tuple(repr(v) for v in row.values()) for row in table.to_pylist())


def assert_same_samples(duckdb: Path, spark: Path) -> None:
    for split in SPLITS:
        duck_columns, duck_rows = sorted_rows(duckdb, split)
        spark_columns, spark_rows = sorted_rows(spark, split)
        assert spark_columns == duck_columns, split
        assert len(spark_rows) == len(duck_rows), split
        assert spark_rows == duck_rows, (split, next((d, s) for d, s in zip(duck_rows, spark_rows, strict=True) if d != s))
    assert (spark / "spec.toml").read_text() == (duckdb / "spec.toml").read_text()


def both(spark, recipe: Path, sources: Sources, tmp_path: Path, **options) -> tuple[Path, Path]:
    from din_export.data.spark import prepare as prepare_spark

    prepare(recipe, sources, tmp_path / "duckdb", **options)
    prepare_spark(spark, recipe, sources, tmp_path / "spark", **options)
    return tmp_path / "duckdb", tmp_path / "spark"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    """The generated log with its times cut to the day, so a user's events tie often (the log row breaks ties, and a
    history holds nothing of its own day), gaps in session_depth (the `previous` fill) and in the attributes."""
    import pyarrow as pa

    folder = tmp_path_factory.mktemp("generated")
    log, items, users = generate_log(6_000, seed=3)
    days = (log.column("timestamp").to_numpy() // 86_400) * 86_400
    log = log.set_column(log.column_names.index("timestamp"), "timestamp", pa.array(days))
    for name, table in (("log", log), ("items", items), ("users", users)):
        pq.write_table(table, folder / f"{name}.parquet")
    return Sources(folder / "log.parquet", folder / "items.parquet", folder / "users.parquet")


def test_generated_log_per_user(spark, generated: Sources, tmp_path: Path) -> None:
    duckdb, spark_out = both(spark, LOG_SPEC_PATH, generated, tmp_path)
    assert_same_samples(duckdb, spark_out)
    assert all((spark_out / f"{split}.parquet").is_dir() for split in SPLITS)  # folders of part files, read as they are
    from din_export.config import ModelConfig, TrainConfig
    from din_export.data.dataset import DataSource
    from din_export.data.spec import load_spec
    from din_export.pipeline import train_and_export
    from helpers import SMALL_MODEL

    source = DataSource(*(spark_out / f"{split}.parquet" for split in SPLITS))
    manifest = train_and_export(source, tmp_path / "bundle", load_spec(spark_out / "spec.toml"), ModelConfig(**SMALL_MODEL),
                                TrainConfig(epochs=1, progress=False))
    assert manifest["data"]["train_rows"] == pq.read_table(duckdb / "train.parquet").num_rows


def test_generated_log_by_global_time(spark, generated: Sources, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(LOG_SPEC_PATH.read_text().replace('mode = "per_user"\nvalid = 1\ntest = 1', 'mode = "global_time"\nvalid = 0.15\ntest = 0.1'))
    assert_same_samples(*both(spark, recipe, generated, tmp_path))


def test_a_labelled_impression_log_downsampled(spark, tmp_path: Path) -> None:
    log, items = generate_impressions(20_000, seed=2)
    pq.write_table(log, tmp_path / "log.parquet")
    pq.write_table(items, tmp_path / "items.parquet")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(IMPRESSIONS_SPEC_PATH.read_text().replace("keep_negatives = 0.1", "keep_negatives = 0.3"))
    assert_same_samples(*both(spark, recipe, Sources(tmp_path / "log.parquet", tmp_path / "items.parquet"), tmp_path))


def test_movielens_100k_full_recipe(spark, tmp_path: Path) -> None:
    need_ml100k()
    import pyarrow.csv as pacsv

    for name in ("inter", "item", "user"):  # the Spark engine reads Parquet logs; RecBole's files converted once
        table = pacsv.read_csv(ML100K / f"ml-100k.{name}", parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
        pq.write_table(table, tmp_path / f"ml-100k-{name}.parquet")
    sources = Sources(tmp_path / "ml-100k-inter.parquet", tmp_path / "ml-100k-item.parquet", tmp_path / "ml-100k-user.parquet")
    recipe = Path(__file__).resolve().parent.parent / "examples" / "movielens-100k.toml"
    assert_same_samples(*both(spark, recipe, sources, tmp_path))


@pytest.mark.parametrize(("flags", "problem"), [
    (["--layout", "reference"], "--engine spark writes the inline layout"),
    (["--since", "5"], "--engine spark: --since is not supported yet"),
    (["--memory-limit", "2GB"], "--memory-limit applies to --engine duckdb"),
])
def test_what_the_spark_engine_does_not_do_yet_is_one_line(generated: Sources, tmp_path: Path, flags: list, problem: str) -> None:
    import subprocess
    import sys

    result = subprocess.run([str(Path(sys.executable).parent / "din-export"), "prepare", "--spec", str(LOG_SPEC_PATH), "--log",
                             str(generated.log), "--items", str(generated.items), "--users", str(generated.users), "--out",
                             str(tmp_path / "out"), "--engine", "spark", *flags], capture_output=True, text=True)
    assert result.returncode != 0 and problem in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
