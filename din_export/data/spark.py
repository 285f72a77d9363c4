"""`prepare --engine spark`: the recipe as Spark DataFrame operations, for logs past one machine. Its output is the
DuckDB engine's, row for row (tested on MovieLens-100k and generated logs, compared as sorted rows).

How the two engines are kept from drifting: the recipe (spec.py, recipe.py) is parsed and checked by the same code;
the draws (negatives, downsampling) run the same numpy functions of behaviour.py inside Arrow UDFs, so the 64-bit
SplitMix64 arithmetic is one implementation; the per-user rules (splits, which behaviours a history holds, forward
fills) are restated as window expressions beside the numpy function each mirrors, and the equality tests run both
engines on logs made to hit every rule (ties, gaps, labels, attributes, histories past max_len).

Nothing proportional to the log, its users or its items is collected to the driver: codes, global ordinals and
the popularity draw's cumulative weights are prefix sums computed per partition (the driver sees one total per
partition: running_sum), joins replace every lookup (the popularity draw is a bucketed range join), and the driver
reads only counts, one row per log file, two time order statistics and the first bad row of a failed check
(tests/test_spark.py counts the rows reaching the driver for a log and one four times its size).
"""

from __future__ import annotations

import math
import time as clock
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..config import LAYOUTS
from ..errors import TableError
from .behaviour import DOWNSAMPLE_ROUND, MAX_DRAW_ROUNDS, NegativeDraw, hashed_uniform, numpy_quantile
from .layout import SEQUENCE_STORE
from .prepare import (
    ITEMS_FILE,
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
from .reserved import HISTORY_END, HISTORY_FIRST
from .scan import time_number
from .sources import checked_files
from .spec import FeatureSpec, Spec, spec_to_toml

ROW, ORDINAL = "_din_row", "_din_ordinal"
BUCKET_BITS = 4  # the popularity draw's range join: buckets of 16 weight units, so a draw meets at most 16 items
LOCAL_PARTITIONS_PER_CORE = 4  # a local session's shuffle partitions per core (Spark's 200 are sized for clusters)
ROUNDS_AT_ONCE = 8  # negatives' draw rounds tried in one pass (a key clashes in all 8 with chance p**8)


def _functions() -> Any:
    from pyspark.sql import functions

    return functions


def _window(*partition: str) -> Any:
    from pyspark.sql import Window

    return Window.partitionBy(*partition)


def running_sum(frame: Any, order: list[str], value: Any, name: str) -> tuple[Any, int]:
    """(`frame` sorted by `order` with column `name`, the sum of `value` over every row before it; the total).
    A prefix sum in two passes over the sorted partitions (which hold consecutive ranges of `order`): each
    partition's total reaches the driver, one number per partition, and each row adds its partition's offset to
    the running sum within its partition. `order` must be unique per row where the sums are read per row."""
    from pyspark import StorageLevel
    from pyspark.sql import Window

    F = _functions()
    ordered = frame.orderBy(*order).withColumn("_p", F.spark_partition_id()).withColumn("_w", value.cast("long"))
    ordered = ordered.persist(StorageLevel.MEMORY_AND_DISK)  # both passes see the same partitions
    totals = sorted((row["_p"], int(row["_s"])) for row in ordered.groupBy("_p").agg(F.sum("_w").alias("_s")).collect())
    offsets, total = [], 0
    for partition, partition_total in totals:
        offsets.append((partition, total))
        total += partition_total
    offset_frame = frame.sparkSession.createDataFrame(offsets, "_p int, _o long")
    before = F.sum("_w").over(Window.partitionBy("_p").orderBy(*order).rowsBetween(Window.unboundedPreceding, -1))
    summed = ordered.join(F.broadcast(offset_frame), "_p").withColumn(name, F.col("_o") + F.coalesce(before, F.lit(0)))
    return summed.drop("_p", "_w", "_o"), total


def indexed(frame: Any, order: list[str], name: str) -> Any:
    """`frame` with a 0-based global index in `order` (a running count)."""
    return running_sum(frame, order, _functions().lit(1), name)[0]


def _by_round(keys: Any, rounds: Any, draw: Any) -> Any:
    """draw(keys, round) of numpy keys for each round present, as a pandas Series (one UDF call covers many rounds)."""
    import pandas as pd

    keys, rounds = keys.to_numpy().astype(np.int64), rounds.to_numpy()
    out = None
    for round_ in np.unique(rounds):
        chosen = rounds == round_
        values = draw(keys[chosen], int(round_))
        out = np.empty(len(keys), dtype=values.dtype) if out is None else out
        out[chosen] = values
    return pd.Series(out if out is not None else np.empty(0, dtype=np.float64))


def _uniform_udf(seed: int) -> Any:
    """behaviour.hashed_uniform of (key, round) columns."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("double")
    def draw(keys, rounds):  # noqa: ANN001, ANN202 - a pandas UDF's signature
        return _by_round(keys, rounds, lambda k, r: hashed_uniform(k.astype(np.uint64), seed, r))
    return draw


def _item_udf(num_items: int, negatives: int, seed: int) -> Any:
    """behaviour.NegativeDraw.items (uniform) of (key, round) columns."""
    from pyspark.sql.functions import pandas_udf

    draw_of = NegativeDraw(num_items, negatives, seed)

    @pandas_udf("long")
    def draw(keys, rounds):  # noqa: ANN001, ANN202
        return _by_round(keys, rounds, draw_of.items)
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
        self.spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")  # nanosecond timestamps as integers
        frame = self.spark.read.parquet(*[str(f) for f in files])
        frame = frame.select(*columns, F.col("_metadata.row_index").alias("_r"), F.col("_metadata.file_path").alias("_f"))
        counts = sorted(frame.groupBy("_f").count().collect(), key=lambda r: r["_f"])  # one row per file
        offsets, total = [], 0
        for row in counts:
            offsets.append((row["_f"], total))
            total += row["count"]
        offset_frame = self.spark.createDataFrame(offsets, "_f string, _o long")
        frame = frame.join(F.broadcast(offset_frame), "_f").withColumn(ROW, F.col("_r") + F.col("_o")).drop("_f", "_r", "_o")
        return frame.withColumn("_t", self.time_number_column(frame))

    @cached_property
    def time_kind(self) -> Any:
        """The time column's Arrow type, from the first file's footer (the driver reads no data); read once."""
        import pyarrow.dataset as pads

        files, _ = checked_files(self.sources.log, log_columns(self.spec, self.config))
        return pads.dataset([str(files[0])], format="parquet").schema.field(self.config.time).type

    def time_number_column(self, frame: Any) -> Any:
        """The time as the number both engines order by: a timestamp as an integer in its own unit (scan._time_number)."""
        import pyarrow as pa

        F, kind = self.F, self.time_kind
        column = F.col(self.config.time)
        if not pa.types.is_timestamp(kind) or kind.unit == "ns":  # nanoseconds arrive as the integers they are
            return column.cast("double")
        micros = F.expr(f"timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', `{self.config.time}`)")
        if frame.schema[self.config.time].dataType.typeName() == "timestamp":  # with a time zone: UTC instants
            micros = F.unix_micros(column)
        per_unit = {"s": 1_000_000, "ms": 1_000, "us": 1}[kind.unit]
        return (micros / F.lit(per_unit)).cast("double")

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


def _local_cores(master: str) -> int:
    """The worker threads of a local master: local, local[N], local[*] (all cores), local[N,F]."""
    import os

    inside = master[len("local["):-1].split(",")[0] if master.startswith("local[") else "1"
    return (os.cpu_count() or 1) if inside == "*" else int(inside)


def session(master: str = "local[*]", conf: dict[str, str] | None = None) -> Any:
    """A SparkSession for `prepare --engine spark` (a job submitted with spark-submit brings its own)."""
    import os
    import sys

    from pyspark.sql import SparkSession

    builder = (SparkSession.builder.master(master).appName("din-export prepare").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    conf = dict(conf or {})
    if master.startswith("local"):
        # executors run din-export's numpy code (the draws): locally, in this very interpreter; a cluster's
        # executors use the Python their own settings name (PYSPARK_PYTHON or spark.pyspark.python: see the guide)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        conf.setdefault("spark.pyspark.python", sys.executable)
        conf.setdefault("spark.sql.shuffle.partitions", str(LOCAL_PARTITIONS_PER_CORE * _local_cores(master)))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def prepare(spark: Any, recipe: str | Path, sources: Sources, out: str | Path, layout: str = "inline",
            since: float | str | None = None) -> dict[str, Any]:
    """The library entry point for a job that holds a SparkSession (`spark-submit`): write `out` as `din-export
    prepare` does (train, valid and test as folders of Parquet parts, spec.toml, prepare.json, items.parquet, and
    sequences.parquet in the reference layout) and return the summary."""
    return run(spark, Path(recipe), sources, Path(out), layout, since)


def check_supported(recipe: Path, sources: Sources, layout: str) -> tuple[Spec, LogConfig]:
    """The recipe parsed and checked as the DuckDB engine checks it, before a session starts; what the Spark engine
    cannot read is refused in one line."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    spec, config = _read_recipe(recipe)
    check_sources(spec, config, sources)
    return spec, config


def run(spark: Any, recipe: Path, sources: Sources, out: Path, layout: str, since: float | str | None) -> dict[str, Any]:
    started = clock.perf_counter()
    spec, config = check_supported(recipe, sources, layout)
    job = SparkPrepare(spark, spec, config, sources, None)
    if since is not None:
        job.since = time_number(since, job.time_kind, config.time)
    since = job.since
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
    log = log.withColumn("_split", _split_codes(job, log))

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
    items_of_log = log.select(F.col(item).alias("_key"))
    if "items" in tables:
        items_of_log = items_of_log.union(tables["items"].select("_key"))
    item_universe = items_of_log.distinct()

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
        coded = coded.withColumn("_u", _uniform_udf(config.sampling.seed)(key, F.lit(DOWNSAMPLE_ROUND)))
        drop = (F.col("_label") == 0) & (F.col("_split") == 0) & (F.col("_u") >= config.sampling.keep_negatives)
        samples = coded.filter(F.col("_window") & ~drop).drop("_within", "_user_code", "_u")
        dropped = coded.filter(F.col("_window") & drop).count()
    samples = samples.withColumn("_item", F.col(item)).withColumn("_owner", F.col(ROW))
    if config.label is None:
        samples = _with_negatives(job, log, samples, item_universe)
    else:
        samples = samples.withColumn("_negative", F.lit(0))

    store = None
    if layout == "reference":  # layout.py: each user's behaviours once, in time order; samples point into them
        per_user = log.groupBy(user).agg(F.sum((F.col("_label") == 1).cast("long")).alias("_n"))
        bases = running_sum(per_user, [user], F.col("_n"), "_base")[0].select(user, "_base")
        store = behaviours.orderBy(user, "_b").select(*[F.col(f"_h_{s.shares}").alias(s.name) for s in sequences])
        samples = samples.join(bases, user).withColumn(HISTORY_FIRST, F.col("_base")).withColumn(HISTORY_END, F.col("_base") + F.col("_end"))
    else:
        # behaviour b's list of the most recent max_len behaviours up to b (a sliding frame of fixed size, so each
        # list costs max_len, whatever the user's history); a sample whose history ends before behaviour e takes
        # behaviour e - 1's list, by one equi-join
        max_len = max(s.max_len for s in sequences)
        recent = _window(user).orderBy("_b").rowsBetween(-(max_len - 1), Window.currentRow)
        lists = behaviours.select(user, F.col("_b").alias("_last"),
                                  F.array_sort(F.collect_list(F.struct("_b", *[f"_h_{n}" for n in shared])).over(recent)).alias("_hist"))
        samples = samples.withColumn("_last", F.col("_end") - 1).join(lists, [user, "_last"], "left")
    non_sequences = [f.name for f in spec.features if f.kind != "sequence"]
    samples = with_values(samples, "_item", non_sequences, "_s_")
    columns = []
    for feature in spec.features:
        if feature.kind != "sequence":
            columns.append(F.col(f"_s_{feature.name}").alias(feature.name))
        elif store is None:
            element = behaviours.schema[f"_h_{feature.shares}"].dataType.simpleString()
            values = F.coalesce(F.transform(F.col("_hist"), _field(f"_h_{feature.shares}")),
                                F.array().cast(f"array<{element}>"))  # an empty history is [], as DuckDB's engine writes it
            kept = F.when(F.size(values) > feature.max_len, F.slice(values, -feature.max_len, feature.max_len)).otherwise(values)
            columns.append(kept.alias(feature.name))
    if store is not None:
        columns += [F.col(HISTORY_FIRST), F.col(HISTORY_END)]
    columns += [F.col("_label").alias(spec.label), F.col("_t").alias(TIME_COLUMN)]
    result = samples.select("_split", F.col(user).alias("_sort_user"), "_t", "_owner", "_negative", *columns)
    outputs = {SEQUENCE_STORE: store, ITEMS_FILE: _item_table(job, item_universe, tables)}
    summary = {"engine": "spark", "events": events, "users": log.select(user).distinct().count(), "items": item_universe.count(), "since": since,
               "keep_negatives": config.sampling.keep_negatives, "negatives_dropped": dropped, "layout": layout,
               "recipe": str(recipe)}
    return _write(job, result, outputs, out, summary, started)


def _split_codes(job: SparkPrepare, log: Any) -> Any:
    """behaviour.assign_splits as a column: 0 train, 1 valid, 2 test, -1 outside the window of samples."""
    F, split, since = job.F, job.config.split, job.since
    if split.mode == "global_time":
        cuts = {}
        windowed = log.filter("_window").select("_t")
        count = windowed.count()
        if count == 0:
            raise ValueError(f"no event of the log is at or after --since {since:g}")
        ordered = None
        for name, q, given in (("test", 1 - split.test, split.test_from), ("valid", 1 - split.test - split.valid, split.valid_from)):
            if given is not None:
                cuts[name] = given
                continue
            ordered = ordered if ordered is not None else indexed(windowed, ["_t"], "_i")
            below = math.floor((count - 1) * q)  # numpy's two order statistics, read by index
            pair = [r["_t"] for r in ordered.filter(F.col("_i").isin(below, min(below + 1, count - 1))).orderBy("_i").collect()]
            cuts[name] = numpy_quantile((pair[0], pair[-1]), count, q)
        code = F.when(F.col("_t") >= cuts["test"], 2).when(F.col("_t") >= cuts["valid"], 1).otherwise(0)
    else:
        user = job.config.user
        size = F.count(F.lit(1)).over(_window(user, "_window"))
        from_end = size - F.row_number().over(_window(user, "_window").orderBy("_t", ROW))

        def amount(value: float) -> Any:
            return F.lit(value) if isinstance(value, int) else F.floor(F.lit(value) * size)

        code = F.when(from_end < amount(split.test), 2).when(from_end < amount(split.test) + amount(split.valid), 1).otherwise(0)
    return F.when(F.col("_window"), code).otherwise(-1).cast("byte")


def _item_table(job: SparkPrepare, item_universe: Any, tables: dict) -> Any:
    """prepare.LogContext.item_table: every item of the log and the item table with its candidate-side features,
    in key order; None without an item feature."""
    F = job.F
    features = [f for f in job.spec.features if f.kind != "sequence" and job.side(f) == "item"]
    if not any(f.source == "log" for f in features):
        return None
    frame = item_universe
    if "items" in tables:
        frame = frame.join(tables["items"], "_key", "left")
    return frame.orderBy("_key").select(*[F.col("_key" if f.source == "log" else f"_a_{f.name}").alias(f.name) for f in features])


def _field(name: str) -> Any:
    """A one-argument function picking a struct's field, for F.transform (which counts its function's arguments)."""
    return lambda entry: entry[name]


class _Draw:
    """behaviour.NegativeDraw on Spark: uniform items by NegativeDraw's own numpy code in an Arrow UDF; items by
    popularity (weight: events + 1) by the same hashed uniform in [0, 1) times the total weight, found in the items'
    cumulative weights by a range join over buckets of 2**BUCKET_BITS weight units (numpy's searchsorted over
    integer-valued cumulative sums, computed without the driver)."""

    def __init__(self, job: SparkPrepare, log: Any, codes: Any, num_items: int) -> None:
        F, sampling = job.F, job.config.sampling
        self.F, self.sampling, self.num_items = F, sampling, num_items
        self.spans = None
        if sampling.strategy == "popularity":
            events_of = log.groupBy(F.col(job.config.item).alias("_key")).agg(F.count(F.lit(1)).alias("_events"))
            weights = codes.join(events_of, "_key", "left").select("_code", (F.coalesce("_events", F.lit(0)) + 1).alias("_weight"))
            starts, self.total = running_sum(weights, ["_code"], F.col("_weight"), "_start")
            spans = starts.withColumn("_stop", F.col("_start") + F.col("_weight"))
            buckets = F.sequence(F.shiftright("_start", BUCKET_BITS), F.shiftright(F.col("_stop") - 1, BUCKET_BITS))
            self.spans = spans.select("_code", "_start", "_stop", F.explode(buckets).alias("_bucket"))

    def drawn(self, frame: Any) -> Any:
        """`frame` with `_drawn`, the item code drawn for its key `_k` in its round `_r`."""
        F, sampling = self.F, self.sampling
        if self.spans is None:
            return frame.withColumn("_drawn", _item_udf(self.num_items, sampling.negatives, sampling.seed)(F.col("_k"), F.col("_r")))
        uniform = _uniform_udf(sampling.seed)(F.col("_k"), F.col("_r"))
        point = F.least(F.floor(uniform * F.lit(float(self.total))).cast("long"), F.lit(self.total - 1))
        frame = frame.withColumn("_point", point).withColumn("_bucket", F.shiftright("_point", BUCKET_BITS))
        found = frame.join(self.spans, "_bucket").filter((F.col("_start") <= F.col("_point")) & (F.col("_point") < F.col("_stop")))
        return found.withColumnRenamed("_code", "_drawn").drop("_bucket", "_point", "_start", "_stop")


def _with_negatives(job: SparkPrepare, log: Any, samples: Any, item_universe: Any) -> Any:
    """behaviour.sample_negatives: `negatives` items per sampled positive that its user never touches anywhere in
    the log; negative j of the i-th positive (in user, time, log-row order) has key i * negatives + j, redrawn in
    rounds 1, 2, ... while it names an item its user touched. After round 0, ROUNDS_AT_ONCE rounds are drawn and
    anti-joined in one pass and each key keeps its first clean round: the rounds numpy's loop would reach, in a
    pass or two."""
    F, config = job.F, job.config
    user, item = config.user, config.item
    draws = config.sampling.negatives
    codes = indexed(item_universe, ["_key"], "_code")
    num_items = codes.count()
    draw = _Draw(job, log, codes, num_items)
    per_user = samples.groupBy(user).count()
    bases = running_sum(per_user, [user], F.col("count"), "_base")[0].select(user, "_base")
    ordinal = samples.join(bases, user).withColumn(
        ORDINAL, F.col("_base") + F.row_number().over(_window(user).orderBy("_t", ROW)) - 1)
    owners = ordinal.select("_owner", user, ORDINAL).withColumn("_j", F.explode(F.sequence(F.lit(0), F.lit(draws - 1))))
    owners = owners.withColumn("_k", F.col(ORDINAL) * draws + F.col("_j")).drop(ORDINAL)
    touched = log.select(user, item).distinct().join(codes.withColumnRenamed("_key", item), item).select(user, F.col("_code").alias("_drawn"))
    settled, pending = None, owners
    # round 0 for every key, then ROUNDS_AT_ONCE rounds at a time for the few that clashed (numpy's loop checks the
    # draws of rounds 0..199)
    passes = [(0, 1)] + [(first, min(first + ROUNDS_AT_ONCE, MAX_DRAW_ROUNDS)) for first in range(1, MAX_DRAW_ROUNDS, ROUNDS_AT_ONCE)]
    for first_round, end_round in passes:
        rounds = F.sequence(F.lit(first_round), F.lit(end_round - 1))
        candidates = draw.drawn(pending.withColumn("_r", F.explode(rounds)))
        clean = candidates.join(touched, [user, "_drawn"], "left_anti")
        chosen = clean.groupBy("_k").agg(F.min_by("_drawn", "_r").alias("_drawn"))
        found = pending.join(chosen, "_k").cache()
        settled = found if settled is None else settled.unionByName(found)
        pending = pending.join(found.select("_k"), "_k", "left_anti").cache()
        if pending.limit(1).count() == 0:
            break
    else:
        raise ValueError("cannot draw negatives for user(s) who touched (almost) every item")
    drawn = settled.join(codes.select(F.col("_code").alias("_drawn"), F.col("_key").alias("_item_drawn")), "_drawn")
    base = samples.drop("_item")
    negative_rows = drawn.select("_owner", F.col("_item_drawn").alias("_item"), "_j").join(base, "_owner")
    negative_rows = negative_rows.withColumn("_label", F.lit(0).cast("byte")).withColumn("_negative", F.col("_j") + 1).drop("_j")
    positive_rows = samples.withColumn("_negative", F.lit(0))
    return positive_rows.unionByName(negative_rows.select(*positive_rows.columns))


def _write(job: SparkPrepare, result: Any, outputs: dict[str, Any], out: Path, summary: dict[str, Any],
           started: float) -> dict[str, Any]:
    """The split tables (sorted as the DuckDB engine writes them), the other outputs, spec.toml and prepare.json,
    staged beside `out` and moved into place whole."""
    from ..files import staged_bundle, write_json

    F, spec, config = job.F, job.spec, job.config
    result = result.filter(F.col("_split") >= 0).cache()
    found = result.groupBy("_split").agg(F.count(F.lit(1)).alias("rows"), F.sum((F.col("_negative") > 0).cast("long")).alias("negatives"),
                                         F.sum(((F.col("_negative") == 0) & (F.col(spec.label) == 1)).cast("long")).alias("positives")).collect()
    by_split = {row["_split"]: row for row in found}  # at most three rows
    rows = {name: int(by_split[code]["rows"]) if code in by_split else 0 for code, name in SPLIT_NAMES.items()}
    summary = {**summary, "positives": sum(int(r["positives"]) for r in found), "negatives_drawn": sum(int(r["negatives"]) for r in found)}
    empty = [name for name, count in rows.items() if count == 0]
    if empty:
        raise ValueError(f"the split leaves {empty} without samples; adjust [split] (valid/test) for this log")
    with staged_bundle(out) as staging:
        for code, name in SPLIT_NAMES.items():
            part = result.filter(F.col("_split") == code).orderBy("_sort_user", "_t", "_owner", "_negative")
            part.drop("_split", "_sort_user", "_t", "_owner", "_negative").write.parquet(str(staging / f"{name}.parquet"))
        for file, frame in outputs.items():
            if frame is not None:
                frame.write.parquet(str(staging / file))
        (staging / SPEC_FILE).write_text(spec_to_toml(_training_spec(spec, config)), encoding="utf-8")
        summary = {**summary, "rows": rows, "seconds": round(clock.perf_counter() - started, 3)}
        write_json(staging / SUMMARY_FILE, summary)
    return summary
