"""`prepare --engine spark`: the recipe as Spark DataFrame operations, for logs past one machine. Its output is the
DuckDB engine's, row for row (tested on MovieLens-100k and generated logs, compared as sorted rows).

How the two engines are kept from drifting: the recipe (spec.py, recipe.py) is parsed and checked by the same code;
the draws (negatives, downsampling) run the same numpy functions of behaviour.py inside Arrow UDFs, so the 64-bit
SplitMix64 arithmetic is one implementation; the per-user rules (splits, which behaviours a history holds, forward
fills) are restated as window expressions beside the numpy function each mirrors, and the equality tests run both
engines on logs made to hit every rule (ties, gaps, labels, attributes, histories past max_len).

Nothing proportional to the log, its users or its items is collected to the driver: codes and global ordinals
are computed by zipWithIndex-style prefix sums (the driver sees one count per partition), joins replace every
lookup, and the driver reads only counts, time quantiles and the parquet footers' row counts.
"""

from __future__ import annotations

import math
import time as clock
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TableError
from .behaviour import DOWNSAMPLE_ROUND, MAX_DRAW_ROUNDS, NegativeDraw, hashed_uniform, numpy_quantile
from .prepare import (
    NUMBER_PATTERN,
    PREVIOUS_FILL,
    SPEC_FILE,
    SPLIT_NAMES,
    SUMMARY_FILE,
    TIME_COLUMN,
    Sources,
    _read_recipe,
    _training_spec,
    check_sources,
    event_features,
    feature_side,
    log_columns,
)
from .recipe import LogConfig
from .sources import checked_files
from .spec import FeatureSpec, Spec, spec_to_toml

ROW, ORDINAL = "_din_row", "_din_ordinal"


def _functions() -> Any:
    from pyspark.sql import functions

    return functions


def _window(*partition: str) -> Any:
    from pyspark.sql import Window

    return Window.partitionBy(*partition)


def indexed(frame: Any, order: list[str], name: str) -> Any:
    """`frame` with a 0-based global index in `order` (zipWithIndex: one count per partition reaches the driver)."""
    from pyspark.sql.types import LongType, StructField, StructType

    ordered = frame.orderBy(*order)
    schema = StructType([*ordered.schema.fields, StructField(name, LongType(), False)])
    return ordered.rdd.zipWithIndex().map(lambda pair: (*pair[0], pair[1])).toDF(schema)


def _uniform_udf(seed: int, round_: int) -> Any:
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def draw(keys):  # noqa: ANN001, ANN202 - a pandas UDF's signature
        import pandas as pd

        return pd.Series(hashed_uniform(keys.to_numpy().astype(np.uint64), seed, round_))
    return draw


def _item_udf(num_items: int, negatives: int, seed: int, round_: int) -> Any:
    from pyspark.sql.functions import pandas_udf

    draw_of = NegativeDraw(num_items, negatives, seed)

    @pandas_udf("long")
    def draw(keys):  # noqa: ANN001, ANN202
        import pandas as pd

        return pd.Series(draw_of.items(keys.to_numpy().astype(np.int64), round_))
    return draw


