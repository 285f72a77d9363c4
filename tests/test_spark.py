"""`prepare --engine spark` writes what the DuckDB engine writes, row for row (compared as sorted rows), on
generated logs made to hit every rule and on MovieLens-100k. One local[2] session serves every test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from din_export.data.prepare import prepare
from din_export.data.rules import Sources
from din_export.data.synthetic import IMPRESSIONS_SPEC_PATH, LOG_SPEC_PATH, generate_impressions, generate_log
from helpers import ML100K, need_ml100k

pytest.importorskip("pyspark", reason="the spark extra is not installed: pip install -e '.[spark]' (and a Java 17 runtime)")
if shutil.which("java") is None:
    pytest.skip("no Java runtime for Spark: apt-get install -y openjdk-17-jre-headless", allow_module_level=True)

pytestmark = pytest.mark.slow
SPLITS = ("train", "valid", "test")
# two partitions, so prefix sums and windows cross partition boundaries; adaptive execution and whole-stage code
# generation off: on logs of thousands of events they cost more than they save (about 40% of the tests' time)
SMALL_LOG_CONF = {"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.sql.adaptive.enabled": "false",
                  "spark.sql.codegen.wholeStage": "false"}


@pytest.fixture(scope="module")
def spark():
    from din_export.data.spark import session

    spark = session("local[2]", SMALL_LOG_CONF)
    yield spark
    spark.stop()


def sorted_rows(path: Path) -> tuple[list[str], list[tuple]]:
    table = pq.read_table(path)
    return table.column_names, sorted(tuple(repr(v) for v in row.values()) for row in table.to_pylist())


def assert_same_rows(duckdb: Path, spark: Path) -> None:
    duck_columns, duck_rows = sorted_rows(duckdb)
    spark_columns, spark_rows = sorted_rows(spark)
    assert spark_columns == duck_columns, duckdb.name
    assert len(spark_rows) == len(duck_rows), duckdb.name
    assert spark_rows == duck_rows, (duckdb.name, next((d, s) for d, s in zip(duck_rows, spark_rows, strict=True) if d != s))


def assert_same_samples(duckdb: Path, spark: Path) -> None:
    """The split tables as sorted rows, the item table, spec.toml, and in the reference layout the sequence store
    row for row in its order (the samples' references point into it)."""
    for split in SPLITS:
        assert_same_rows(duckdb / f"{split}.parquet", spark / f"{split}.parquet")
    assert (spark / "items.parquet").exists() == (duckdb / "items.parquet").exists()
    if (duckdb / "items.parquet").exists():
        assert_same_rows(duckdb / "items.parquet", spark / "items.parquet")
    assert (spark / "spec.toml").read_text() == (duckdb / "spec.toml").read_text()
    assert (spark / "sequences.parquet").exists() == (duckdb / "sequences.parquet").exists()
    if (duckdb / "sequences.parquet").exists():
        assert pq.read_table(spark / "sequences.parquet").to_pylist() == pq.read_table(duckdb / "sequences.parquet").to_pylist()


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


@pytest.fixture()
def driver_rows(spark, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each driver-side read (collect, take, toPandas of a DataFrame; collect of an RDD) returned."""
    from pyspark import RDD

    frame = type(spark.range(1))  # the session's DataFrame class (Spark 4: pyspark.sql.classic)
    seen: list[int] = []
    for cls, name in ((frame, "collect"), (frame, "take"), (frame, "toPandas"), (RDD, "collect")):
        original = getattr(cls, name)

        def counted(self, *args, _original=original, **kwargs):  # noqa: ANN001, ANN202
            found = _original(self, *args, **kwargs)
            seen.append(len(found))
            return found
        monkeypatch.setattr(cls, name, counted)
    return seen


def test_generated_log_per_user(spark, generated: Sources, tmp_path: Path, driver_rows: list[int]) -> None:
    """Equal to DuckDB's output, read by train-and-export as Spark wrote it, and nothing the size of the log, its
    users or its items reached the driver: no driver-side read returned more rows than there are partitions,
    files or splits."""
    duckdb, spark_out = both(spark, LOG_SPEC_PATH, generated, tmp_path)
    assert len(driver_rows) >= 5 and max(driver_rows) <= 3, driver_rows
    assert_same_samples(duckdb, spark_out)
    assert all((spark_out / f"{split}.parquet").is_dir() for split in SPLITS)  # folders of part files, read as they are
    from din_export.config import ModelConfig, TrainConfig
    from din_export.data.source import DataSource
    from din_export.data.spec import load_spec
    from din_export.pipeline import train_and_export
    from helpers import SMALL_MODEL

    source = DataSource(*(spark_out / f"{split}.parquet" for split in SPLITS))
    manifest = train_and_export(source, tmp_path / "bundle", load_spec(spark_out / "spec.toml"), ModelConfig(**SMALL_MODEL),
                                TrainConfig(epochs=1, progress=False))
    assert manifest["data"]["train_rows"] == pq.read_table(duckdb / "train.parquet").num_rows


def test_reference_layout_popularity_negatives_and_a_window_of_samples(spark, generated: Sources, tmp_path: Path) -> None:
    """The reference layout's store and references, two negatives per positive drawn by popularity (a range join on
    Spark, numpy's searchsorted in DuckDB's engine), and --since: samples from a later time on, histories and the
    negatives' anti-join still over the whole log."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(LOG_SPEC_PATH.read_text().replace('negatives = 1\nstrategy = "uniform"', 'negatives = 2\nstrategy = "popularity"'))
    times = pq.read_table(generated.log, columns=["timestamp"]).column("timestamp").to_numpy()
    since = float(sorted(times)[len(times) // 3])
    duckdb, spark_out = both(spark, recipe, generated, tmp_path, layout="reference", since=since)
    assert_same_samples(duckdb, spark_out)
    train = pq.read_table(spark_out / "train.parquet")
    assert min(pq.read_table(spark_out / "test.parquet").column("event_time").to_pylist()) >= since
    assert (train.column("label").to_numpy() == 0).sum() == 2 * (train.column("label").to_numpy() == 1).sum()


def test_a_labelled_impression_log_downsampled(spark, tmp_path: Path) -> None:
    log, items = generate_impressions(20_000, seed=2)
    pq.write_table(log, tmp_path / "log.parquet")
    pq.write_table(items, tmp_path / "items.parquet")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(IMPRESSIONS_SPEC_PATH.read_text().replace("keep_negatives = 0.1", "keep_negatives = 0.3"))
    assert_same_samples(*both(spark, recipe, Sources(tmp_path / "log.parquet", tmp_path / "items.parquet"), tmp_path))


def test_timestamp_times_split_by_global_time_with_an_iso_since(spark, generated: Sources, tmp_path: Path) -> None:
    """A timestamp time column (nanoseconds, pyarrow's default) orders, splits and is written as the integer in its
    own unit by both engines; global-time cuts; --since as an ISO date."""
    import pyarrow as pa

    log = pq.read_table(generated.log)
    seconds = log.column("timestamp").to_numpy()
    log = log.set_column(log.column_names.index("timestamp"), "timestamp", pa.array(seconds.astype("datetime64[s]").astype("datetime64[ns]")))
    pq.write_table(log, tmp_path / "log.parquet")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(LOG_SPEC_PATH.read_text().replace('mode = "per_user"\nvalid = 1\ntest = 1', 'mode = "global_time"\nvalid = 0.15\ntest = 0.1'))
    sources = Sources(tmp_path / "log.parquet", generated.items, generated.users)
    middle = str(np.datetime64(int(np.median(seconds)) // 86_400 * 86_400, "s"))[:10]  # a date: YYYY-MM-DD
    duckdb, spark_out = both(spark, recipe, sources, tmp_path, since=middle)
    assert_same_samples(duckdb, spark_out)
    first = min(pq.read_table(spark_out / "train.parquet").column("event_time").to_pylist())
    assert first >= np.datetime64(middle, "ns").astype(np.int64)


@pytest.mark.parametrize(("unit", "zone"), [("ms", None), ("us", None), ("us", "UTC"), ("ns", None), ("ns", "Europe/Paris")])
def test_every_timestamp_unit_is_the_integer_in_its_unit(spark, tmp_path: Path, unit: str, zone: str | None) -> None:
    """Parquet timestamps with and without a time zone, in each unit Parquet stores, become the integers DuckDB's
    engine orders by."""
    import pyarrow as pa

    from din_export.data.rules import read_recipe
    from din_export.data.spark_job import SparkPrepare

    values = np.array(["1970-01-01T00:00:00", "2024-03-31T01:30:00.123", "2031-12-31T23:59:59.999"], dtype=f"datetime64[{unit}]")
    stamps = pa.array(values).cast(pa.timestamp(unit, tz=zone))
    pq.write_table(pa.table({"user_id": [1, 1, 2], "item_id": [1, 2, 3], "timestamp": stamps, "session_depth": [1.0, 2.0, 3.0]}),
                   tmp_path / "log.parquet")
    spec, config = read_recipe(LOG_SPEC_PATH)
    job = SparkPrepare(spark, spec, config, Sources(tmp_path / "log.parquet"), None)
    found = [row["_t"] for row in job.read_log().orderBy("_din_row").select("_t").collect()]
    assert found == values.astype(np.int64).astype(float).tolist()


def test_movielens_100k_full_recipe(spark, tmp_path: Path) -> None:
    need_ml100k()
    import pyarrow.csv as pacsv

    for name in ("inter", "item", "user"):  # the Spark engine reads Parquet logs; RecBole's files converted once
        table = pacsv.read_csv(ML100K / f"ml-100k.{name}", parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
        pq.write_table(table, tmp_path / f"ml-100k-{name}.parquet")
    sources = Sources(tmp_path / "ml-100k-inter.parquet", tmp_path / "ml-100k-item.parquet", tmp_path / "ml-100k-user.parquet")
    recipe = Path(__file__).resolve().parent.parent / "examples" / "movielens-100k.toml"
    for layout in ("inline", "reference"):
        assert_same_samples(*both(spark, recipe, sources, tmp_path / layout, layout=layout))


@pytest.mark.parametrize(("flags", "problem"), [
    (["--memory-limit", "2GB"], "--memory-limit applies to --engine duckdb"),
    (["--spark-master", "local[1]", "--engine", "duckdb"], "--spark-master applies to --engine spark"),
])
def test_flags_of_the_other_engine_are_refused_in_one_line(generated: Sources, tmp_path: Path, flags: list, problem: str) -> None:
    import subprocess
    import sys

    result = subprocess.run([str(Path(sys.executable).parent / "din-export"), "prepare", "--spec", str(LOG_SPEC_PATH), "--log",
                             str(generated.log), "--items", str(generated.items), "--users", str(generated.users), "--out",
                             str(tmp_path / "out"), "--engine", "spark", *flags], capture_output=True, text=True)
    assert result.returncode != 0 and problem in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_spark_submit_runs_the_example_application(generated: Sources, tmp_path: Path) -> None:
    """examples/spark_prepare.py, submitted as the guide submits it to a cluster (here a local master), writes what
    the DuckDB engine writes."""
    import os
    import subprocess
    import sys

    submit = Path(sys.executable).parent / "spark-submit"
    example = Path(__file__).resolve().parent.parent / "examples" / "spark_prepare.py"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    small_log = [f"--conf={key}={value}" for key, value in SMALL_LOG_CONF.items()]  # as the session fixture's
    result = subprocess.run([str(submit), "--master", "local[2]", *small_log, str(example),
                             str(LOG_SPEC_PATH), str(generated.log), str(tmp_path / "spark"), "--items", str(generated.items),
                             "--users", str(generated.users), "--layout", "reference"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"engine": "spark"' in result.stdout.splitlines()[-1]
    prepare(LOG_SPEC_PATH, generated, tmp_path / "duckdb", layout="reference")
    assert_same_samples(tmp_path / "duckdb", tmp_path / "spark")


@pytest.fixture(scope="module")
def nan_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sources]:
    """A labelled impression log with coarse times (hour ties) and NaN in every kind of numeric column: float64 and
    float32 event columns (previous, mean and zero fills), numbers as text with 'NaN' and 'nan' in them, and float
    item and user attributes; and its recipe."""
    import pyarrow as pa

    folder = tmp_path_factory.mktemp("nan")
    log, items = generate_impressions(8_000, seed=4)
    rng = np.random.default_rng(4)

    def with_nan(values: np.ndarray, share: float = 0.05) -> np.ndarray:
        values = values.astype(values.dtype, copy=True)
        values[rng.random(len(values)) < share] = np.nan
        return values

    hours = (log.column("timestamp").to_numpy() // 3600) * 3600
    dwell = with_nan(rng.gamma(2.0, 3.0, log.num_rows))
    numbers = np.round(rng.random(log.num_rows) * 9, 2).astype(str)
    text = np.where(rng.random(log.num_rows) < 0.05, rng.choice(["NaN", "nan", ""], log.num_rows), numbers)
    log = (log.set_column(log.column_names.index("timestamp"), "timestamp", pa.array(hours))
              .append_column("dwell", pa.array(dwell)).append_column("dwell32", pa.array(with_nan(rng.random(log.num_rows)).astype(np.float32)))
              .append_column("depth", pa.array(with_nan(rng.random(log.num_rows) * 5))).append_column("score", pa.array(text)))
    items = items.append_column("price", pa.array(with_nan(rng.random(items.num_rows) * 30, 0.1)))
    users = np.unique(log.column("user_id").to_numpy())
    users_table = pa.table({"user_id": users, "age": with_nan(rng.integers(18, 70, len(users)).astype(np.float64), 0.1)})
    for name, table in (("log", log), ("items", items), ("users", users_table)):
        pq.write_table(table, folder / f"{name}.parquet")
    extra = """
[users]
key = "user_id"

[features.dwell]
kind = "numeric"
column = "dwell"
fill = "previous"

[features.dwell32]
kind = "numeric"
column = "dwell32"
fill = "mean"

[features.depth]
kind = "numeric"
column = "depth"
fill = "zero"

[features.score]
kind = "numeric"
column = "score"
fill = "previous"

[features.price]
kind = "numeric"
source = "items"
column = "price"
fill = "median"

[features.age]
kind = "numeric"
source = "users"
column = "age"
fill = "mean"
"""
    recipe = folder / "recipe.toml"
    recipe.write_text(IMPRESSIONS_SPEC_PATH.read_text().replace("keep_negatives = 0.1", "keep_negatives = 0.5") + extra)
    return recipe, Sources(folder / "log.parquet", folder / "items.parquet", folder / "users.parquet")


def test_nan_in_every_kind_of_numeric_column_is_missing_to_both_engines(spark, nan_log: tuple[Path, Sources], tmp_path: Path) -> None:
    """NaN is missing to both engines, as the preparing guide says: the `previous` fill skips it (Spark's
    last(ignorenulls) alone would keep it), and what stays missing is written as null by both."""
    import pyarrow.compute as pc

    recipe, sources = nan_log
    duckdb, spark_out = both(spark, recipe, sources, tmp_path)
    assert_same_samples(duckdb, spark_out)
    train = pq.read_table(duckdb / "train.parquet")
    for name in ("dwell", "dwell32", "depth", "score", "price", "age"):
        column = train.column(name)
        assert not pc.any(pc.is_nan(column.cast("double"))).as_py(), name  # no NaN written: missing is null
    assert train.column("dwell").null_count < train.column("depth").null_count  # the previous fill filled most gaps


@pytest.mark.parametrize("column", ["click", "timestamp"])
def test_a_nan_label_or_time_is_the_same_one_line_error_in_both_engines(spark, nan_log: tuple[Path, Sources], tmp_path: Path,
                                                                         column: str) -> None:
    import pyarrow as pa

    from din_export.data.spark import prepare as prepare_spark

    recipe, sources = nan_log
    log = pq.read_table(sources.log)
    values = log.column(column).to_numpy().astype(np.float64)
    values[[17, 40]] = np.nan
    pq.write_table(log.set_column(log.column_names.index(column), column, pa.array(values)), tmp_path / "log.parquet")
    broken = Sources(tmp_path / "log.parquet", sources.items, sources.users)
    messages = []
    for run in (lambda: prepare(recipe, broken, tmp_path / "duckdb"), lambda: prepare_spark(spark, recipe, broken, tmp_path / "spark")):
        with pytest.raises(ValueError) as raised:
            run()
        messages.append(str(raised.value))
    assert messages[0] == messages[1] == f"{broken.log}: column '{column}' is empty (null or NaN) in 2 row(s), first at row 17"