class SparkPrepare:
    """One run of the recipe on a Spark session."""

    def __init__(self, spark: Any, spec: Spec, config: LogConfig, sources: Sources, since: float | None) -> None:
        self.spark, self.spec, self.config, self.sources, self.since = spark, spec, config, sources, since
        self.F = _functions()

    # -- reading ---------------------------------------------------------------------------------------------------
    def read_log(self) -> Any:
        F, config = self.F, self.config
        files, parquet = checked_files(self.sources.log, log_columns(self.spec, self.config))
        if not parquet:
            raise TableError(f"{self.sources.log}: --engine spark reads Parquet logs (a file, folder or glob of parts); "
                             "convert CSV once, e.g. with pyarrow")
        columns = log_columns(self.spec, config)
        frame = self.spark.read.parquet(*[str(f) for f in files])
        frame = frame.select(*columns, F.col("_metadata.row_index").alias("_r"), F.col("_metadata.file_path").alias("_f"))
        counts = sorted(frame.groupBy("_f").count().collect(), key=lambda r: r["_f"])  # one row per file
        offsets, total = [], 0
        for row in counts:
            offsets.append((row["_f"], total))
            total += row["count"]
        offset_frame = self.spark.createDataFrame(offsets, "_f string, _o long")
        frame = frame.join(F.broadcast(offset_frame), "_f").withColumn(ROW, F.col("_r") + F.col("_o")).drop("_f", "_r", "_o")
        time_type = frame.schema[config.time].dataType.typeName()
        if time_type == "timestamp" or time_type.startswith("timestamp"):
            raise TableError("--engine spark: a timestamp time column is not supported yet; store times as numbers")
        return frame.withColumn("_t", F.col(config.time).cast("double"))

    def check_log(self, log: Any) -> int:
        F, config = self.F, self.config
        aggregates = [F.count(F.lit(1)).alias("events")]
        for index, column in enumerate((config.user, config.item, config.time)):
            aggregates += [F.sum(F.col(column).isNull().cast("long")).alias(f"n{index}"),
                           F.min(F.when(F.col(column).isNull(), F.col(ROW))).alias(f"f{index}")]
        found = log.agg(*aggregates).collect()[0]
        for index, column in enumerate((config.user, config.item, config.time)):
            if found[f"n{index}"]:
                raise TableError(f"{self.sources.log}: column '{column}' is empty in {found[f'n{index}']} row(s), first at row {found[f'f{index}']}")
        return int(found["events"])

    def table(self, path: Path | None, key: str | None, source: str) -> Any:
        if path is None:
            return None
        columns = [key] + sorted({f.column for f in self.spec.features if f.kind != "sequence" and f.source == source} - {key})
        files, parquet = checked_files(path, columns)
        if parquet:
            return self.spark.read.parquet(*[str(f) for f in files]).select(*columns)
        from .sources import read_source  # an attribute table in CSV or TSV: small enough to read on the driver

        return self.spark.createDataFrame(read_source(path, columns).to_pandas())

    # -- values ----------------------------------------------------------------------------------------------------
    def shaped(self, frame: Any, feature: FeatureSpec) -> Any:
        """prepare._shape of the feature's column of `frame`: the first token of a token list; numbers parsed from
        text (text that is no number missing), other numbers cast as they are."""
        F = self.F
        column = F.col(feature.column)
        text_typed = frame.schema[feature.column].dataType.typeName() == "string"
        if feature.first_token:
            text = column.cast("string")
            column, text_typed = F.when(text.rlike(r"^\s*\S"), F.regexp_extract(text, r"^\s*(\S+)", 1)), True
        if feature.kind == "numeric":
            if text_typed:
                column = F.when(column.rlike(NUMBER_PATTERN), column)
            column = column.cast("double")
        return column

    def side(self, feature: FeatureSpec) -> str:
        return feature_side(feature, self.config)


def session(master: str = "local[*]", conf: dict[str, str] | None = None) -> Any:
    """A SparkSession for `prepare --engine spark` (a job submitted with spark-submit brings its own)."""
    import os
    import sys

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # executors run the draws' numpy code of din_export: locally, in this very interpreter (a cluster's nodes need
    # din-export installed, or --py-files)
    builder = (SparkSession.builder.master(master).appName("din-export prepare").config("spark.ui.enabled", "false")
               .config("spark.pyspark.python", sys.executable))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def prepare(spark: Any, recipe: str | Path, sources: Sources, out: str | Path, layout: str = "inline",
            since: float | None = None) -> dict[str, Any]:
    """The library entry point for a job that holds a SparkSession (`spark-submit`): write `out` as `din-export
    prepare` does (train, valid and test as folders of Parquet parts, spec.toml, prepare.json, items.parquet) and
    return the summary."""
    return run(spark, Path(recipe), sources, Path(out), layout, since)


def check_supported(recipe: Path, sources: Sources, layout: str, since: object) -> tuple[Spec, LogConfig]:
    """What the Spark engine does not do yet, refused in one line before a session starts: the recipe parsed and
    checked as the DuckDB engine checks it."""
    if layout != "inline":
        raise ValueError("--engine spark writes the inline layout; for --layout reference use --engine duckdb (not supported yet)")
    if since is not None:
        raise ValueError("--engine spark: --since is not supported yet; use --engine duckdb")
    spec, config = _read_recipe(recipe)
    check_sources(spec, config, sources)
    if config.sampling.strategy != "uniform":
        raise ValueError("--engine spark: [sampling] strategy 'popularity' is not supported yet; use --engine duckdb")
    return spec, config


def run(spark: Any, recipe: Path, sources: Sources, out: Path, layout: str, since: float | None) -> dict[str, Any]:
    started = clock.perf_counter()
    spec, config = check_supported(recipe, sources, layout, since)
    job = SparkPrepare(spark, spec, config, sources, since)
    from pyspark.sql import Window

    F = job.F
    log = job.read_log()
    events = job.check_log(log)
    user, item = config.user, config.item
    by_user = _window(user).orderBy("_t", ROW)

    # labels and the window of samples
    if config.label is None:
        log = log.withColumn("_label", F.lit(1).cast("byte"))
    elif config.label_min is not None:
        log = log.withColumn("_label", (F.col(config.label).cast("double") >= config.label_min).cast("byte"))
    else:
        value = F.col(config.label).cast("double")
        bad = log.filter(~value.isin(0.0, 1.0) | value.isNull()).orderBy(user, "_t", ROW).select(value.alias("v")).limit(1).collect()
        if bad:
            raise TableError(f"log column '{config.label}': labels must be 0 or 1 (or set [log] label_min), found {bad[0]['v']!r}")
        log = log.withColumn("_label", value.cast("byte"))
    log = log.withColumn("_window", F.lit(True) if since is None else F.col("_t") >= float(since))

    # splits (behaviour.assign_splits)
    split = config.split
    if split.mode == "global_time":
        cuts = {}
        windowed = log.filter("_window").select("_t")
        count = windowed.count()
        if count == 0:
            raise ValueError(f"no event of the log is at or after --since {since:g}")
        ordered = indexed(windowed, ["_t"], "_i")
        for name, q, given in (("test", 1 - split.test, split.test_from), ("valid", 1 - split.test - split.valid, split.valid_from)):
            if given is not None:
                cuts[name] = given
                continue
            position = (count - 1) * q
            below = math.floor(position)
            pair = [r["_t"] for r in ordered.filter(F.col("_i").isin(below, min(below + 1, count - 1))).orderBy("_i").collect()]
            cuts[name] = numpy_quantile((pair[0], pair[-1]), count, q)
        code = F.when(F.col("_t") >= cuts["test"], 2).when(F.col("_t") >= cuts["valid"], 1).otherwise(0)
        log = log.withColumn("_split", F.when(F.col("_window"), code).otherwise(-1).cast("byte"))
    else:
        windowed_user = _window(user, "_window").orderBy("_t", ROW)
        size = F.count(F.lit(1)).over(_window(user, "_window"))
        from_end = size - F.row_number().over(windowed_user)

        def amount(value: float) -> Any:
            return F.lit(value) if isinstance(value, int) else F.floor(F.lit(value) * size)

        code = F.when(from_end < amount(split.test), 2).when(from_end < amount(split.test) + amount(split.valid), 1).otherwise(0)
        log = log.withColumn("_split", F.when(F.col("_window"), code).otherwise(-1).cast("byte"))

    # event features and the `previous` fill (behaviour.forward_fill: a user's leading gaps stay missing)
    for feature in event_features(spec, config):
        column = job.shaped(log, feature)
        if feature.kind == "numeric" and feature.fill == PREVIOUS_FILL:
            column = F.last(column, ignorenulls=True).over(by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow))
        log = log.withColumn(f"_v_{feature.name}", column)

    # attribute tables, joined by key (the log's key type)
    tables = {}
    for source, path, key, log_key in (("items", sources.items, config.item_key, item), ("users", sources.users, config.user_key, user)):
        frame = job.table(path, key, source)
        if frame is None:
            continue
        duplicate = frame.groupBy(key).count().filter("count > 1").limit(1).collect()
        if duplicate:
            raise TableError(f"{path}: key '{duplicate[0][key]}' appears {duplicate[0]['count']} times in column '{key}'")
        key_type = log.schema[log_key].dataType
        shaped = [F.col(key).cast(key_type).alias("_key")]
        shaped += [job.shaped(frame, f).alias(f"_a_{f.name}") for f in spec.features
                   if f.kind != "sequence" and f.source == source]
        tables[source] = frame.select(*shaped)

    def with_values(frame: Any, item_column: str, names: list[str], prefix: str) -> Any:
        """Columns `prefix + name` with each named feature's value for the frame's events and item."""
        for feature in (f for f in spec.features if f.name in names):
            side = job.side(feature)
            if side == "item" and feature.source == "log":
                frame = frame.withColumn(prefix + feature.name, F.col(item_column))
            elif side == "user" and feature.source == "log":
                frame = frame.withColumn(prefix + feature.name, F.col(user))
            elif side in ("item", "user"):
                table = tables["items" if side == "item" else "users"].select("_key", F.col(f"_a_{feature.name}").alias(prefix + feature.name))
                frame = frame.join(table, frame[item_column if side == "item" else user] == table["_key"], "left").drop("_key")
            else:
                frame = frame.withColumn(prefix + feature.name, F.col(f"_v_{feature.name}"))
        return frame

    # behaviours and each event's history (behaviour.history_bounds: strictly earlier in time)
    sequences = spec.of_kind("sequence")
    shared = sorted({s.shares for s in sequences})
    behaviours = log.filter(F.col("_label") == 1).withColumn("_b", F.row_number().over(by_user) - 1)
    behaviours = with_values(behaviours, item, shared, "_h_").select(user, "_b", *[f"_h_{n}" for n in shared])
    up_to = F.sum((F.col("_label") == 1).cast("long")).over(_window(user).orderBy("_t").rangeBetween(Window.unboundedPreceding, Window.currentRow))
    same_time = F.sum((F.col("_label") == 1).cast("long")).over(_window(user, "_t"))
    log = log.withColumn("_end", up_to - same_time)

    # samples: the window's events (a labelled log's non-clicks of the training split downsampled)
    samples = log.filter("_window")
    dropped = 0
    if config.label is not None and config.sampling.keep_negatives < 1:
        users = indexed(log.select(user).distinct(), [user], "_user_code")
        within = F.row_number().over(by_user) - 1
        coded = log.withColumn("_within", within).join(users, user)
        key = F.shiftleft(F.col("_user_code"), 32).bitwiseOR(F.col("_within"))
        coded = coded.withColumn("_u", _uniform_udf(config.sampling.seed, DOWNSAMPLE_ROUND)(key))
        drop = (F.col("_label") == 0) & (F.col("_split") == 0) & (F.col("_u") >= config.sampling.keep_negatives)
        samples = coded.filter(F.col("_window") & ~drop).drop("_within", "_user_code", "_u")
        dropped = coded.filter(F.col("_window") & drop).count()
    samples = samples.withColumn("_item", F.col(item)).withColumn("_owner", F.col(ROW))
    negatives = 0
    if config.label is None:
        samples, negatives = _with_negatives(job, log, samples, tables)
    else:
        samples = samples.withColumn("_negative", F.lit(0))

    max_len = max(s.max_len for s in sequences)
    wanted = samples.select("_owner", user, "_end").distinct().filter(F.col("_end") > 0)
    wanted = wanted.withColumn("_b", F.explode(F.sequence(F.greatest(F.col("_end") - max_len, F.lit(0)), F.col("_end") - 1)))
    histories = wanted.join(behaviours, [user, "_b"]).groupBy("_owner").agg(
        F.array_sort(F.collect_list(F.struct("_b", *[f"_h_{n}" for n in shared]))).alias("_hist"))
    samples = samples.join(histories, "_owner", "left")
    non_sequences = [f.name for f in spec.features if f.kind != "sequence"]
    samples = with_values(samples, "_item", non_sequences, "_s_")
    columns = []
    for feature in spec.features:
        if feature.kind != "sequence":
            columns.append(F.col(f"_s_{feature.name}").alias(feature.name))
            continue
        element = behaviours.schema[f"_h_{feature.shares}"].dataType.simpleString()
        values = F.coalesce(F.transform(F.col("_hist"), _field(f"_h_{feature.shares}")),
                            F.array().cast(f"array<{element}>"))  # an empty history is [], as DuckDB's engine writes it
        kept = F.when(F.size(values) > feature.max_len, F.slice(values, -feature.max_len, feature.max_len)).otherwise(values)
        columns.append(kept.alias(feature.name))
    columns += [F.col("_label").alias(spec.label), F.col("_t").alias(TIME_COLUMN)]
    result = samples.select("_split", F.col(user).alias("_sort_user"), "_t", "_owner", "_negative", *columns)
    counts = {"users": log.select(user).distinct().count(), "items": log.select(item).distinct().count(),
              "positives": samples.filter((F.col("_label") == 1) & (F.col("_negative") == 0)).count()}
    return _write(spark, job, result, out, events, negatives, dropped, recipe, started, counts)


def _field(name: str) -> Any:
    """A one-argument function picking a struct's field, for F.transform (which counts its function's arguments)."""
    return lambda entry: entry[name]


def _with_negatives(job: SparkPrepare, log: Any, samples: Any, tables: dict) -> tuple[Any, int]:
    """behaviour.sample_negatives: `negatives` items per sampled positive that its user never touches anywhere in
    the log; negative j of the i-th positive (in user, time, log-row order) has key i * negatives + j."""
    from pyspark.sql import Window

    F, config = job.F, job.config
    user, item = config.user, config.item
    draws = config.sampling.negatives
    items_of_log = log.select(F.col(item).alias("_key"))
    if "items" in tables:
        items_of_log = items_of_log.union(tables["items"].select("_key"))
    codes = indexed(items_of_log.distinct(), ["_key"], "_code")
    num_items = codes.count()
    per_user = samples.groupBy(user).count()
    user_base = indexed(per_user, [user], "_ui")
    bases = user_base.withColumn("_base", F.sum("count").over(Window.orderBy("_ui").rowsBetween(Window.unboundedPreceding, -1)))
    # the window above is global: per_user holds one row per user, a table the size of the user universe, and its
    # running sum is the one step that runs on a single partition (users, not events)
    bases = bases.select(user, F.coalesce(F.col("_base"), F.lit(0)).alias("_base"))
    ordinal = samples.join(bases, user).withColumn(
        ORDINAL, F.col("_base") + F.row_number().over(_window(user).orderBy("_t", ROW)) - 1)
    owners = ordinal.select("_owner", user, ORDINAL).withColumn("_j", F.explode(F.sequence(F.lit(0), F.lit(draws - 1))))
    owners = owners.withColumn("_k", F.col(ORDINAL) * draws + F.col("_j"))
    touched = log.select(user, item).distinct().join(codes.withColumnRenamed("_key", item), item).select(user, F.col("_code").alias("_drawn"))
    owners = owners.withColumn("_drawn", _item_udf(num_items, draws, config.sampling.seed, 0)(F.col("_k"))).cache()
    settled = None
    for round_ in range(1, MAX_DRAW_ROUNDS + 1):
        clashing = owners.join(touched, [user, "_drawn"], "left_semi")
        fine = owners.join(touched, [user, "_drawn"], "left_anti")
        settled = fine if settled is None else settled.union(fine)
        if clashing.limit(1).count() == 0:
            break
        owners = clashing.withColumn("_drawn", _item_udf(num_items, draws, config.sampling.seed, round_)(F.col("_k"))).cache()
    else:
        raise ValueError("cannot draw negatives for user(s) who touched (almost) every item")
    drawn = settled.join(codes.select(F.col("_code").alias("_drawn"), F.col("_key").alias("_item_drawn")), "_drawn")
    base = samples.drop("_item")
    negative_rows = drawn.select("_owner", F.col("_item_drawn").alias("_item"), "_j").join(base, "_owner")
    negative_rows = negative_rows.withColumn("_label", F.lit(0).cast("byte")).withColumn("_negative", F.col("_j") + 1).drop("_j")
    positive_rows = samples.withColumn("_negative", F.lit(0))
    combined = positive_rows.unionByName(negative_rows.select(*positive_rows.columns))
    return combined, int(settled.count())


def _write(spark: Any, job: SparkPrepare, result: Any, out: Path, events: int, negatives: int, dropped: int, recipe: Path,
           started: float, counts: dict[str, int]) -> dict[str, Any]:
    from ..files import staged_bundle, write_json

    F, spec, config = job.F, job.spec, job.config
    result = result.cache()
    rows = {}
    with staged_bundle(out) as staging:
        for code, name in SPLIT_NAMES.items():
            part = result.filter(F.col("_split") == code).orderBy("_sort_user", "_t", "_owner", "_negative")
            part = part.select(*[*spec.names, spec.label, TIME_COLUMN])
            part.write.parquet(str(staging / f"{name}.parquet"))
            rows[name] = spark.read.parquet(str(staging / f"{name}.parquet")).count()
        empty = [name for name, count in rows.items() if count == 0]
        if empty:
            raise ValueError(f"the split leaves {empty} without samples; adjust [split] (valid/test) for this log")
        (staging / SPEC_FILE).write_text(spec_to_toml(_training_spec(spec, config)), encoding="utf-8")
        summary = {"engine": "spark", "events": events, **counts, "negatives_drawn": negatives, "keep_negatives": config.sampling.keep_negatives,
                   "negatives_dropped": dropped, "rows": rows, "layout": "inline",
                   "seconds": round(clock.perf_counter() - started, 3), "recipe": str(recipe)}
        write_json(staging / SUMMARY_FILE, summary)
    return summary
